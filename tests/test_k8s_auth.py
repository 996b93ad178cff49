"""Kubernetes runs NATS with isolation on, wired end to end offline: the
Secret `gpubus nats-auth --k8s` prints is a valid Kubernetes object holding
every key the NATS chart values and the gateway read from it; the gateway
connects as the callout's exempt service users; nodes hold no NATS
credential at all (auth callout scopes them by their key); and the README's
steps make that Secret before NATS starts. That the accounts and callout
block itself loads in the real nats-server and matches the code is
tests/test_deploy.py::test_k8s_nats_enforces_isolation."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_deploy import K8S, manifests, run

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]


def secret_refs(node: object, name: str) -> set[str]:
    """Keys of Secret `name` that a manifest or values file reads, anywhere in it."""
    if isinstance(node, dict):
        ref = node.get("secretKeyRef")
        found = {ref["key"]} if isinstance(ref, dict) and ref.get("name") == name else set()
        return found.union(*(secret_refs(v, name) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(secret_refs(v, name) for v in node))
    return set()


def test_the_nats_secret_has_every_key_the_chart_and_gateway_read():
    # Given the Secret as the README makes it
    out = run(sys.executable, "-m", "ops.cli", "nats-auth", "--k8s", cwd=ROOT)
    secret = json.loads(out.stdout)
    import kubernetes_validate

    kubernetes_validate.validate(secret, "1.37.0", strict=True)
    assert (secret["kind"], secret["metadata"]["name"]) == ("Secret", "gpubus-nats")
    # Then the NATS servers (chart values) and the gateway find every key they read in it
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    read = secret_refs(values, "gpubus-nats") | secret_refs(manifests(), "gpubus-nats")
    assert read == {"service-password", "system-password", "issuer", "xkey", "issuer-seed", "xkey-seed"}
    assert read <= set(secret["stringData"])
    # and the seeds (what signs and unseals callout answers) go to the gateway only, never to NATS
    assert secret_refs(values, "gpubus-nats").isdisjoint({"issuer-seed", "xkey-seed"})


def test_gateway_connects_as_the_callouts_exempt_users_and_nodes_hold_no_nats_credential():
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    exempt = set(values["config"]["merge"]["authorization"]["auth_callout"]["auth_users"])
    deployments = {d["metadata"]["name"]: d for d in manifests() if d["kind"] == "Deployment"}

    def env(name: str) -> dict[str, dict]:
        (c,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e for e in c["env"]}

    gateway = env("gpubus-gateway")
    users = {
        u
        for var in ("GPUBUS_NATS_URL", "GPUBUS_NATS_SYSTEM_URL")
        for u in re.findall(r"tls://([\w-]+):", gateway[var]["value"])
    }
    assert users == exempt == {"gpubus", "gpubus-sys"}
    for node in ("gpubus-cpu-node", "gpubus-gpu-node"):
        assert not [k for k in env(node) if k.startswith("GPUBUS_NATS")], f"{node}: NATS comes from its key"


def test_readme_kubernetes_steps_make_the_nats_secret_before_nats_starts():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Kubernetes") :]
    section = section[: section.index("\n## ")]
    assert section.index("gpubus nats-auth --k8s") < section.index("helm upgrade --install nats")
    # and says what the cluster enforces
    assert "auth callout" in section and "permissions violation" in section


def test_the_cli_inside_the_gateway_pod_reaches_it_over_https():
    # README: `kubectl -n gpubus exec deploy/gpubus-gateway -- gpubus keys create …`; the gateway serves HTTPS
    gateway = next(d for d in manifests() if d["metadata"]["name"] == "gpubus-gateway" and d["kind"] == "Deployment")
    (c,) = gateway["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["GPUBUS_GATEWAY_URL"] == "https://127.0.0.1:8000"
    assert env["GPUBUS_TLS_CA_FILE"] == "/etc/gpubus/tls/ca.crt"
