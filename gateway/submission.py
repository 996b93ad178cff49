"""Submitting a job: admission, staging the upload, routing and queueing.

Every submitting endpoint (the job API, the older API's aliases, the
OpenAI-compatible one, whisper-asr-webservice's) comes through here; each
brings only its own way of reading its form (`interpret`). A request with an
idempotency key claims it between staging and queueing
(gateway/idempotency.py). Queueing itself is `bus.queueing`, shared with
retry and the fallback router.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request

from bus import job_ttl, objects
from bus.joblog import job_fields
from bus.queueing import queue_attempt
from gateway import fleet_models, idempotency, routing
from gateway.auth import Principal
from gateway.idempotency import Idempotency
from gateway.state import GatewayState
from gateway.uploads import FILE_FIELD, MultipartToObject, ParsedForm
from gateway.webhook_fields import job_webhook
from schemas import names
from schemas.diarization import DIARIZED_KINDS
from schemas.errors import Forbidden, InvalidInput
from schemas.jobs import JobRecord, StagedInput, TranscribeOptions, new_job_id, now
from schemas.names import Kind, Priority, priority_rank
from schemas.url_guard import check_submitted
from schemas.webhooks import Webhook

log = logging.getLogger("gpubus.gateway.jobs")

T = TypeVar("T")
MIB = 1024 * 1024
Interpret = Callable[[ParsedForm], tuple[str, bool, TranscribeOptions]]
PRIORITY_NOT_ALLOWED = "PRIORITY_NOT_ALLOWED"


def capped(priority: Priority, cap: Priority | None) -> Priority:
    """`priority`, or the key's cap where that is lower."""
    return cap if cap is not None and priority_rank(priority) < priority_rank(cap) else priority


def with_priority(principal: Principal, options: TranscribeOptions, default: Priority) -> TranscribeOptions:
    """The job's priority: the one asked for (403 above the key's
    `max_priority`), else the endpoint's default lowered to that cap (a
    key kept from high still uses the synchronous endpoints)."""
    asked, cap = options.priority, principal.max_priority
    if asked is None:
        return options.model_copy(update={"priority": capped(default, cap)})
    if capped(asked, cap) is not asked:
        raise Forbidden(
            f"priority: this key may ask for {cap} at most, not {asked} (an admin sets max_priority per key)",
            code=PRIORITY_NOT_ALLOWED,
        )
    return options


async def route_for(st: GatewayState, owner: str, kind: str, gpu: bool, options: TranscribeOptions) -> routing.Route:
    """Routing's decision on the fleet as this gateway sees it now (a kind
    or feature no live node serves is refused here, for a retry too)."""
    s = st.settings
    fleet, required, needs = st.fleet(owner), options.gpu_required, options.needs()
    routing.check_served(kind, fleet, needs)
    return await routing.choose(owner, kind, gpu, s.gpu_mode, fleet, s.gpu_max_backlog, required=required, needs=needs)


def check_diarizable(kind: str, options: TranscribeOptions) -> None:
    """Only a kind with audio can be diarized: a document asking for it is a
    mistake to report, not an option to ignore."""
    if options.diarize and kind not in DIARIZED_KINDS:
        raise InvalidInput(
            f"options.diarize: a {kind} job has no audio to diarize (diarize takes {', '.join(sorted(DIARIZED_KINDS))})"
        )


@dataclass(frozen=True)
class NewJob:
    """What a request asked for, once read and checked: every way in (multipart,
    JSON, URL, the compatibility endpoints) ends in one of these."""

    owner: str
    job_id: str
    kind: str
    gpu: bool
    options: TranscribeOptions
    staged: StagedInput | None = None
    url: str | None = None
    webhook: Webhook | None = None


