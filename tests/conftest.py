"""Fixtures: a real nats-server per session (and per test where a test breaks
it), a gateway process, a shared CPU node. Each test uses its own user, so
queues never mix."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.embedded_nats import NatsServer
from ops.nats_identity import NatsAuth
from testkit import images
from tests.harness import REPO, TESTDATA, Gateway, Proc, start_node

_users = itertools.count()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gpubus")


@pytest.fixture(scope="session")
def nats_server(workdir: Path) -> Iterator[NatsServer]:
    server = NatsServer(store_dir=workdir / "nats", auth=NatsAuth.generate()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway(nats_server: NatsServer, workdir: Path) -> Iterator[Gateway]:
    # Private URLs allowed at submit: the URL tests fetch from 127.0.0.1, and
    # it is the nodes' flag they test (metadata literals stay refused).
    gw = Gateway.on(nats_server, workdir, gpu_ack_wait=3, max_upload_mb=8, allow_private_urls=True).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def shared_cpu_node(gateway: Gateway) -> Iterator[Proc]:
    node = start_node(gateway, "cpu", shared=True, name="shared-cpu")
    yield node
    node.stop()


CHROMIUM = "/usr/bin/chromium"  # Debian's package; no browser is ever downloaded
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium through Playwright, for the web page and /docs tests."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "install Debian's chromium: apt-get install -y chromium chromium-driver"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def user(request) -> str:
    """A fresh user id per test."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    return f"u{next(_users)}-{base}"


@pytest.fixture
def fresh_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A server of the test's own, for tests that kill or restart it."""
    server = NatsServer(store_dir=tmp_path / "nats", auth=NatsAuth.generate()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def built_images(workdir: Path) -> images.Builds:
    """The three images of ops/deploy, built once per session (Docker's cache
    makes it quick after the first time). Without a usable Docker daemon the
    tests that need them skip, saying why; in CI (.ci/run starts one) they fail."""
    reason = images.unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Docker is required in CI: {reason}")
        pytest.skip(f"Docker unavailable: {reason}")
    builds = images.build_gpubus_images(workdir)
    print(f"\nimage builds (s): {builds.seconds}")
    return builds


def pytest_report_header(config) -> str:
    return f"gpubus tests; speech fixtures in {TESTDATA.relative_to(REPO)}/"


# The files that build the Docker images (the session's `built_images`) and run them.
DOCKER_FILES = {"test_compose_stack.py", "test_images.py"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`--dist loadgroup`, pyproject's addopts), one test file
    runs on one worker, so a module's fixtures (a user, their nodes, a browser
    tab's gateway) start once; the files that build and run the Docker images
    share one worker, so the images are built once, not once per worker.
    First among the hooks: xdist reads the groups in its own hook of this
    name, and run after it these markers were never seen (a file's tests
    went to both workers, each starting the file's module fixtures, the
    Docker stack's included)."""
    for item in items:
        group = "docker" if item.path.name in DOCKER_FILES else item.path.stem
        item.add_marker(pytest.mark.xdist_group(group))
