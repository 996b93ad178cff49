"""Schema-driven fuzzing of every endpoint in the gateway's own OpenAPI
document (schemathesis + hypothesis), upload forms included (their
multipart bodies are documented, gateway/form_docs.py): whatever is thrown
at it, no 5xx and no stack trace, only `{"error": {"code", "message"}}`
bodies, and OpenAI's `{"error": {"message", "type", "param", "code"}}`
under /v1/. A live CPU node fails the fuzzed uploads' jobs (not media) at
once, so the synchronous endpoints answer rather than wait."""

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
def test_no_endpoint_answers_5xx_or_a_traceback(case, gateway, shared_cpu_node, fuzz_key):
    r = case.call(base_url=gateway.url, headers={"Authorization": f"Bearer {fuzz_key}"}, timeout=60)
    assert r.status_code < 500, (case.method, case.formatted_path, r.status_code, r.text[:300])
    assert "Traceback" not in r.text and 'File "/' not in r.text
    if r.status_code >= 400:
        err = r.json()["error"]
        if case.path.startswith("/v1/"):
            assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"], err
        else:
            assert set(err) == {"code", "message"} and err["code"] and err["message"], err