async def enqueue(st: GatewayState, job: NewJob) -> JobRecord:
    """Route and queue attempt 1 (record, then message: bus/queueing.py).
    The user's `gpu` wish is kept on the record for a retry to route by."""
    check_diarizable(job.kind, job.options)
    owner, job_id, kind = job.owner, job.job_id, job.kind
    options = fleet_models.resolve(st, owner, job.options)
    route = await route_for(st, owner, kind, job.gpu, options)
    t = now()
    rec = JobRecord(
        job_id=job_id,
        owner=owner,
        queue_owner=route.queue_owner,
        kind=kind,
        lane=route.lane,
        routed_reason=route.reason,
        created_at=t,
        updated_at=t,
        input=job.staged,
        url=job.url,
        options=options,
        gpu_requested=job.gpu,
        expires_at=job_ttl.expires_at(options.ttl_s, t),
        webhook=job.webhook,
    )
    await job_ttl.arm(st.js, rec, give_up_after_s=st.publisher.give_up_after_s)
    queued = await queue_attempt(st.jobs, st.publisher, owner, job_id, 1, rec, notes=st.notes)
    assert queued is not None  # a new record is always this caller's own claim
    st.metrics.jobs_submitted.labels(lane=route.lane.value, kind=kind).inc()
    log.info(
        "job %s owner=%s kind=%s lane=%s reason=%s queued",
        job_id,
        owner,
        kind,
        route.lane,
        route.reason,
        extra=job_fields(job_id, owner, route.lane, None, "queued", kind=str(kind), reason=route.reason),
    )
    return queued


def admitted(
    st: GatewayState, principal: Principal, *, replay: bool = False
) -> contextlib.AbstractAsyncContextManager[None]:
    """Per-user limit on unfinished jobs: a slot is taken before anything
    is staged and held until the job is queued or has failed (429 if none).
    A replay of an idempotency key takes none: it makes no job."""
    if replay:
        return contextlib.nullcontext()
    return st.admission.slot(principal.user_id, principal.max_active_jobs or st.settings.max_active_jobs)


async def drop_staged(st: GatewayState, staged: StagedInput | None) -> None:
    """Best effort: a staged input no job will read."""
    if staged is not None:
        with contextlib.suppress(Exception):
            await objects.delete_object(st.js, staged.bucket, staged.object_name)


async def queue_once(st: GatewayState, idem: Idempotency | None, job: NewJob) -> JobRecord:
    """Claim the idempotency key (if any), then queue. A request that finds
    the key held answers with that job and drops what it staged; one
    refused or never queued leaves nothing behind, key included."""
    try:
        replayed = await idempotency.claim(st, idem, job.job_id)
        if replayed is None:
            return await enqueue(st, job)
    except BaseException:
        await idempotency.release(st, idem, job.job_id)
        await drop_staged(st, job.staged)
        raise
    await drop_staged(st, job.staged)
    return replayed


async def stage_upload(
    st: GatewayState,
    request: Request,
    owner: str,
    job_id: str,
    interpret: Callable[[ParsedForm], T],
    *,
    max_bytes: int,
    file_field: str = FILE_FIELD,
    file_prefix: bytes = b"",
) -> tuple[StagedInput, ParsedForm, T]:
    """Stream the multipart `file` into the owner's bucket. `interpret` reads
    the other form fields (each endpoint has its own); if it refuses them the
    staged object is purged, like any other failure before commit."""
    upload = MultipartToObject(
        request.headers.get("content-type", ""),
        lambda filename: objects.ObjectWriter(
            st.js, names.files_bucket(owner), names.input_object(job_id, filename), max_bytes=max_bytes
        ),
        file_field=file_field,
        file_prefix=file_prefix,
    )
    try:
        form = await upload.run(request.stream())
        if form.size <= len(file_prefix):
            raise InvalidInput(f"{file_field}: the uploaded file is empty")
        fields = interpret(form)
        assert upload.writer is not None
        await upload.writer.commit(description=form.content_type)
    except BaseException:
        if upload.writer is not None:
            await upload.writer.abort()
        raise
    st.metrics.upload_bytes.inc(form.size)
    staged = StagedInput(
        bucket=upload.writer.bucket,
        object_name=upload.writer.name,
        filename=form.filename or "upload",
        size=form.size,
        sha256=form.sha256,
        content_type=form.content_type,
    )
    return staged, form, fields


