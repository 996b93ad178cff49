"""The structure of a Markdown text: headings, tables, a plain-text reading.

Every converter ends in Markdown (markitdown, docling, trafilatura), so the
structure a result carries is read back from that one form, the same way
for every format, rather than once per library's own object model.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from schemas.documents import Heading

_FENCE = re.compile(r"^\s*(```|~~~)")
_ATX = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_TABLE_RULE = re.compile(r"^\s*\|(\s*:?-{3,}:?\s*\|)+\s*$")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_EMPHASIS = re.compile(r"(\*\*|__|\*|_|`)(?=\S)(.+?)(?<=\S)\1")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


def _prose_lines(markdown: str) -> Iterator[tuple[str, bool]]:
    """(line, inside a code fence): '#' in a code block is not a heading."""
    fenced = False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            yield line, True
            continue
        yield line, fenced


def headings(markdown: str) -> list[Heading]:
    found = []
    for line, fenced in _prose_lines(markdown):
        m = None if fenced else _ATX.match(line)
        if m:
            found.append(Heading(level=len(m.group(1)), text=plain_inline(m.group(2))))
    return found


def tables(markdown: str) -> list[str]:
    """Each pipe table (a header row, a rule row, then rows) as its own Markdown."""
    found: list[str] = []
    block: list[str] = []
    for line, fenced in [*_prose_lines(markdown), ("", False)]:
        if not fenced and _TABLE_ROW.match(line):
            block.append(line.strip())
            continue
        if len(block) >= 2 and _TABLE_RULE.match(block[1]):
            found.append("\n".join(block))
        block = []
    return found


def _cell(value: object) -> str:
    return " ".join(str(value if value is not None else "").split()).replace("|", "\\|")


def table(rows: Sequence[Sequence[object]]) -> str:
    """A Markdown pipe table from rows of cells, the first row as the header."""
    cleaned = [[_cell(c) for c in row] for row in rows if any(c not in (None, "") for c in row)]
    if not cleaned:
        return ""
    width = max(len(r) for r in cleaned)
    cleaned = [r + [""] * (width - len(r)) for r in cleaned]
    lines = ["| " + " | ".join(r) + " |" for r in cleaned]
    lines.insert(1, "|" + "|".join(["---"] * width) + "|")
    return "\n".join(lines)


def plain_inline(text: str) -> str:
    text = _LINK.sub(r"\1", text)
    return _EMPHASIS.sub(r"\2", text)


def _plain_line(line: str) -> str | None:
    if _TABLE_RULE.match(line):
        return None
    if _TABLE_ROW.match(line):
        return "\t".join(c.strip() for c in line.strip().strip("|").split("|"))
    m = _ATX.match(line)
    return plain_inline(m.group(2) if m else line)


def to_text(markdown: str) -> str:
    """Markdown read as plain text: no markers, tables as tab-separated rows."""
    out = []
    for line, fenced in _prose_lines(_COMMENT.sub("", markdown)):
        plain = line if fenced else _plain_line(line)
        if plain is not None and not (fenced and _FENCE.match(line)):
            out.append(plain.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def title(markdown: str) -> str | None:
    """The first level-1 heading, the usual title of a converted document."""
    return next((h.text for h in headings(markdown) if h.level == 1), None)
