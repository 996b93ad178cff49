"""Schema-driven fuzzing of every endpoint in the gateway's own OpenAPI
document (schemathesis + hypothesis): whatever is thrown at it, no 5xx and
no stack trace, only `{"error": {"code", "message"}}` bodies."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def api_schema(gateway):
    return schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")


@pytest.fixture(scope="module")
def fuzz_key(gateway) -> str:
    return gateway.create_key("fuzzer", roles=("user", "node"))


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_endpoint_answers_5xx_or_a_traceback(case, gateway, fuzz_key):
    r = case.call(base_url=gateway.url, headers={"Authorization": f"Bearer {fuzz_key}"}, timeout=30)
    assert r.status_code < 500, (case.method, case.formatted_path, r.status_code, r.text[:300])
    assert "Traceback" not in r.text and 'File "/' not in r.text
    if r.status_code >= 400:
        err = r.json()["error"]
        assert set(err) == {"code", "message"} and err["code"] and err["message"]
