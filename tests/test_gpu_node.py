"""The GPU node profile: its engine defaults, and a clear failure at start."""

from __future__ import annotations

import pytest

from bus.settings import Settings
from gpu_node.main import CUDA_DEFAULT_MODEL, engine_config
from tests.harness import Proc, base_env

pytestmark = pytest.mark.timeout(120)


def test_cpu_run_of_the_gpu_node_keeps_the_offline_model_and_no_batching():
    cfg = engine_config(Settings(device="cpu", gpu_batch_size=24, node_concurrency=3))
    assert (cfg.model, cfg.device, cfg.compute_type, cfg.batch_size, cfg.workers) == (None, "cpu", "int8", 0, 3)
    assert (cfg.clip_batch, cfg.clip_pack) == (0, False)  # neither batching nor packing unless asked
    assert CUDA_DEFAULT_MODEL == "large-v3"


def test_gpu_node_whose_model_is_not_installed_exits_with_a_clear_error(gateway, user):
    # Given a node configured for a model that is not on this machine
    key = gateway.create_key(user)
    env = base_env(gateway.nats_url, gateway_url=gateway.url, api_key=key, whisper_model="large-v3")
    proc = Proc(["gpu-node", "--device", "cpu"], env, gateway.workdir / f"gpu-nomodel-{user}.log").start()
    # Then it exits at start (no download is attempted) and says why
    assert proc.proc.wait(90) == 1
    log = proc.log()
    assert "MODEL_UNAVAILABLE" in log and "'large-v3' is not installed" in log, log[-2000:]
    assert "GPUBUS_WHISPER_MODEL=/models/large-v3" in log  # says what to mount and set
    assert not any(n["owner"] == user for n in gateway.live_nodes())
