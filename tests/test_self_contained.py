"""A clone of this repository is all the tests, benchmarks and docs need:
none of them may point at a path outside it (a folder beside the clone, one
machine's own layout, an environment variable naming such a folder). The
speech fixtures live in tests/data/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = ["tests", "bench", "testkit", "docs", "README.md", ".ci"]
TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".sh", ".yaml", ".yml", ".json", ""}

# The old out-of-tree fixture folder, the variable that named it, this machine's layout.
OUTSIDE = re.compile(r"shared[\\/]+testdata|GPUBUS_TEST_?DATA|/work/")
# `..` opening a relative path (tests and benchmarks run from the repository
# root, and so do the README's commands).
DOTDOT = re.compile(r"(?<![\w./-])\.\.[\\/][^\s`'\")\]]*")
# Path(__file__)...parents[N] or .parent.parent...: how far up from the file.
PARENTS_INDEX = re.compile(r"__file__\)(?:\.resolve\(\))?\.parents\[(\d+)\]")
PARENT_CHAIN = re.compile(r"__file__\)(?:\.resolve\(\))?((?:\.parent\b)+)")
# Walking up from a root already found (REPO.parent, ROOT.parents...).
ROOT_UP = re.compile(r"\b(?:REPO|ROOT)\.parents?\b")

# Strings that look like paths and are not: what a test feeds in to see it refused.
NOT_PATHS = {
    ("tests/test_schemas.py", "../etc"),  # a job id that must fail validation
}


def scanned_files(repo: Path) -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        top = repo / name
        candidates = [top] if top.is_file() else sorted(top.rglob("*"))
        files += [p for p in candidates if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]
    return files


def _escapes(rel: str, base: Path, repo: Path) -> bool:
    target = (base / rel).resolve()
    return target != repo and repo not in target.parents


def outside_refs(path: Path, repo: Path) -> list[str]:
    """The lines of `path` that refer to a path outside `repo`."""
    rel = path.relative_to(repo)
    depth = len(rel.parts) - 1  # folders between the repository root and the file
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        return []
    found = []
    for no, line in enumerate(lines, 1):
        dotdot = [
            m.group(0)
            for m in DOTDOT.finditer(line)
            if (rel.as_posix(), m.group(0)) not in NOT_PATHS
            and (_escapes(m.group(0), repo, repo) or _escapes(m.group(0), path.parent, repo))
        ]
        ups = [int(m.group(1)) for m in PARENTS_INDEX.finditer(line)]
        ups += [m.group(1).count(".parent") - 1 for m in PARENT_CHAIN.finditer(line)]
        if OUTSIDE.search(line) or ROOT_UP.search(line) or dotdot or any(up > depth for up in ups):
            found.append(f"{rel.as_posix()}:{no}: {line.strip()}")
    return found


def test_nothing_refers_to_a_path_outside_the_repository() -> None:
    # Given every text file of the tests, benchmarks, shared harness and docs
    files = [p for p in scanned_files(REPO) if p != Path(__file__).resolve()]  # not its own examples
    assert REPO / "README.md" in files and (REPO / "bench" / "common.py") in files
    # When each is searched for a path that leaves the repository
    found = [ref for p in files for ref in outside_refs(p, REPO)]
    # Then there is none
    assert not found, "paths outside the repository:\n" + "\n".join(found)


def test_fixtures_are_in_the_repository() -> None:
    from tests.harness import TESTDATA

    assert TESTDATA == REPO / "tests" / "data"
    assert {"hello.wav", "hello.txt", "hello.mp4", "numbers.wav", "long.wav", "garbage.bin"} <= {
        p.name for p in TESTDATA.iterdir()
    }


@pytest.mark.parametrize(
    "rel, text, outside",
    [
        ("README.md", "Speech fixtures come from `../shared/testdata`.", True),
        ("README.md", "Speech fixtures are in `tests/data/` (`docs/../README.md`).", False),
        ("tests/harness.py", 'TESTDATA = Path(__file__).resolve().parents[2] / "shared"', True),
        ("tests/harness.py", 'TESTDATA = Path(__file__).resolve().parents[1] / "tests" / "data"', False),
        ("tests/harness.py", "ROOT = Path(__file__).parent.parent.parent", True),
        ("tests/harness.py", "ROOT = Path(__file__).parent.parent", False),
        ("bench/common.py", 'env = os.environ.get("GPUBUS_TESTDATA")', True),
        ("bench/common.py", "for parent in REPO.parents:", True),
        ("bench/x.py", 'open("../fixtures/a.wav")', True),
        ("bench/x.py", 'open("../tests/data/a.wav")', True),  # from the repository root, where benchmarks run
        ("tests/test_x.py", 'assert bad("../etc")', True),
    ],
)
def test_an_outside_path_is_caught(rel: str, text: str, outside: bool, tmp_path: Path) -> None:
    # Given a file of a repository holding one line that may point outside it
    repo = tmp_path / "repo"
    (repo / rel).parent.mkdir(parents=True)
    (repo / rel).write_text(f"x = 1\n{text}\n")
    # When it is searched, then the line is reported only if it does
    assert outside_refs(repo / rel, repo) == ([f"{rel}:2: {text}"] if outside else [])
