"""Completion webhooks: signed (checked with the `standardwebhooks` package),
retried with backoff, persisted in JetStream across a gateway killed with
SIGKILL, refused for private addresses unless allowed; and the webhook
fields themselves (alias, key default, unknown form fields refused)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks import Webhook

from bus import webhook_http
from ops.embedded_nats import NatsServer
from ops.nats_identity import NatsAuth
from schemas.webhooks import new_secret, signature
from tests.harness import TESTDATA, Gateway, Proc, metric, start_node, wait_job, wait_until

pytestmark = pytest.mark.timeout(180)


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that answers from a script (then 200)."""

    answers: list[int] = field(default_factory=list)
    fail_until_told: bool = False
    got: list[Delivery] = field(default_factory=list)

    def start(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if receiver.answers:
                    status = receiver.answers.pop(0)
                else:
                    status = 500 if receiver.fail_until_told else 200
                receiver.got.append(Delivery({k.lower(): v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._srv.serve_forever, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        return self._srv.server_address[1]

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hooks/gpubus"

    def stop(self) -> None:
        self._srv.shutdown()
        self._srv.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def hooks_nats(tmp_path_factory) -> Iterator[NatsServer]:
    """A server of this module's own: its gateway's settings (private
    addresses allowed, fast retries) decide every delivery made on it."""
    server = NatsServer(store_dir=tmp_path_factory.mktemp("hooks") / "nats", auth=NatsAuth.generate()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hooks_gateway(hooks_nats: NatsServer, tmp_path_factory) -> Iterator[Gateway]:
    gw = Gateway.on(
        hooks_nats,
        tmp_path_factory.mktemp("hooks-gw"),
        allow_private_urls=True,
        webhook_backoff=0.3,
        webhook_timeout=3,
    ).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def hooks_node(hooks_gateway: Gateway) -> Iterator[Proc]:
    node = start_node(hooks_gateway, "cpu", shared=True, name="hooks-cpu")
    yield node
    node.stop()


def new_key(gw: Gateway, user: str, **body: Any) -> tuple[str, str]:
    """(API key, webhook secret) of a new key."""
    with gw.admin() as c:
        r = c.post("/api/v1/auth/keys", json={"user_id": user, "roles": ["user"], **body})
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["webhook_secret"].startswith("whsec_")
    return out["api_key"], out["webhook_secret"]


def submit(gw: Gateway, key: str, name: str = "hello.wav", **fields: str) -> str:
    with gw.client(key) as c, (TESTDATA / name).open("rb") as f:
        r = c.post("/api/v1/jobs", files={"file": (name, f)}, data=fields)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def delivery_of(gw: Gateway, key: str, job_id: str) -> dict[str, Any]:
    with gw.client(key) as c:
        job = c.get(f"/api/v1/jobs/{job_id}").json()
    (entry,) = job["webhook"]["deliveries"]
    return entry


def verified(secret: str, d: Delivery) -> dict[str, Any]:
    """The body, once the standardwebhooks package accepts its signature."""
    return Webhook(secret).verify(d.body, d.headers)


def test_signed_delivery_retried_after_two_500s_with_the_same_id(hooks_gateway, hooks_node, user, receiver):
    # Given a receiver that answers 500 twice, then 200
    key, secret = new_key(hooks_gateway, user)
    receiver.answers = [500, 500]
    # When a job with a webhook finishes
    job_id = submit(hooks_gateway, key, webhook_url=receiver.url())
    with hooks_gateway.client(key) as c:
        assert wait_job(c, job_id)["status"] == "succeeded"
    wait_until(lambda: len(receiver.got) >= 3, timeout_s=30, what="three POSTs")
    time.sleep(1.5)  # nothing more comes once one was answered 200
    # Then it was POSTed three times, the same delivery each time, correctly signed
    assert [d.answered for d in receiver.got] == [500, 500, 200]
    assert len({d.headers["webhook-id"] for d in receiver.got}) == 1
    assert len({d.body for d in receiver.got}) == 1  # the same bytes on every retry
    bodies = [verified(secret, d) for d in receiver.got]
    assert bodies[0]["type"] == "job.succeeded" and bodies[0]["timestamp"].endswith("Z")
    data = bodies[0]["data"]
    assert data["job_id"] == job_id and data["status"] == "succeeded" and data["result_url"].endswith("/result")
    assert "webhook" not in data
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 32).verify(receiver.got[0].body, receiver.got[0].headers)
    # And the job record and the metrics say how it went
    entry = delivery_of(hooks_gateway, key, job_id)
    assert entry["id"] == receiver.got[0].headers["webhook-id"]
    assert (entry["state"], entry["attempts"], entry["last_status"]) == ("delivered", 3, 200)
    assert entry["job_status"] == "succeeded" and entry["delivered_at"] >= entry["created_at"]
    assert metric(hooks_gateway.url, "gpubus_webhook_deliveries_total", outcome="delivered") >= 1
    assert metric(hooks_gateway.url, "gpubus_webhook_deliveries_total", outcome="retry") >= 2


def test_callback_url_alias_in_json_and_a_failed_job(hooks_gateway, hooks_node, user, receiver):
    key, secret = new_key(hooks_gateway, user)
    with hooks_gateway.client(key) as c:
        # a URL no server answers: the node fails the job
        r = c.post("/api/v1/jobs", json={"url": "http://127.0.0.1:9/a.wav", "callback_url": receiver.url()})
        assert r.status_code == 202, r.text
        assert wait_job(c, r.json()["job_id"])["status"] == "failed"
    wait_until(lambda: receiver.got, timeout_s=20, what="the webhook")
    body = verified(secret, receiver.got[0])
    assert body["type"] == "job.failed" and body["data"]["error"]["code"]


def test_the_keys_default_webhook_and_a_rotated_secret(hooks_gateway, hooks_node, user, receiver):
    key, first = new_key(hooks_gateway, user, webhook_url=receiver.url())
    with hooks_gateway.client(key) as c:
        listed = c.get("/api/v1/auth/keys").json()["keys"]
        assert listed[0]["webhook_url"] == receiver.url() and "webhook_secret" not in listed[0]
        rotated = c.post(f"/api/v1/auth/keys/{listed[0]['key_id']}/webhook-secret")
        assert rotated.status_code == 200, rotated.text
    secret = rotated.json()["webhook_secret"]
    assert secret.startswith("whsec_") and secret != first
    time.sleep(0.5)  # the gateway's key mirror follows the rotation
    job_id = submit(hooks_gateway, key)  # no webhook field: the key's default
    wait_until(lambda: receiver.got, timeout_s=60, what="the webhook")
    assert verified(secret, receiver.got[0])["data"]["job_id"] == job_id
    with pytest.raises(Exception, match="signature"):
        verified(first, receiver.got[0])


def test_webhook_fields_are_checked_and_unknown_form_fields_refused(hooks_gateway, user, receiver):
    key, _ = new_key(hooks_gateway, user)
    with hooks_gateway.client(key) as c, (TESTDATA / "hello.wav").open("rb") as f:
        audio = f.read()

        def post(**fields: str) -> Any:
            return c.post("/api/v1/jobs", files={"file": ("hello.wav", audio)}, data=fields)

        r = post(callbak_url=receiver.url())  # misspelt: refused, never silently ignored
        assert r.status_code == 422 and "callbak_url" in r.json()["error"]["message"], r.text
        r = post(language="de")  # an option outside `options`
        assert r.status_code == 422 and "options" in r.json()["error"]["message"]
        r = post(webhook_url=receiver.url(), callback_url=receiver.url("localhost"))
        assert r.status_code == 422 and "alias" in r.json()["error"]["message"]
        r = post(webhook_url="ftp://127.0.0.1/x")
        assert r.status_code == 422 and r.json()["error"]["message"].startswith("webhook_url:")
        r = c.post("/api/v1/jobs", json={"url": "http://127.0.0.1:9/a.wav", "webhook": receiver.url()})
        assert r.status_code == 422  # JSON: unknown keys refused as before


def test_killed_gateway_still_delivers_after_restart(hooks_gateway, hooks_node, user, receiver):
    # Given a receiver failing every POST, and a job whose first attempt failed
    key, secret = new_key(hooks_gateway, user)
    receiver.fail_until_told = True
    job_id = submit(hooks_gateway, key, callback_url=receiver.url())
    wait_until(lambda: receiver.got, timeout_s=60, what="the first POST")
    # (recorded: a gateway killed between the POST's answer and its record
    # would make the retry the first attempt the record counts)
    wait_until(
        lambda: (e := delivery_of(hooks_gateway, key, job_id))["attempts"] >= 1 and e["last_status"] == 500,
        timeout_s=10,
        what="the record to count the failed attempt",
    )
    # When the gateway is killed (SIGKILL: no drain) and restarted after the receiver recovers
    hooks_gateway.proc.kill()
    receiver.fail_until_told = False
    time.sleep(1.0)  # retries fall due while no gateway runs
    hooks_gateway.start()
    # Then the same delivery arrives and is recorded as delivered
    wait_until(lambda: any(d.answered == 200 for d in receiver.got), timeout_s=60, what="a delivery answered 200")
    assert len({d.headers["webhook-id"] for d in receiver.got}) == 1
    assert verified(secret, receiver.got[-1])["data"]["job_id"] == job_id
    entry = wait_until(
        lambda: (e := delivery_of(hooks_gateway, key, job_id))["state"] == "delivered" and e,
        timeout_s=10,
        what="the record to say delivered",
    )
    assert entry["attempts"] >= 2 and entry["last_status"] == 200


def test_private_receiver_refused_when_private_urls_are_not_allowed(fresh_nats, tmp_path, user, receiver):
    # Given a gateway that does not allow private addresses (the default)
    gw = Gateway.on(fresh_nats, tmp_path).start()
    try:
        key, _ = new_key(gw, user)
        with gw.admin() as c:  # a literal private address is refused at the door
            r = c.post("/api/v1/auth/keys", json={"user_id": user, "webhook_url": receiver.url()})
            assert r.status_code == 422 and "webhook_url" in r.json()["error"]["message"], r.text
        with gw.client(key) as c, (TESTDATA / "hello.wav").open("rb") as f:
            r = c.post("/api/v1/jobs", files={"file": ("a.wav", f)}, data={"webhook_url": receiver.url()})
            assert r.status_code == 422 and r.json()["error"]["code"] == "URL_REFUSED", r.text
        # When a job whose receiver is a name for a loopback address ends (no node here: it is cancelled)
        job_id = submit(gw, key, webhook_url=receiver.url("localhost"))
        with gw.client(key) as c:
            assert c.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
        # Then nothing is delivered, and the record says why
        entry = wait_until(
            lambda: (e := delivery_of(gw, key, job_id))["state"] != "pending" and e,
            timeout_s=20,
            what="the delivery to be settled",
        )
        assert entry["state"] == "failed" and "loopback" in entry["last_error"], entry
        assert entry["job_status"] == "cancelled" and entry["attempts"] == 1
        assert receiver.got == []
        assert metric(gw.url, "gpubus_webhook_deliveries_total", outcome="refused") == 1
    finally:
        gw.stop()


def test_every_terminal_state_is_delivered_again_after_a_retry(fresh_nats, tmp_path, user, receiver):
    # Given a gateway with no node (its jobs end by cancel), receivers on loopback allowed
    gw = Gateway.on(fresh_nats, tmp_path, allow_private_urls=True, webhook_backoff=0.3).start()
    try:
        key, secret = new_key(gw, user)
        job_id = submit(gw, key, webhook_url=receiver.url())
        # When the job is cancelled, retried, and cancelled again
        with gw.client(key) as c:
            assert c.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
            wait_until(lambda: len(receiver.got) == 1, timeout_s=20, what="the first delivery")
            assert c.post(f"/api/v1/jobs/{job_id}/retry").status_code == 202
            assert c.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
        wait_until(lambda: len(receiver.got) == 2, timeout_s=20, what="the second delivery")
        # Then each terminal state was delivered once, under its own id, with the attempt it ended
        bodies = [verified(secret, d) for d in receiver.got]
        assert [d.headers["webhook-id"] for d in receiver.got] == [f"{job_id}.1", f"{job_id}.2"]
        assert [(b["type"], b["data"]["attempts"]) for b in bodies] == [("job.cancelled", 1), ("job.cancelled", 2)]
        with gw.client(key) as c:
            deliveries = c.get(f"/api/v1/jobs/{job_id}").json()["webhook"]["deliveries"]
        assert [(d["attempt"], d["state"]) for d in deliveries] == [(1, "delivered"), (2, "delivered")]
    finally:
        gw.stop()


def test_webhook_secret_is_shown_once(hooks_gateway, user):
    with hooks_gateway.admin() as c:
        made = c.post("/api/v1/auth/keys", json={"user_id": user}).json()
        listed = c.get("/api/v1/auth/keys").json()["keys"]
    assert made["webhook_secret"].startswith("whsec_")
    assert all("webhook_secret" not in k for k in listed)
    assert made["webhook_secret"] not in json.dumps(listed)


def test_our_signature_is_the_specs():
    secret = new_secret()
    body = '{"type":"job.succeeded"}'
    at = datetime.fromtimestamp(1796567783, tz=UTC)
    assert signature(secret, "j1.1", 1796567783, body.encode()) == Webhook(secret).sign("j1.1", at, body)


async def test_receiver_address_is_checked_and_pinned():
    # a name is resolved and every address checked; the POST goes to the checked address, the name in Host
    t = await webhook_http.resolve("http://user:pw@localhost:8080/hook?x=1", allow_private=True)
    assert t.url in ("http://user:pw@127.0.0.1:8080/hook?x=1", "http://user:pw@[::1]:8080/hook?x=1")
    assert t.host_header == "localhost:8080" and t.sni_hostname is None
    for url in ("http://localhost/hook", "http://127.0.0.1/hook", "http://[::1]/hook", "http://10.0.0.1/"):
        with pytest.raises(webhook_http.WebhookRefused):
            await webhook_http.resolve(url, allow_private=False)
    with pytest.raises(webhook_http.WebhookRefused, match="metadata"):
        await webhook_http.resolve("http://169.254.169.254/latest", allow_private=True)
    with pytest.raises(webhook_http.WebhookRefused):
        await webhook_http.resolve("file:///etc/passwd", allow_private=True)
    t = await webhook_http.resolve("https://127.0.0.1:8443/x", allow_private=True)
    assert t.sni_hostname == "127.0.0.1" and t.url == "https://127.0.0.1:8443/x"
