"""Refusing zip bombs before a document library opens the zip.

DOCX, PPTX, XLSX and EPUB are zip archives, and every library that reads
them inflates entries into memory. So the archive is checked first, within
caps: the number of entries, the sizes the archive declares, and the bytes
the entries really inflate to (streamed in chunks and counted, never held),
since declared sizes are the attacker's to write. Inflating it all once also
checks every CRC, so a corrupt archive fails here with DECODE_FAILED rather
than halfway through a converter.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from schemas.document_errors import ArchiveTooLarge, DecodeFailed

CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ZipLimits:
    max_expanded_bytes: int = 256 * 1024 * 1024
    max_entries: int = 10_000


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MiB"


def _check_declared(infos: list[zipfile.ZipInfo], limits: ZipLimits) -> None:
    if len(infos) > limits.max_entries:
        raise ArchiveTooLarge(f"the archive has {len(infos)} entries; the limit is {limits.max_entries}")
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_expanded_bytes:
        raise ArchiveTooLarge(
            f"the archive declares {_mib(declared)} unpacked; the limit is {_mib(limits.max_expanded_bytes)}"
        )


def _inflate_counting(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], limits: ZipLimits) -> int:
    total = 0
    for info in infos:
        with zf.open(info) as entry:
            while chunk := entry.read(CHUNK_BYTES):
                total += len(chunk)
                if total > limits.max_expanded_bytes:
                    raise ArchiveTooLarge(f"the archive unpacks past the limit of {_mib(limits.max_expanded_bytes)}")
    return total


def check_archive(path: Path, limits: ZipLimits) -> int:
    """The archive's real unpacked size; raises ArchiveTooLarge or DecodeFailed."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            _check_declared(infos, limits)
            return _inflate_counting(zf, infos, limits)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError) as e:
        raise DecodeFailed(f"not a readable zip archive ({type(e).__name__}: {e})"[:300]) from e
