"""The one place that decides ack, nak or term for a job message.

Handlers raise typed exceptions; `settle` maps them onto JetStream:
- returned normally: the result is stored and announced, so ack;
- `JobFailed` (bad input): report it and term, since a retry cannot help;
- `JobCancelled`: report it and ack, nothing should run it again;
- `JobRetryable` or anything unexpected: nak with a delay, so the server
  redelivers it, or, past max_deliver, sends it to the fallback router;
- task cancelled (shutdown): nak at once so another node takes it now;
- `StartLost`: the attempt is someone else's (bus/start_claims.py); the
  message is left as it is, and whoever won settles it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from nats.aio.msg import Msg

from bus.retry import retrying
from schemas.errors import PROCESSOR_ERROR, GpubusError, JobCancelled, JobFailed, JobRetryable
from schemas.jobs import ErrorInfo

log = logging.getLogger("gpubus.bus.acking")

UNEXPECTED_NAK_DELAY_S = 2.0
ACK_RETRY_S = 10.0  # about one Raft election: the consumer's new leader takes the ack
Report = Callable[[str, ErrorInfo | None], Awaitable[None]]


class StartLost(Exception):
    """The node may not start this attempt: the start-deadline mover took it."""


@asynccontextmanager
async def settle(msg: Msg, report: Report, *, job_ref: str, last_delivery: bool = False) -> AsyncIterator[None]:
    """`report(outcome, error)` publishes the node's event for a failure or
    cancel before the message is settled (success reports itself). On the
    consumer's last delivery a nak alone would leave the job waiting for a
    puller (JetStream only notices max_deliver when it tries to redeliver),
    so the node also reports `released` and the gateway moves the job on."""
    try:
        yield
    except JobFailed as e:
        log.info("job %s failed permanently: %s %s", job_ref, e.code, e.message)
        await report("failed", ErrorInfo.of(e.code, e.message))
        await msg.term()
    except StartLost:
        log.info("job %s: another side claimed the start; left unsettled", job_ref)
    except JobCancelled:
        log.info("job %s cancelled while running", job_ref)
        await report("cancelled", None)
        await _ack(msg, job_ref)
    except JobRetryable as e:
        log.warning("job %s transient failure %s: %s; nak %.1fs", job_ref, e.code, e.message, e.delay_s)
        await _give_back(msg, report, ErrorInfo.of(e.code, e.message), last_delivery, delay_s=e.delay_s)
    except asyncio.CancelledError:
        log.warning("job %s interrupted by shutdown; nak for immediate redelivery", job_ref)
        info = ErrorInfo(code="NODE_SHUTDOWN", message="the node stopped before finishing")
        await asyncio.shield(_give_back(msg, report, info, last_delivery, delay_s=0.0))
        raise
    except GpubusError as e:
        log.warning("job %s error %s: %s; nak", job_ref, e.code, e)
        await msg.nak(delay=UNEXPECTED_NAK_DELAY_S)
    except Exception:
        log.exception("job %s: unexpected %s; nak", job_ref, PROCESSOR_ERROR)
        await msg.nak(delay=UNEXPECTED_NAK_DELAY_S)
    else:
        await _ack(msg, job_ref)


async def _give_back(msg: Msg, report: Report, info: ErrorInfo, last_delivery: bool, *, delay_s: float) -> None:
    if last_delivery:
        try:
            await report("released", info)
        except Exception as e:  # the lease will time out instead: slower, not lost
            log.warning("could not report release (%r); the job falls back when its lease ends", e)
    await msg.nak(delay=delay_s or None)


async def _ack(msg: Msg, job_ref: str) -> None:
    """Retried through a leader election (an ack lost with a dying server
    would have the finished job delivered and run again after ack_wait). It
    can also fail when the job moved on without us (it fell back and the
    original was deleted); the result is stored and reported already, so
    that is logged, not raised."""
    try:
        await retrying(msg.ack_sync, what=f"ack job {job_ref}", give_up_after_s=ACK_RETRY_S)
    except Exception as e:
        log.warning("job %s: ack not confirmed (%r); the job may have moved on", job_ref, e)
