"""The multipart bodies of the upload endpoints, for the OpenAPI document.

Uploads are parsed by hand as they stream into the object store
(gateway/uploads.py), so FastAPI sees no body parameter and would document
none; each upload route names its form here instead (`openapi_extra`), and
/docs and generated clients get a file field and typed fields. The routes
read exactly these names (tests/test_fuzz.py sends what is documented).
"""

from __future__ import annotations

from typing import Any

from schemas.formats import RENDERERS
from schemas.jobs import TranscribeOptions

Schema = dict[str, Any]


def file_part(description: str) -> Schema:
    return {"type": "string", "format": "binary", "description": description}


def text(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def boolean(description: str) -> Schema:
    return {"type": "boolean", "description": description}


def option(name: str) -> Schema:
    """A TranscribeOptions field as a form field, typed and bounded as the
    model has it (nullable left out: an absent field is the default)."""
    schema = dict(TranscribeOptions.model_json_schema()["properties"][name])
    choices = [s for s in schema.pop("anyOf", []) if s.get("type") != "null"]
    if choices:
        schema |= choices[0]
    schema.pop("default", None)
    schema.pop("title", None)
    return schema


def neutral_example(schema: Schema) -> Any:
    """What /docs puts in an optional field: Swagger UI sends every filled-in
    form field, and fills one with no example as "string" or 0 (a language
    "string", a TTL of 0 s). An empty value is not sent at all."""
    if "enum" in schema:
        return schema["enum"][0]
    return {"boolean": False, "array": []}.get(schema.get("type", ""), "")


def multipart(properties: dict[str, Schema], required: tuple[str, ...], description: str = "") -> dict[str, Any]:
    """`openapi_extra` for a route whose body is this multipart form."""
    properties = {
        name: schema if name in required or "example" in schema else schema | {"example": neutral_example(schema)}
        for name, schema in properties.items()
    }
    body: Schema = {"type": "object", "properties": properties, "required": list(required)}
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"multipart/form-data": {"schema": body}},
        }
    }


MEDIA = "the audio or video file (anything FFmpeg decodes); streamed into the object store"
OPTIONS_JSON = "options as a JSON object (language, task, word_timestamps, vad_filter, model, ...)"
GPU = text("`true`, `false` or `required` (the GPU lane or nothing)", enum=["false", "true", "required"])

JOB_FORM = multipart(
    {
        "file": file_part(MEDIA),
        "kind": text("the job's kind; default: sniffed from the file (audio or video)"),
        "gpu": GPU,
        "options": text(OPTIONS_JSON),
    },
    ("file",),
    "A file upload as multipart/form-data; a URL job is JSON (`url`, `kind`, `gpu`, `options`).",
)

SEED_FORM = multipart(
    {
        "file": file_part(MEDIA),
        "format": text("the answer's format (`/process/file`)", enum=sorted(RENDERERS), example="json"),
        "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "seconds to wait (`/process/file`)"},
        "gpu": boolean("run on one of your GPU nodes when one is live"),
        "kind": text("audio or video; default: sniffed from the file", enum=["audio", "video"]),
        "options": text(OPTIONS_JSON),
        **{name: option(name) for name in ("language", "task", "model", "initial_prompt")},
        **{name: option(name) for name in ("word_timestamps", "vad_filter")},
    },
    ("file",),
)

# Extra fields the OpenAI-compatible endpoints take besides OpenAI's own.
OPENAI_EXTRAS = ("vad_filter", "beam_size", "word_timestamps", "ttl_s", "start_timeout_s", "clip_s")


def openai_form(response_formats: tuple[str, ...], *, translation: bool) -> dict[str, Any]:
    fields: dict[str, Schema] = {
        "file": file_part(MEDIA),
        "model": text(
            "`whisper-1` (this fleet's default model) or a model a live node serves (GET /v1/models)",
            example="whisper-1",
        ),
        "prompt": text("text to guide the model's style or continue a previous segment", maxLength=2000),
        "response_format": text("the answer's format", enum=list(response_formats), example="json"),
        "temperature": {"type": "number", "minimum": 0, "maximum": 1, "description": "sampling temperature"},
    }
    if not translation:
        fields["language"] = option("language") | {"description": "the audio's language (ISO 639-1)"}
        fields["timestamp_granularities[]"] = {
            "type": "array",
            "items": {"type": "string", "enum": ["word", "segment"]},
            "description": "`word` adds word timestamps to verbose_json",
        }
    fields |= {name: option(name) for name in OPENAI_EXTRAS}
    return multipart(fields, ("file", "model"), "OpenAI's fields, and gpubus' options as extra fields.")


def audio_file_form(description: str) -> dict[str, Any]:
    """whisper-asr-webservice's body: one `audio_file` part (the rest is in the query)."""
    return multipart({"audio_file": file_part(description)}, ("audio_file",))
