"""Processes stop promptly on SIGTERM: Docker gives a container 10 s
(`docker stop`) and Kubernetes 30 s before SIGKILL, and a node killed in the
middle of its drain leaves its jobs to wait out their ack deadline."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from prometheus_client import CollectorRegistry

from bus.metrics import GatewayMetrics
from bus.settings import Settings
from gateway.state import GatewayState
from tests.harness import ADMIN_TOKEN, Gateway, start_node

pytestmark = pytest.mark.timeout(120)

DOCKER_STOP_GRACE_S = 10.0


def _stop_seconds(proc) -> tuple[float, int | None]:
    t0 = time.monotonic()
    code = proc.stop(timeout_s=30)
    return time.monotonic() - t0, code


def test_idle_node_and_gateway_stop_within_docker_grace(nats_server, workdir, user):
    # Given a gateway of its own and an idle node of a user
    gw = Gateway.on(nats_server, workdir).start()  # (every gateway of an authorized deployment answers callouts)
    try:
        node = start_node(gw, "cpu", key=gw.create_key(user), name=f"cpu-{user}")
        # When each gets SIGTERM (node first, as compose and `gpubus up` order it)
        node_s, node_code = _stop_seconds(node)
        gw_s, gw_code = _stop_seconds(gw.proc)
    finally:
        gw.stop()
    # Then both exit cleanly well within the grace period
    assert node_code == 0, node.log()[-2000:]
    # uvicorn re-raises the SIGTERM it handled once its shutdown is done
    assert gw_code in (0, -signal.SIGTERM), gw.proc.log()[-2000:]
    assert node_s < DOCKER_STOP_GRACE_S, f"node took {node_s:.1f}s to stop"
    assert gw_s < DOCKER_STOP_GRACE_S, f"gateway took {gw_s:.1f}s to stop"


async def test_a_closed_gateway_state_leaves_none_of_its_tasks_running(fresh_nats):
    # Given a gateway's state, connected with every service started
    before = asyncio.all_tasks()
    registry = CollectorRegistry()
    settings = Settings(nats_url=fresh_nats.url, admin_token=ADMIN_TOKEN)
    st = await GatewayState.connect(settings, registry, GatewayMetrics(registry))
    started = {t.get_name() for t in asyncio.all_tasks() - before}
    # When it is closed, as a gateway's shutdown closes it
    await st.close()
    await asyncio.sleep(0.1)
    # Then none of its tasks runs on (a loop left pulling a closed
    # connection retried for the rest of the process: the job TTL timers')
    left = {t.get_name() for t in asyncio.all_tasks() - before if not t.done()}
    assert "job_ttl" in started, started
    assert left == set(), left
