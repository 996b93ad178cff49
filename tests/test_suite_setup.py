"""The suite's own set-up: what tests/conftest.py promises about how the
tests are spread over pytest-xdist's workers."""

from __future__ import annotations

import os

import pytest


def test_a_files_tests_carry_its_group_so_one_worker_runs_them(request: pytest.FixtureRequest) -> None:
    # Given the suite under pytest-xdist with `--dist loadgroup` (pyproject's addopts)
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("not under pytest-xdist (-n 0)")
    # Then this test's id carries its file's group, which xdist schedules as one
    # (without it each worker started the module fixtures of every file, the
    # Docker compose stack's included)
    assert request.node.nodeid.endswith("@test_suite_setup"), request.node.nodeid