async def submit_upload(
    st: GatewayState,
    request: Request,
    principal: Principal,
    interpret: Interpret,
    *,
    file_field: str = FILE_FIELD,
    file_prefix: bytes = b"",
    priority: Priority = Priority.NORMAL,
) -> tuple[JobRecord, ParsedForm]:
    """Multipart upload to a queued job; the endpoint's own fields stay in
    the form. Every upload endpoint takes a webhook (gateway/webhook_fields.py).
    `priority` is the endpoint's default; a priority the key may not ask
    for is refused before the upload is committed."""
    owner = principal.user_id

    def fields_and_webhook(form: ParsedForm) -> tuple[tuple[str, bool, TranscribeOptions], Webhook | None]:
        kind, gpu, options = interpret(form)
        return (kind, gpu, with_priority(principal, options, priority)), job_webhook(st, principal, form.fields)

    idem = Idempotency.of(request, owner)
    async with admitted(st, principal, replay=await idempotency.known(st, idem)):
        await st.ensure_owner(owner)
        job_id = new_job_id()
        max_bytes = (principal.max_upload_mb or st.settings.max_upload_mb) * MIB
        staged, form, ((kind, gpu, options), webhook) = await stage_upload(
            st,
            request,
            owner,
            job_id,
            fields_and_webhook,
            max_bytes=max_bytes,
            file_field=file_field,
            file_prefix=file_prefix,
        )
        if idem is not None:
            idem = idem.with_body({"fields": form.lists, "file": [form.filename, form.size, form.sha256]})
        job = NewJob(owner, job_id, kind, gpu, options, staged=staged, webhook=webhook)
        return await queue_once(st, idem, job), form


async def submit_url(
    st: GatewayState,
    principal: Principal,
    url: str,
    gpu: bool,
    options: TranscribeOptions,
    *,
    webhook: Webhook | None = None,
    idem: Idempotency | None = None,
    priority: Priority = Priority.NORMAL,
) -> JobRecord:
    """A URL job: the syntax and any address literal are checked here (422);
    the node that downloads it checks every address it connects to
    (schemas/url_guard.py)."""
    url = check_submitted(url, allow_private=st.settings.allow_private_urls)
    return await submit_without_upload(
        st, principal, Kind.URL, gpu, options, url=url, webhook=webhook, idem=idem, priority=priority
    )


async def submit_without_upload(
    st: GatewayState,
    principal: Principal,
    kind: str,
    gpu: bool,
    options: TranscribeOptions,
    *,
    url: str | None = None,
    webhook: Webhook | None = None,
    idem: Idempotency | None = None,
    priority: Priority = Priority.NORMAL,
) -> JobRecord:
    """A job with nothing to stage (a URL, or `noop` for benchmarks).
    `idem` comes with its fingerprint (`with_body`) made by the endpoint."""
    options = with_priority(principal, options, priority)
    async with admitted(st, principal, replay=await idempotency.known(st, idem)):
        await st.ensure_owner(principal.user_id)
        job = NewJob(principal.user_id, new_job_id(), kind, gpu, options, url=url, webhook=webhook)
        return await queue_once(st, idem, job)


INLINE_TEXT_NAME = "text.txt"


async def stage_text(st: GatewayState, owner: str, job_id: str, text: str) -> StagedInput:
    """A JSON job's inline `text`, staged like an upload: the node hands the
    processor a file either way, so a processor that reads files needs
    nothing else to take text."""
    data = text.encode()
    writer = objects.ObjectWriter(st.js, names.files_bucket(owner), names.input_object(job_id, INLINE_TEXT_NAME))
    try:
        await writer.write(data)
        await writer.commit(description="text/plain; charset=utf-8")
    except BaseException:
        await writer.abort()
        raise
    return StagedInput(
        bucket=writer.bucket,
        object_name=writer.name,
        filename=INLINE_TEXT_NAME,
        size=writer.size,
        sha256=writer.sha256_hex,
        content_type="text/plain; charset=utf-8",
    )


async def submit_json_kind(
    st: GatewayState,
    principal: Principal,
    kind: str,
    gpu: bool,
    options: TranscribeOptions,
    *,
    url: str | None = None,
    text: str | None = None,
    webhook: Webhook | None = None,
    idem: Idempotency | None = None,
) -> JobRecord:
    """A JSON job of any other kind (a plugin's): its input is a URL, inline
    text (staged as a file), or nothing. Whether a live node serves the
    kind is checked before anything is staged, and again when queued."""
    if url is not None and text is not None:
        raise InvalidInput("a job takes `url` or `text`, not both")
    options = with_priority(principal, options, Priority.NORMAL)
    if url is not None:
        url = check_submitted(url, allow_private=st.settings.allow_private_urls)
    owner = principal.user_id
    check_diarizable(kind, options)
    routing.check_served(kind, st.fleet(owner), options.needs())
    async with admitted(st, principal, replay=await idempotency.known(st, idem)):
        await st.ensure_owner(owner)
        job_id = new_job_id()
        staged = await stage_text(st, owner, job_id, text) if text is not None else None
        job = NewJob(owner, job_id, kind, gpu, options, staged=staged, url=url, webhook=webhook)
        return await queue_once(st, idem, job)
