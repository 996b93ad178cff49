"""TLS on every hop a remote GPU box uses, and the xkey-sealed auth callout,
against real nats-server 2.15.1 processes on loopback.

`gpubus up --tls` runs once for the module: NATS with TLS handshake-first,
the gateway on HTTPS. Separate `gpubus gpu-node` processes join it the way a
rented GPU box would: gateway URL, key, and the gateway's certificate pinned.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import nats
import nkeys
import pytest
from cryptography import x509

from bus import nats_jwt, xkeys
from bus.auth_callout import AUTH_SUBJECT, AuthCallout
from bus.connection import connect
from bus.keystore import KeyStore
from bus.nats_jwt import new_account_seed
from bus.retry import retrying
from bus.sealing import RecordSeal
from bus.tls import InsecureConnection, UntrustedCertificate, client_context, fingerprint, gateway_context
from ops import tls
from ops.embedded_nats import NatsCluster, NatsServer, free_port
from ops.nats_identity import NatsAuth, NatsTls
from schemas import names
from schemas.keys import Role
from tests.harness import ADMIN_TOKEN, TESTDATA, Gateway, Proc, base_env, submit_file, wait_job, wait_until, words

pytestmark = pytest.mark.timeout(180)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUBUS_")}
    env.update(GPUBUS_LOG_FORMAT="text", PYTHONUNBUFFERED="1", **extra)
    return env


@pytest.fixture(scope="module")
def up_tls(tmp_path_factory) -> Iterator[dict]:
    """`gpubus up --tls` in a fresh data dir; its up.json, plus where it lives."""
    root = tmp_path_factory.mktemp("up-tls")
    env = _env(GPUBUS_DATA_DIR=str(root / "data"))
    up = Proc(["up", "--tls", "--port", str(free_port())], env, root / "up.log").start()
    up_json = root / "data" / "up.json"
    try:
        wait_until(up_json.exists, timeout_s=90, what="up.json", proc=up)
        info = json.loads(up_json.read_text())
        yield {**info, "root": root, "data_dir": root / "data", "proc": up}
    finally:
        up.signal(15)
        assert up.proc.wait(60) == 0, up.log()[-2000:]


def _https(info: dict, token: str) -> httpx.Client:
    verify = client_context(ca_file=Path(info["tls_ca_file"]))
    return httpx.Client(
        base_url=info["gateway_url"], headers={"Authorization": f"Bearer {token}"}, verify=verify, timeout=60
    )


def _node(info: dict, root: Path, *flags: str, name: str = "node") -> Proc:
    args = ["gpu-node", "--device", "cpu", "--gateway", info["gateway_url"], "--api-key", info["api_key"], *flags]
    return Proc(args, _env(GPUBUS_REGISTRY_TTL="3"), root / f"{name}-{free_port()}.log").start()


def _nats_port(info: dict) -> int:
    return urlsplit(info["nats_public_url"]).port


# -- the stack over TLS ------------------------------------------------------


def test_up_tls_gives_https_and_tls_urls_and_the_ca(up_tls):
    # Then scripts get https:// and tls:// URLs, the CA path and the gateway's fingerprint
    assert up_tls["gateway_url"].startswith("https://127.0.0.1:")
    assert up_tls["nats_url"].startswith("tls://") and up_tls["nats_public_url"].startswith("tls://127.0.0.1:")
    ca = Path(up_tls["tls_ca_file"])
    assert ca.is_file() and up_tls["tls_ca_file"] in up_tls["proc"].log()
    cert = (up_tls["data_dir"] / "tls" / tls.SERVER_CERT).read_text()
    assert up_tls["gateway_fingerprint"] == fingerprint(cert)
    # And the private keys were never readable by anyone else
    for key in (tls.CA_KEY, tls.SERVER_KEY):
        assert stat.S_IMODE((up_tls["data_dir"] / "tls" / key).stat().st_mode) == 0o600


def test_node_joins_over_tls_and_runs_a_job(up_tls):
    # Given a GPU node that knows only the gateway URL, its key and the gateway's fingerprint
    node = _node(up_tls, up_tls["root"], "--gateway-fingerprint", up_tls["gateway_fingerprint"], name="gpu")
    try:
        with _https(up_tls, up_tls["admin_token"]) as admin:

            def gpu_node() -> dict | None:
                return next(
                    (
                        n
                        for n in admin.get("/api/v1/status/workers").json()["nodes"]
                        if n["lane"] == "gpu" and n["owner"] == up_tls["user_id"]
                    ),
                    None,
                )

            live = wait_until(gpu_node, timeout_s=60, what="gpu node registered", proc=node)
        # When a job asks for the GPU lane over HTTPS
        with _https(up_tls, up_tls["api_key"]) as c:
            job = submit_file(c, TESTDATA / "hello.wav", gpu=True)
            assert job["lane"] == "gpu", job
            done = wait_job(c, job["job_id"], timeout_s=90)
            text = c.get(f"/api/v1/jobs/{job['job_id']}/result", params={"format": "text"}).text
        # Then that node ran it, its NATS connection verified against the CA the gateway handed it
        assert done["status"] == "succeeded" and done["node_id"] == live["node_id"], done
        assert {"weather", "nice", "today"} <= words(text)
    finally:
        node.stop()


def test_cli_talks_https_with_the_ca_from_up_json(up_tls):
    env = _env(GPUBUS_DATA_DIR=str(up_tls["data_dir"]))
    r = subprocess.run(
        [sys.executable, "-m", "ops.cli", "keys", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["keys"]


def test_plaintext_to_the_tls_nats_port_is_refused(up_tls):
    port = _nats_port(up_tls)
    # Given a client speaking plain NATS: the server says nothing before a TLS handshake
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(5)
        s.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
        try:
            answer = s.recv(4096)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    # Then no INFO, no PONG: the bytes were taken for a broken ClientHello
    assert b"INFO" not in answer and b"PONG" not in answer, answer

    async def plain_nats() -> None:
        await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False, connect_timeout=2)

    with pytest.raises((nats.errors.Error, asyncio.TimeoutError, OSError)):
        asyncio.run(plain_nats())


def test_node_with_the_wrong_nats_ca_refuses_to_connect(up_tls, tmp_path):
    # Given a node told to trust another CA for NATS (someone in the middle would look like this)
    other = tls.load_or_create(tmp_path / "other")
    node = _node(
        up_tls,
        up_tls["root"],
        "--gateway-ca",
        up_tls["tls_ca_file"],
        "--nats-ca",
        str(other.ca_file),
        name="wrong-nats-ca",
    )
    # Then it stops at once, saying why, and never joins
    assert node.proc.wait(60) != 0
    assert "UNTRUSTED_CERTIFICATE" in node.log() and "NATS server certificate not trusted" in node.log()


@pytest.mark.parametrize("flag", ["--gateway-ca", "--gateway-fingerprint"])
def test_node_refuses_a_gateway_it_cannot_verify(up_tls, tmp_path, flag):
    other = tls.load_or_create(tmp_path / "other")
    value = str(other.ca_file) if flag == "--gateway-ca" else other.cert_sha256
    node = _node(up_tls, up_tls["root"], flag, value, name="wrong-gateway")
    assert node.proc.wait(60) != 0
    assert "UNTRUSTED_CERTIFICATE" in node.log(), node.log()[-2000:]


def test_plaintext_beyond_loopback_is_refused_unless_allowed():
    # No socket is opened: the check comes before any connection (192.0.2.0/24 is TEST-NET-1)
    with pytest.raises(InsecureConnection):
        gateway_context("http://192.0.2.10:8000", ca_file=None, pin=None, allow_insecure=False)
    with pytest.raises(InsecureConnection):
        asyncio.run(connect(["nats://192.0.2.10:4222"], name="t"))
    assert gateway_context("http://192.0.2.10:8000", ca_file=None, pin=None, allow_insecure=True) is None
    assert gateway_context("http://127.0.0.1:8000", ca_file=None, pin=None, allow_insecure=False) is None


def test_untrusted_cert_is_a_typed_error_with_a_code():
    assert UntrustedCertificate("x").code == "UNTRUSTED_CERTIFICATE"
    assert InsecureConnection("x").code == "INSECURE_CONNECTION"


# -- `gpubus gateway` with operator-supplied files ----------------------------


def test_gateway_serves_https_and_hands_nodes_the_nats_ca(tmp_path):
    # Given the operator's CA, certificate and key, a TLS NATS, and `gpubus gateway` configured by environment
    files = tls.load_or_create(tmp_path / "tls")
    server = NatsServer(
        store_dir=tmp_path / "nats",
        auth=NatsAuth.generate(),
        tls=NatsTls(files.cert_file, files.key_file, files.ca_file),
    ).start()
    port = free_port()
    env = base_env(
        server.url,
        port=port,
        nats_ca_file=files.ca_file,
        tls_cert_file=files.cert_file,
        tls_key_file=files.key_file,
        nats_issuer_seed=server.auth.issuer_seed,
        nats_xkey_seed=server.auth.xkey_seed,
        nats_system_url=server.system_url,
    )
    gw = Proc(["gateway"], env, tmp_path / "gateway.log").start()
    ca = client_context(ca_file=files.ca_file)
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"https://127.0.0.1:{port}/ready", verify=ca, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout_s=30, what="gateway ready over https", proc=gw)
        # Then plain HTTP gets nowhere, and the bootstrap answer carries the NATS CA
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2)
        r = httpx.post(
            f"https://127.0.0.1:{port}/api/v1/nodes/bootstrap",
            json={"lane": "cpu", "shared": True},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            verify=ca,
            timeout=10,
        )
        body = r.json()
        assert body["nats_ca_pem"] == files.ca_pem and body["nats_ca_sha256"] == fingerprint(files.ca_pem)
        assert body["nats_servers"] == [server.public_url] and server.public_url.startswith("tls://")
    finally:
        gw.stop()
        server.stop()


# -- cluster routes ----------------------------------------------------------


def test_cluster_routes_run_verified_tls(tmp_path):
    files = tls.load_or_create(tmp_path / "tls")
    nats_tls = NatsTls(files.cert_file, files.key_file, files.ca_file)
    with NatsCluster(store_dir=tmp_path / "c", size=3, tls=nats_tls) as cluster:
        for s in cluster.servers:
            varz = httpx.get(f"http://127.0.0.1:{s.http_port}/varz", timeout=5).json()
            assert varz["tls_required"] and varz["cluster"]["tls_required"] and varz["cluster"]["tls_verify"]

        async def replicated() -> int:
            nc = await connect(cluster.url.split(","), name="t", tls=nats_tls.context())
            try:
                info = await nc.jetstream().add_stream(name="TLS_R3", subjects=["tlsr3.>"], num_replicas=3)
                # As gpubus publishes: the new R3 stream may still be electing its
                # leader (no responders) for a moment after it is created.
                await retrying(lambda: nc.jetstream().publish("tlsr3.a", b"x"), what="publish", give_up_after_s=15)
                return info.config.num_replicas
            finally:
                await nc.close()

        assert asyncio.run(replicated()) == 3


# -- the CA module -----------------------------------------------------------


def test_ca_module_names_keys_and_reuse(tmp_path):
    first = tls.load_or_create(tmp_path, ["gpubus.example.com", "10.1.2.3"])
    cert = x509.load_pem_x509_certificate(first.cert_file.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "gpubus.example.com"} <= set(sans.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "10.1.2.3"} <= {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (first.key_file, tmp_path / tls.CA_KEY))
    # A restart with the same names keeps everything; a new name re-issues the certificate, never the CA
    first_sha256, ca_pem = first.cert_sha256, first.ca_pem
    assert tls.load_or_create(tmp_path, ["gpubus.example.com"]).cert_sha256 == first_sha256
    again = tls.load_or_create(tmp_path, ["other.example.com"])
    assert again.cert_sha256 != first_sha256 and again.ca_pem == ca_pem
    with pytest.raises(tls.TlsSetupError):
        tls.TlsFiles.given(tmp_path / "nope.pem", first.cert_file, first.key_file)


def test_tls_init_command_prints_env_lines(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "ops.cli", "tls", "init", "--dir", str(tmp_path / "t"), "--name", "nats-0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert r.returncode == 0, r.stderr
    fp = next(line.split("=", 1)[1] for line in r.stdout.splitlines() if line.startswith("GPUBUS_GATEWAY_FINGERPRINT="))
    assert fp == fingerprint((tmp_path / "t" / tls.SERVER_CERT).read_text())


# -- xkey-sealed auth callout ------------------------------------------------


def _auth_request(server_seed: bytes, token: str) -> bytes:
    """An authorization request as nats-server would send it, signed by a
    server key of our own (the callout checks the signature, not who)."""
    server = nkeys.from_seed(server_seed)
    user = nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    claims = {
        "iat": int(time.time()),
        "iss": server.public_key.decode(),
        "sub": "$G",
        "aud": "nats-authorization-request",
        "nats": {
            "type": "authorization_request",
            "version": 2,
            "user_nkey": user.public_key.decode(),
            "server_id": {"id": server.public_key.decode(), "name": "x"},
            "connect_opts": {"auth_token": token},
            "client_info": {"id": 1},
        },
    }
    return nats_jwt.encode(claims, server_seed.decode()).encode()


async def test_callout_answers_only_sealed_requests(tmp_path):
    # Given our callout with an xkey, on a server where the test may publish auth requests itself
    # (on an authorizing server only the server can: the service user gets a permissions violation)
    callout_seed, fake_server_xkey = xkeys.new_seed(), xkeys.new_seed()
    with NatsServer(store_dir=tmp_path / "nats") as server:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            store = KeyStore(await js.create_key_value(bucket=names.APIKEYS_BUCKET), RecordSeal(None), js=js)
            key, _ = await store.create("xkeyuser", [Role.NODE])
            callout = AuthCallout(
                nc, store, issuer_seed=new_account_seed(), admin_token=lambda: None, xkey_seed=callout_seed
            )
            await callout.start()
            request = _auth_request(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER), key)
            # When a valid, signed request comes unsealed
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request(AUTH_SUBJECT, request, timeout=1)
            # Or sealed to another key
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request(
                    AUTH_SUBJECT,
                    xkeys.seal(request, seed=fake_server_xkey, recipient=xkeys.public_key(xkeys.new_seed())),
                    timeout=1,
                    headers={xkeys.XKEY_HEADER: xkeys.public_key(fake_server_xkey)},
                )
            # Then neither is answered; sealed to the callout, as the server sends it, it is
            sealed = xkeys.seal(request, seed=fake_server_xkey, recipient=xkeys.public_key(callout_seed))
            reply = await nc.request(
                AUTH_SUBJECT, sealed, timeout=5, headers={xkeys.XKEY_HEADER: xkeys.public_key(fake_server_xkey)}
            )
            await callout.stop()
        finally:
            await nc.close()
    # And the answer is a grant sealed back to the server's key only
    assert reply.data.startswith(xkeys.XKV1)
    answer = nats_jwt.decode_verified(
        xkeys.open_sealed(reply.data, seed=fake_server_xkey, sender=xkeys.public_key(callout_seed)).decode()
    )
    assert answer["nats"]["type"] == "authorization_response" and "jwt" in answer["nats"], answer


@pytest.mark.parametrize("gateway_xkey", ["another key", "no key"])
def test_server_refuses_nodes_when_the_callout_cannot_seal_for_it(tmp_path, gateway_xkey):
    # Given a server sealing requests to one key, and a callout that holds another (or none: it answers unsealed)
    auth = NatsAuth.generate()
    with NatsServer(store_dir=tmp_path / "nats", auth=auth) as server:
        gw = Gateway.on(server, tmp_path)
        gw.xkey_seed = xkeys.new_seed() if gateway_xkey == "another key" else None
        gw.start()
        try:
            key = gw.create_key("xkeyuser", roles=("node",))

            async def join() -> None:
                nc = await nats.connect(server.public_url, token=key, allow_reconnect=False, connect_timeout=5)
                await nc.close()

            # Then a node with a perfectly good key is refused: the server trusts only sealed answers
            with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                asyncio.run(join())
            # And with the right key the same node gets in (positive control)
            gw.stop()
            gw = replace(gw, xkey_seed=auth.xkey_seed, port=0, proc=None).start()
            asyncio.run(join())
        finally:
            gw.stop()


def test_a_data_dir_from_before_xkey_gets_one(tmp_path):
    # Given nats_auth.json written before the callout was sealed
    old = NatsAuth.generate()
    path = tmp_path / "nats_auth.json"
    path.write_text(json.dumps({k: v for k, v in vars(old).items() if k != "xkey_seed"}))
    # When `gpubus up` loads it, it keeps the identities and adds a curve key, kept for the next start
    auth = NatsAuth.load_or_create(path)
    assert auth.issuer_seed == old.issuer_seed and auth.xkey_seed.startswith("SX")
    assert NatsAuth.load_or_create(path) == auth and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f'xkey: "{xkeys.public_key(auth.xkey_seed)}"' in auth.config_text()


def test_xkv1_sealing_refuses_tampering_and_other_keys():
    a, b, c = xkeys.new_seed(), xkeys.new_seed(), xkeys.new_seed()
    sealed = xkeys.seal(b"request", seed=a, recipient=xkeys.public_key(b))
    assert sealed[:4] == b"xkv1" and len(sealed) == 4 + 24 + 16 + len(b"request")
    assert xkeys.open_sealed(sealed, seed=b, sender=xkeys.public_key(a)) == b"request"
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for bad, seed in ((tampered, b), (sealed, c), (b"request", b)):
        with pytest.raises(xkeys.XkeyError):
            xkeys.open_sealed(bad, seed=seed, sender=xkeys.public_key(a))
    with pytest.raises(xkeys.XkeyError):
        xkeys.public_key(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT).decode())  # not a curve seed
