"""The root of every gpubus error, and the stable codes clients see.

Every error carries a `code` (machine-readable, stable) and a message for
people. The gateway maps classes to HTTP statuses in one place
(`gateway/errors.py`); nodes turn `JobFailed` into a failed job.
"""

from __future__ import annotations


class GpubusError(Exception):
    code = "INTERNAL"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        if code:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidInput(GpubusError):
    """The request or message does not validate."""

    code = "INVALID_INPUT"


class Unauthorized(GpubusError):
    """Missing, invalid, expired or revoked credentials."""

    code = "UNAUTHORIZED"


class Forbidden(GpubusError):
    """Authenticated, but not allowed to do this."""

    code = "FORBIDDEN"


class NotFound(GpubusError):
    """No such thing, or not yours (existence is not leaked)."""

    code = "NOT_FOUND"


class Conflict(GpubusError):
    """The thing is not in a state that allows this."""

    code = "CONFLICT"


class ResultUnreadable(Conflict):
    """A succeeded job's stored result does not parse as its result type
    (the node that ran it named or wrote something else)."""

    code = "RESULT_UNREADABLE"


class PayloadTooLarge(GpubusError):
    """Upload over the size limit."""

    code = "PAYLOAD_TOO_LARGE"


class UnsupportedMedia(GpubusError):
    """No processor takes this content."""

    code = "UNSUPPORTED_MEDIA"


class RateLimited(GpubusError):
    """Too many jobs in flight for this user."""

    code = "RATE_LIMITED"

    def __init__(self, message: str = "", *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(GpubusError):
    """The bus is away; try again shortly. Nothing was accepted."""

    code = "UNAVAILABLE"

    def __init__(self, message: str = "", *, retry_after_s: int = 2) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelNotServed(InvalidInput):
    """No live node serves the model asked for: INVALID_INPUT (422) as any
    bad option, but OpenAI's endpoints answer it 404 `model_not_found`."""


class IdempotencyKeyReused(GpubusError):
    """An `Idempotency-Key` already used for a different request."""

    code = "IDEMPOTENCY_KEY_REUSED"


class StillRunning(GpubusError):
    """A synchronous request's job did not finish in time; it goes on, and
    its status and result stay available under its job id."""

    code = "STILL_RUNNING"

    def __init__(self, message: str, *, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobFailed(GpubusError):
    """A permanent failure of one job (bad media, no audio track): retrying
    the same input cannot succeed, so the message is termed."""

    code = "JOB_FAILED"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


class JobRetryable(GpubusError):
    """A transient failure of one job (a download timed out, the GPU ran out
    of memory): the message is nak'ed so it is redelivered or falls back."""

    code = "JOB_RETRYABLE"

    def __init__(self, code: str, message: str, *, delay_s: float = 1.0) -> None:
        super().__init__(message, code=code)
        self.delay_s = delay_s


class JobCancelled(GpubusError):
    """The owner cancelled the job while it ran."""

    code = "CANCELLED"


# Codes a failed job can carry (besides those of processors' own choosing).
DECODE_FAILED = "DECODE_FAILED"
NO_AUDIO_TRACK = "NO_AUDIO_TRACK"
INPUT_CORRUPT = "INPUT_CORRUPT"
INPUT_MISSING = "INPUT_MISSING"
NO_NODE_COMPLETED = "NO_NODE_COMPLETED"
NO_GPU_NODE = "NO_GPU_NODE"  # gpu "required" and no GPU node started it within its start timeout
PROCESSOR_ERROR = "PROCESSOR_ERROR"
UNSUPPORTED_LANGUAGE = "UNSUPPORTED_LANGUAGE"  # a language the model (or Whisper) cannot do
NOT_QUEUED = "NOT_QUEUED"  # the bus refused the job's message; retrying it queues it
