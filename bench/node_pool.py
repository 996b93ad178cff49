"""A node process for many owners at once, for the scale benchmark: one
real `NodeRuntime` (its own consumer, pull loop, leases, events, acks) per
owner on one connection, running the `noop` processor, so 100 owners do not
need 100 processes that each load a Whisper model. Runs until SIGTERM.

    python -m bench.node_pool NATS_URL OWNER[,OWNER...] [CAPACITY]
"""

from __future__ import annotations

import asyncio
import signal
import sys

from prometheus_client import CollectorRegistry

from bus.connection import connect
from bus.metrics import NodeMetrics
from bus.node_runtime import NodeRuntime, new_node_id
from processors.dispatch import ByKind
from processors.noop import NoopProcessor
from schemas.names import Lane


async def serve(url: str, owners: list[str], capacity: int) -> None:
    nc = await connect([url], name="bench-node-pool")
    runtimes = []
    for owner in owners:
        node_id = new_node_id(Lane.CPU)
        runtimes.append(
            NodeRuntime(
                nc,
                ByKind([NoopProcessor()], device="cpu"),
                queue_owner=owner,
                lane=Lane.CPU,
                capacity=capacity,
                job_deadline_s=600,
                metrics=NodeMetrics(CollectorRegistry(), node_id=node_id, device="cpu"),
                node_id=node_id,
                handle_signals=False,
            )
        )
    for rt in runtimes:
        await rt.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await asyncio.gather(*(rt.stop(drain_timeout_s=5) for rt in runtimes))
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]) if len(sys.argv) > 3 else 1))
