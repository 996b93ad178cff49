"""The raw nats-py baseline's worker: pull from a work-queue stream, ack,
reply on core NATS. The least a JetStream job loop can do, run as its own
process like a gpubus node. One message per pull request with a lingering
wait: the lowest latency nats-py's `fetch` gives (a batch fetch lingers for
its whole timeout once it has fewer messages than asked for).

    python -m bench.raw_worker NATS_URL
"""

from __future__ import annotations

import asyncio
import sys

import nats
from nats.errors import TimeoutError as NatsTimeoutError

STREAM = "RAWBENCH"
SUBJECT = "rawbench.jobs"
CONSUMER = "rawworker"


async def work(url: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    psub = await js.pull_subscribe_bind(durable=CONSUMER, stream=STREAM)
    print("ready", flush=True)
    while True:
        try:
            msgs = await psub.fetch(1, timeout=5)
        except (TimeoutError, NatsTimeoutError):
            continue
        for msg in msgs:
            await msg.ack()
            await nc.publish(msg.headers["Reply-To"], msg.data)


if __name__ == "__main__":
    asyncio.run(work(sys.argv[1]))
