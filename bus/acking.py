"""The one place that decides ack, nak or term for a job message.

Handlers raise typed exceptions; `settle` maps them onto JetStream:
- returned normally: the result is stored and announced, so ack;
- `JobFailed` (bad input): report it and term, since a retry cannot help;
- `JobCancelled`: report it and ack, nothing should run it again;
- `JobRetryable` or anything unexpected: nak with a delay, so the server
  redelivers it, or, past max_deliver, sends it to the fallback router;
- task cancelled (shutdown): nak at once so another node takes it now.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from nats.aio.msg import Msg

from schemas.errors import PROCESSOR_ERROR, GpubusError, JobCancelled, JobFailed, JobRetryable
from schemas.jobs import ErrorInfo

log = logging.getLogger("gpubus.bus.acking")

UNEXPECTED_NAK_DELAY_S = 2.0
Report = Callable[[str, ErrorInfo | None], Awaitable[None]]


@asynccontextmanager
async def settle(msg: Msg, report: Report, *, job_ref: str) -> AsyncIterator[None]:
    """`report(outcome, error)` publishes the node's event for a failure or
    cancel before the message is settled (success reports itself)."""
    try:
        yield
    except JobFailed as e:
        log.info("job %s failed permanently: %s %s", job_ref, e.code, e.message)
        await report("failed", ErrorInfo(code=e.code, message=e.message))
        await msg.term()
    except JobCancelled:
        log.info("job %s cancelled while running", job_ref)
        await report("cancelled", None)
        await msg.ack_sync()
    except JobRetryable as e:
        log.warning("job %s transient failure %s: %s; nak %.1fs", job_ref, e.code, e.message, e.delay_s)
        await msg.nak(delay=e.delay_s)
    except asyncio.CancelledError:
        log.warning("job %s interrupted by shutdown; nak for immediate redelivery", job_ref)
        await asyncio.shield(msg.nak())
        raise
    except GpubusError as e:
        log.warning("job %s error %s: %s; nak", job_ref, e.code, e)
        await msg.nak(delay=UNEXPECTED_NAK_DELAY_S)
    except Exception:
        log.exception("job %s: unexpected %s; nak", job_ref, PROCESSOR_ERROR)
        await msg.nak(delay=UNEXPECTED_NAK_DELAY_S)
    else:
        await msg.ack_sync()
