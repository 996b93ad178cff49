"""bench/ and tests/ share their harness through testkit/, never through
each other: a benchmark runs without the test suite and the other way
round, and testkit depends on neither."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"bench": {"tests"}, "testkit": {"tests", "bench"}}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import(package: str) -> None:
    # Given every module of the package
    modules = sorted((REPO / package).rglob("*.py"))
    assert modules
    # When its imports are read, then none is of a package it may not use
    bad = {
        str(m.relative_to(REPO)): sorted(imported_packages(m) & FORBIDDEN[package])
        for m in modules
        if imported_packages(m) & FORBIDDEN[package]
    }
    assert not bad, bad


# Private attributes of nats-py objects that gpubus once reached into; a
# nats-py release may rename any of them without notice.
PRIVATE_ATTRS = ("_nc", "_sub", "_js", "_nuid", "_prefix", "_stream", "_consumer", "_nms", "_deliver", "_pending_queue")
PRIVATE_ON_OTHERS = re.compile(rf"\b(?!self\b|cls\b)([A-Za-z_][A-Za-z0-9_]*)\.({'|'.join(PRIVATE_ATTRS)})\b")
FIRST_PARTY = ("bench", "bus", "cpu_node", "gateway", "gpu_node", "ops", "processors", "schemas", "testkit")


def private_uses(path: Path) -> list[tuple[int, str]]:
    """(line, `name._attr`) where `name` is not self/cls: an object of
    somebody else's, since our own classes reach their state through `self`."""
    return [
        (n, m.group(0))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        for m in PRIVATE_ON_OTHERS.finditer(line.split("#", 1)[0])
    ]


def test_the_pattern_catches_what_it_is_for(tmp_path: Path) -> None:
    # Given lines that reach into nats-py objects, and lines that do not
    sample = tmp_path / "sample.py"
    sample.write_text(
        "await psub._nc.publish(psub._nms, b'', reply=psub._deliver)\n"
        "await sub._js.delete_consumer(sub._stream, sub._consumer)\n"
        "watcher._sub\n"
        "self._nc = nc  # psub._nc in a comment is fine\n"
        "cls._stream\n"
    )
    # When it is scanned, then exactly the foreign uses are found
    found = [use for _line, use in private_uses(sample)]
    assert found == [
        "psub._nc",
        "psub._nms",
        "psub._deliver",
        "sub._js",
        "sub._stream",
        "sub._consumer",
        "watcher._sub",
    ]


def test_no_module_uses_private_attributes_of_third_party_objects() -> None:
    # Given every module outside tests/
    modules = [m for package in FIRST_PARTY for m in sorted((REPO / package).rglob("*.py"))]
    assert modules
    # When each is scanned for `other._private` on the names nats-py keeps private,
    # then there is none: only public nats-py calls, so nats-py can be upgraded
    uses = [f"{m.relative_to(REPO)}:{n}: {use}" for m in modules for n, use in private_uses(m)]
    assert not uses, "\n".join(uses)
