"""bench/ and tests/ share their harness through testkit/, never through
each other: a benchmark runs without the test suite and the other way
round, and testkit depends on neither."""

from __future__ import annotations

import ast
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
