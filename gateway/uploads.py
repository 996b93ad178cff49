"""Streaming a multipart upload into the object store, chunk by chunk.

Starlette's form parsing spools files before the handler runs; here the body
is fed to python-multipart's streaming parser and the file part goes straight
into an `ObjectWriter` as it arrives. Size and SHA-256 are computed on the
way; over the limit, not media, or a malformed form means the partial object
is purged before the error is returned: nothing half-written is left behind.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from bus.objects import ObjectWriter
from schemas.errors import InvalidInput, UnsupportedMedia
from schemas.media_sniff import SNIFF_BYTES, sniff
from schemas.names import Kind

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 16
FILE_FIELD = "file"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(raw: str | None) -> str:
    """No paths, no odd characters, bounded: it becomes an object name."""
    base = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _SAFE_NAME.sub("_", base).strip("._")[:100]
    return cleaned or "upload"


@dataclass
class ParsedForm:
    fields: dict[str, str] = field(default_factory=dict)  # the last value of each field
    lists: dict[str, list[str]] = field(default_factory=dict)  # every value (`name[]` style arrays)
    filename: str | None = None
    content_type: str = "application/octet-stream"
    sniffed_kind: Kind | None = None
    sniffed_label: str = ""
    size: int = 0
    sha256: str = ""


class _Events:
    """python-multipart calls back synchronously; we queue what it found and
    act on it (async object writes) after each `write`."""

    def __init__(self) -> None:
        self.items: list[tuple[str, object]] = []
        self._hname = bytearray()
        self._hvalue = bytearray()

    def callbacks(self) -> dict[str, Callable]:
        return {
            "on_part_begin": lambda: self.items.append(("begin", None)),
            "on_header_field": lambda d, s, e: self._hname.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._hvalue.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_part_data": lambda d, s, e: self.items.append(("data", bytes(d[s:e]))),
            "on_part_end": lambda: self.items.append(("end", None)),
        }

    def _header_end(self) -> None:
        self.items.append(("header", (bytes(self._hname).lower(), bytes(self._hvalue))))
        self._hname.clear()
        self._hvalue.clear()


class MultipartToObject:
    """One upload: `run()` parses the body; the file part is written by the
    writer `open_writer(filename)` returns."""

    def __init__(
        self,
        content_type: str,
        open_writer: Callable[[str], ObjectWriter],
        *,
        file_field: str = FILE_FIELD,
        file_prefix: bytes = b"",
    ) -> None:
        """`file_field` names the file part (whisper-asr-webservice's is
        `audio_file`); `file_prefix` is written before its bytes (a WAV
        header for raw PCM), and sniffed, hashed and counted with them."""
        ctype, params = parse_options_header(content_type)
        if ctype != b"multipart/form-data" or b"boundary" not in params:
            raise InvalidInput("expected multipart/form-data with a boundary")
        self._events = _Events()
        try:  # python-multipart refuses a boundary over 256 bytes here
            callbacks = self._events.callbacks()  # a plain dict; python-multipart types it as a TypedDict
            self._parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
        except FormParserError as e:
            raise InvalidInput(f"malformed multipart header: {e}") from e
        self._open_writer = open_writer
        self._file_field = file_field
        self._file_prefix = file_prefix
        self.writer: ObjectWriter | None = None
        self.form = ParsedForm()
        self._parts = 0
        self._name: str | None = None
        self._is_file = False
        self._buf = bytearray()
        self._head = bytearray()
        self._pending_prefix = b""

    async def run(self, body: AsyncIterator[bytes]) -> ParsedForm:
        try:
            async for chunk in body:
                self._parser.write(chunk)
                await self._drain()
            self._parser.finalize()
            await self._drain()
        except FormParserError as e:  # the root of python-multipart's parse errors
            raise InvalidInput(f"malformed multipart body: {e}") from e
        if self.writer is None:
            raise InvalidInput(f"the form has no `{self._file_field}` part")
        if self.form.sniffed_kind is None and self.form.sniffed_label == "":
            self._sniff()
        return self.form

    async def _drain(self) -> None:
        items, self._events.items = self._events.items, []
        for kind, value in items:
            if kind == "begin":
                self._begin_part()
            elif kind == "header":
                self._header(*value)  # type: ignore[misc]
            elif kind == "data":
                await self._data(value)  # type: ignore[arg-type]
            else:
                await self._end_part()

    def _begin_part(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise InvalidInput(f"more than {MAX_PARTS} form parts")
        self._name, self._is_file = None, False
        self._buf.clear()

    def _header(self, name: bytes, value: bytes) -> None:
        if name == b"content-disposition":
            _, params = parse_options_header(value)
            self._name = params.get(b"name", b"").decode(errors="replace")
            if self._name == self._file_field:
                if self.writer is not None:
                    raise InvalidInput(f"only one `{self._file_field}` part is allowed")
                self._is_file = True
                self.form.filename = safe_filename(params.get(b"filename", b"").decode(errors="replace"))
                self.writer = self._open_writer(self.form.filename)
                self._pending_prefix = self._file_prefix
        elif name == b"content-type" and self._is_file:
            self.form.content_type = value.decode(errors="replace")[:100]

    async def _data(self, data: bytes) -> None:
        if self._is_file:
            assert self.writer is not None
            if self._pending_prefix:
                data, self._pending_prefix = self._pending_prefix + data, b""
            if len(self._head) < SNIFF_BYTES:
                self._head += data[: SNIFF_BYTES - len(self._head)]
                if len(self._head) >= SNIFF_BYTES:
                    self._sniff()
            await self.writer.write(data)
            return
        self._buf += data
        if len(self._buf) > MAX_FIELD_BYTES:
            raise InvalidInput(f"form field {self._name!r} is over {MAX_FIELD_BYTES} bytes")

    def _sniff(self) -> None:
        kind, label = sniff(bytes(self._head), self.form.filename)
        if kind is None:
            raise UnsupportedMedia(f"the file looks like {label}, which no processor takes")
        self.form.sniffed_kind, self.form.sniffed_label = kind, label

    async def _end_part(self) -> None:
        if self._is_file:
            assert self.writer is not None
            if not self.form.sniffed_label:
                self._sniff()
            self.form.size = self.writer.size
            self.form.sha256 = self.writer.sha256_hex
        elif self._name:
            value = self._buf.decode(errors="replace")
            self.form.fields[self._name] = value
            self.form.lists.setdefault(self._name, []).append(value)
        self._is_file = False
