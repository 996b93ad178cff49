"""Turning request fields into typed values, each refusal a 422 that names
the field. Shared by every submitting endpoint (the job API, the older API's
aliases, the OpenAI-compatible one), so a field means the same everywhere."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from gateway.bodies import validation_message
from gateway.uploads import ParsedForm
from schemas.errors import InvalidInput, UnsupportedMedia
from schemas.jobs import TranscribeOptions
from schemas.languages import check_language
from schemas.names import BUILTIN_KINDS, Kind, Priority, validate_kind


def parse_bool(value: str | None, field: str) -> bool:
    if value is None or value == "":
        return False
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise InvalidInput(f"{field}: expected true or false{' or required' * (field == 'gpu')}, got {value!r}")


GPU_REQUIRED = "required"


def with_gpu_field(value: object, options: TranscribeOptions) -> tuple[bool, TranscribeOptions]:
    """The `gpu` field: true/false, or "required" (the GPU lane or a
    NO_GPU_NODE failure, never the CPU lane), kept in the options so a
    retry and the start deadline see it."""
    if isinstance(value, str) and value.strip().lower() == GPU_REQUIRED:
        return True, options.model_copy(update={"gpu_required": True})
    if isinstance(value, bool):
        return value, options
    return parse_bool(value if isinstance(value, str) else None, "gpu"), options


def with_priority_field(value: str | None, options: TranscribeOptions) -> TranscribeOptions:
    """The `priority` field (high, normal, low), kept in the options like
    `gpu: "required"`; absent, the endpoint's default applies. Given both
    here and as `options.priority`, the two must agree."""
    if value is None or not value.strip():
        return options
    try:
        priority = Priority(value.strip().lower())
    except ValueError:
        raise InvalidInput(f"priority: one of high, normal, low; got {value!r}") from None
    if options.priority not in (None, priority):
        raise InvalidInput(f"priority: {priority}, but options.priority is {options.priority}")
    return options.model_copy(update={"priority": priority})


def make_options(values: dict[str, Any]) -> TranscribeOptions:
    """Options from any endpoint's fields; a bad value is a 422 naming it.
    The language is checked against Whisper's own list here, at the door:
    a code no model knows would otherwise fail only on a node."""
    try:
        options = TranscribeOptions.model_validate(values)
    except ValidationError as e:
        raise InvalidInput(validation_message(e, "options")) from e
    check_language(options.language)
    return options


def parse_options(raw: str | None) -> TranscribeOptions:
    if not raw:
        return make_options({})
    try:
        values = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"options: not JSON ({e.msg})") from e
    except RecursionError:  # the form field is capped in bytes, not in depth
        raise InvalidInput("options: nested too deeply") from None
    if not isinstance(values, dict):
        raise InvalidInput("options: expected a JSON object")
    return make_options(values)


FILE_KINDS = frozenset({Kind.AUDIO, Kind.VIDEO, Kind.DOCUMENT, Kind.IMAGE})  # built-ins an upload may name


def parse_kind(raw: str | None, sniffed: Kind | None) -> str:
    """A built-in kind that takes a file, or any other well-formed kind: a
    plugin's, which the submission accepts only if a live node serves it."""
    if not raw:
        return sniffed or Kind.AUDIO
    name = raw.strip().lower()
    if name not in BUILTIN_KINDS:
        try:
            return validate_kind(name)
        except InvalidInput as e:
            raise InvalidInput(f"kind: {e.message}") from None
    kind = Kind(name)
    if kind not in FILE_KINDS:
        raise InvalidInput(f"kind {kind} does not take a file upload")
    return kind


# The fields of `POST /api/v1/jobs` besides `file`; the webhook's are read by
# gateway/webhook_fields.py, for every submitting endpoint.
JOB_FORM_FIELDS = ("gpu", "kind", "priority", "options", "webhook_url", "callback_url")


def media_kind(form: ParsedForm) -> Kind:
    """The kind of an upload to an endpoint that transcribes (OpenAI's,
    whisper-asr-webservice's): audio or video. A document or an image is
    415 there (400 under /v1/, as OpenAI answers), not a job that fails."""
    kind = form.sniffed_kind or Kind.AUDIO
    if kind not in (Kind.AUDIO, Kind.VIDEO):
        raise UnsupportedMedia(
            f"file: {form.sniffed_label or kind} is not audio or video; documents and images go to POST /api/v1/jobs"
        )
    return kind


def refuse_unknown_fields(form: ParsedForm, known: tuple[str, ...], endpoint: str) -> None:
    """A field the endpoint does not take is a 422 naming it, never
    silently ignored (a misspelt option would otherwise do nothing)."""
    unknown = sorted(set(form.fields) - set(known))
    if unknown:
        raise InvalidInput(
            f"unknown form field(s) {', '.join(unknown)}: {endpoint} takes file, {', '.join(known)} "
            "(transcription options go inside `options`, a JSON object)"
        )


def job_form(form: ParsedForm) -> tuple[str, bool, TranscribeOptions]:
    """The fields of `POST /api/v1/jobs`: `kind`, `gpu`, `priority`, `options` (JSON),
    `webhook_url` (or `callback_url`); any other is refused."""
    refuse_unknown_fields(form, JOB_FORM_FIELDS, "POST /api/v1/jobs")
    options = with_priority_field(form.fields.get("priority"), parse_options(form.fields.get("options")))
    gpu, options = with_gpu_field(form.fields.get("gpu"), options)
    return parse_kind(form.fields.get("kind"), form.sniffed_kind), gpu, options
