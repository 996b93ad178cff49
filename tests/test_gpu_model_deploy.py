"""A GPU node deployed as shipped starts with a model it can load: the model
is explicit in the Dockerfile, both compose files and Kubernetes (a volume at
/models and GPUBUS_WHISPER_MODEL pointing into it), `gpubus models fetch`
fills that volume once, and a node without it says exactly what to mount."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from processors import model_paths
from tests.harness import Proc, base_env
from tests.test_deploy import DEPLOY, K8S, compose_config, instructions, nats_auth_env, stages

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
MODEL = "/models/large-v3"
FETCH = ["models", "fetch", "large-v3", "--dir", "/models"]


def test_gpu_image_names_its_model_and_owns_the_model_mount():
    final = stages(DEPLOY / "gpu-node.Dockerfile")[-1]
    env = " ".join(a for w, a in final if w == "ENV")
    assert f"GPUBUS_WHISPER_MODEL={MODEL}" in env
    # the volume Docker creates at /models starts owned by the node's uid, so `models fetch` can fill it
    assert any("chown 10001:10001 /models" in a for w, a in final if w == "RUN")
    assert ("ENTRYPOINT", '["gpubus"]') in instructions(DEPLOY / "gpu-node.Dockerfile")


@pytest.mark.parametrize("file", ["compose.yaml", "compose.gpu-box.yaml"])
def test_compose_gpu_node_reads_large_v3_from_the_models_volume(file):
    env = {"GPUBUS_ADMIN_TOKEN": "adm_test", "GPUBUS_GATEWAY_URL": "https://gw.example", "GPUBUS_API_KEY": "gpb_x"}
    cfg = compose_config(file, {**env, **nats_auth_env()}, "--profile", "gpu")
    gpu = cfg["services"]["gpu-node"]
    assert gpu["environment"]["GPUBUS_WHISPER_MODEL"] == MODEL
    [mount] = [m for m in gpu["volumes"] if m["target"] == "/models"]
    assert (mount["type"], mount["source"], mount.get("read_only")) == ("volume", "gpubus-models", True)
    # the same volume `docker run -v gpubus-models:/models … models fetch large-v3` fills
    assert cfg["volumes"]["gpubus-models"]["name"] == "gpubus-models"


def test_k8s_gpu_node_fetches_its_model_once_and_reads_it():
    docs = [d for d in yaml.safe_load_all((K8S / "gpu-node.yaml").read_text()) if d]
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    [node] = pod["containers"]
    assert init["args"] == FETCH and init["image"] == node["image"]
    assert {"name": "models", "mountPath": "/models"} in init["volumeMounts"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in node["volumeMounts"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}} in pod["volumes"]
    assert {e["name"]: e.get("value") for e in node["env"]}["GPUBUS_WHISPER_MODEL"] == MODEL
    assert pod["securityContext"]["fsGroup"] == 10001


def test_models_fetch_keeps_a_model_that_is_there_and_fails_clearly_without_network(tmp_path):
    # Given a models directory that already holds large-v3
    (tmp_path / "large-v3").mkdir()
    (tmp_path / "large-v3" / "model.bin").write_bytes(b"weights")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}  # never a network target

    def fetch(name: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "ops.cli", "models", "fetch", name, "--dir", str(tmp_path)]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)

    # When it is fetched again, Then nothing is downloaded and the setting is printed
    out = fetch("large-v3")
    assert out.returncode == 0 and f"GPUBUS_WHISPER_MODEL={tmp_path / 'large-v3'}" in out.stdout
    # When a model is not there and cannot be downloaded, or is not a model at all, Then a clear error
    for name in ("small.en", "no-such-model"):
        out = fetch(name)
        assert out.returncode != 0 and "MODEL_FETCH_FAILED" in out.stderr and name in out.stderr


def test_a_missing_model_directory_says_what_to_mount_and_set():
    with pytest.raises(model_paths.ModelUnavailable) as e:
        model_paths.resolve(MODEL)
    msg = e.value.message
    assert "models fetch large-v3" in msg and "-v gpubus-models:/models" in msg
    assert f"GPUBUS_WHISPER_MODEL={MODEL}" in msg


def test_gpu_node_without_its_model_volume_exits_with_the_mount_to_make(gateway, user):
    # Given a node configured as the image is, but with nothing mounted at /models
    key = gateway.create_key(user)
    env = base_env(gateway.nats_url, gateway_url=gateway.url, api_key=key, whisper_model=MODEL)
    proc = Proc(["gpu-node", "--device", "cpu"], env, gateway.workdir / f"gpu-novolume-{user}.log").start()
    # Then it exits at start, naming the volume, the fetch command and the variable
    assert proc.proc.wait(90) == 1
    log = proc.log()
    assert "MODEL_UNAVAILABLE" in log and f"GPUBUS_WHISPER_MODEL={MODEL}" in log, log[-2000:]
    assert "models fetch large-v3" in log
    assert not any(n["owner"] == user for n in gateway.live_nodes())
