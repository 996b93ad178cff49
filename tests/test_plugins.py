"""A processor package installed next to gpubus adds a kind, end to end.

The example package (tests/plugins/gpubus_example_plugin) is installed
with pip into a directory of this test run, put on the nodes' PYTHONPATH
only (the venv is untouched), and its `wordcount` kind runs through a real
NATS, gateway and node. Nothing in gpubus names that kind.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.harness import REPO, start_node, stop_all, wait_job, wait_until

pytestmark = pytest.mark.timeout(180)

PLUGINS = Path(__file__).parent / "plugins"
PACKAGES = ("gpubus_example_plugin", "gpubus_broken_plugin")
KIND = "wordcount"
TEXT = "the quick brown fox\njumps over the lazy dog\nthe end\n"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """pip install, offline, into a directory of its own: a real install
    (dist-info with the entry points) that leaves the venv as it was."""
    target, sources = tmp_path_factory.mktemp("plugins"), tmp_path_factory.mktemp("plugin-sources")
    # Built from copies: setuptools writes build/ and *.egg-info next to the sources.
    copies = [shutil.copytree(PLUGINS / name, sources / name) for name in PACKAGES]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation"]
        + ["--target", str(target), *map(str, copies)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return target


@pytest.fixture(scope="module")
def owner() -> str:
    """One user for the module: its two nodes start once (a few seconds each)."""
    return f"plugins-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def plugin_nodes(gateway, owner, plugin_path):
    """The user's CPU and GPU nodes (the GPU one on the CPU) with the plugins
    installed: on their PYTHONPATH only, not the gateway's or the venv's."""
    key = gateway.create_key(owner)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(plugin_path))
        cpu = start_node(gateway, "cpu", key=key, name=f"cpu-{owner}")
        gpu = start_node(gateway, "gpu", key=key, name=f"gpu-{owner}")
    yield key, cpu, gpu
    stop_all([cpu, gpu])


def _heartbeats(gateway, user: str) -> dict[str, list[str]]:
    return {n["lane"]: n["kinds"] for n in gateway.live_nodes() if n["owner"] == user}


def test_plugin_kind_runs_end_to_end(gateway, owner, plugin_nodes):
    key, cpu, _ = plugin_nodes
    # Given the user's nodes with the example package installed
    wait_until(lambda: len(_heartbeats(gateway, owner)) == 2, timeout_s=30, what="both heartbeats")
    kinds = _heartbeats(gateway, owner)
    # Then the CPU node advertises the plugin's kind next to the built-ins,
    # and the GPU node does not (the processor suits the CPU lane only)
    assert KIND in kinds["cpu"] and {"audio", "video", "url"} <= set(kinds["cpu"]), kinds
    assert KIND not in kinds["gpu"], kinds
    with gateway.client(key) as c:
        # When a JSON job of that kind with inline text is submitted, asking for a GPU
        r = c.post("/api/v1/jobs", json={"kind": KIND, "text": TEXT, "gpu": True})
        assert r.status_code == 202, r.text
        job = r.json()
        # Then it goes to the user's CPU lane, since no GPU node serves it
        assert job["lane"] == "cpu" and job["routed_reason"] == "kind_not_served_on_gpu", job
        final = wait_job(c, job["job_id"])
        assert final["status"] == "succeeded" and final["kind"] == KIND, final
        result = c.get(f"/api/v1/jobs/{job['job_id']}/result").json()
        assert (result["words"], result["lines"], result["characters"]) == (11, 3, len(TEXT)), result
        assert result["top"][0] == {"word": "the", "count": 3} and result["node_id"].startswith("cpu-")
        assert c.get(f"/api/v1/jobs/{job['job_id']}/result?format=srt").status_code == 422
        # And a file upload of the kind runs the same way
        up = c.post("/api/v1/jobs", files={"file": ("notes.txt", b"one two two\n")}, data={"kind": KIND})
        assert up.status_code == 202, up.text
        assert wait_job(c, up.json()["job_id"])["status"] == "succeeded"
        assert c.get(f"/api/v1/jobs/{up.json()['job_id']}/result").json()["words"] == 3


def test_kind_not_served_is_422_naming_what_is(gateway, owner, plugin_nodes):
    key, _, _ = plugin_nodes
    other = gateway.create_key(owner + "-x")  # no node of theirs; the shared pool has no plugin
    with gateway.client(key) as c, gateway.client(other) as o:
        r = o.post("/api/v1/jobs", json={"kind": KIND, "text": TEXT})
        assert r.status_code == 422 and r.json()["error"]["code"] == "KIND_NOT_SERVED", r.text
        assert "served:" in r.json()["error"]["message"]
        r = c.post("/api/v1/jobs", json={"kind": "nosuchkind", "text": TEXT})
        assert r.status_code == 422 and r.json()["error"]["code"] == "KIND_NOT_SERVED", r.text
        assert KIND in r.json()["error"]["message"]  # the user's node serves it: named
        up = c.post("/api/v1/jobs", files={"file": ("a.txt", b"x y")}, data={"kind": "nosuchkind"})
        assert up.status_code == 422 and up.json()["error"]["code"] == "KIND_NOT_SERVED", up.text
        for bad in ("Word.Count", "jobs>", "x" * 40):
            assert c.post("/api/v1/jobs", json={"kind": bad, "text": TEXT}).status_code == 422
        assert o.get("/api/v1/jobs").json()["jobs"] == []  # nothing was queued
        assert all(j["kind"] == KIND for j in c.get("/api/v1/jobs").json()["jobs"])


def test_broken_plugins_are_logged_and_skipped(plugin_nodes):
    _, cpu, gpu = plugin_nodes
    # The node started and serves the good plugin (checked above); each
    # broken entry point has its own line naming it
    for proc in (cpu, gpu):
        log = proc.log()
        for name in ("raises", "missing", "bad_kind"):
            assert f"processor plugin {name} = " in log and "failed to load, skipped" in log, log[-3000:]
        assert "this plugin is broken on purpose" in log and "gpubus_no_such_module" in log


def test_no_gpubus_module_names_the_plugin_kind():
    """The plugin is self-contained: its kind is named in its own package only."""
    for pkg in ("schemas", "bus", "processors", "gateway", "gpu_node", "cpu_node", "ops"):
        for path in (REPO / pkg).rglob("*.py"):
            assert KIND not in path.read_text(), path


# The rules without processes: routing of plugin kinds, declarations, inputs.


def _fleet(gpu=(), cpu=(), shared=(), *, gpu_live=None, cpu_live=None):
    from gateway.routing import Fleet

    async def backlog() -> int:
        return 0

    return Fleet(
        owner_gpu_live=bool(gpu) if gpu_live is None else gpu_live,
        owner_cpu_live=bool(cpu) if cpu_live is None else cpu_live,
        gpu_backlog=backlog,
        gpu_kinds=frozenset(gpu),
        cpu_kinds=frozenset(cpu),
        shared_kinds=frozenset(shared),
    )


@pytest.mark.parametrize(
    ("fleet", "gpu", "lane", "queue", "reason"),
    [
        (_fleet(gpu=["ocrx"], cpu=["ocrx"]), True, "gpu", "alice", "gpu_requested"),
        (_fleet(gpu=["ocrx"], cpu=["ocrx"]), False, "cpu", "alice", "gpu_not_requested"),
        (_fleet(gpu=["audio"], cpu=["ocrx"]), True, "cpu", "alice", "kind_not_served_on_gpu"),
        (_fleet(gpu=["ocrx"]), False, "gpu", "alice", "kind_served_only_on_gpu"),
        (_fleet(shared=["ocrx"], cpu=["audio"]), True, "cpu", "shared", "no_live_gpu_node"),
        (_fleet(cpu=["ocrx"], shared=["ocrx"]), False, "cpu", "alice", "gpu_not_requested"),
    ],
)
async def test_plugin_kind_routing(fleet, gpu, lane, queue, reason):
    from bus.settings import GpuMode
    from gateway.routing import choose

    route = await choose("alice", "ocrx", gpu, GpuMode.OPTIONAL, fleet, max_backlog=10)
    assert (route.lane, route.queue_owner, route.reason) == (lane, queue, reason)


def test_cpu_queue_follows_the_kind():
    from gateway.routing import cpu_queue

    fleet = _fleet(cpu=["audio"], shared=["ocrx"])
    assert cpu_queue("alice", fleet, "ocrx") == "shared"  # the owner's CPU node does not serve it
    assert cpu_queue("alice", fleet, "audio") == "alice"
    assert cpu_queue("alice", fleet) == "alice"
    assert cpu_queue("alice", _fleet(cpu=["ocrx"], shared=["ocrx"]), "ocrx") == "alice"


def test_check_served():
    from gateway.routing import check_served
    from schemas.errors import InvalidInput

    check_served("audio", _fleet())  # built-in transcription kinds may wait for a node
    check_served("ocrx", _fleet(shared=["ocrx"]))
    with pytest.raises(InvalidInput) as e:
        check_served("ocrx", _fleet(cpu=["audio", "wordcount"]))
    assert e.value.code == "KIND_NOT_SERVED" and "served: audio, wordcount" in e.value.message


def test_declarations_are_checked():
    from processors.noop import NoopProcessor
    from processors.plugins import PluginRefused, check_declaration

    proc = NoopProcessor()
    check_declaration(proc, taken=())
    with pytest.raises(PluginRefused, match="already served"):
        check_declaration(proc, taken={"noop"})
    for attr, value, match in [
        ("kinds", frozenset({"a.b"}), "do not match"),
        ("kinds", frozenset(), "no kinds"),
        ("lanes", frozenset({"tpu"}), "lanes"),
        ("inputs", frozenset(), "inputs"),
    ]:
        bad = NoopProcessor()
        setattr(bad, attr, value)
        with pytest.raises(PluginRefused, match=match):
            check_declaration(bad, taken=())


def test_a_job_with_an_input_its_processor_does_not_take_fails():
    import threading

    from processors.dispatch import INPUT_NOT_ACCEPTED, ByKind
    from processors.noop import NoopProcessor
    from schemas.errors import JobFailed
    from schemas.jobs import JobMessage, StagedInput, new_job_id

    job_id = new_job_id()
    staged = StagedInput(bucket="files-alice", object_name=f"in/{job_id}/a", filename="a", size=1, sha256="0" * 64)
    job = JobMessage(
        job_id=job_id,
        owner="alice",
        queue_owner="alice",
        lane="cpu",
        kind="noop",
        attempt=1,
        input=staged,
        submitted_at=0.0,
    )
    with pytest.raises(JobFailed) as e:
        ByKind([NoopProcessor()], device="cpu").run(job, None, None, lambda *_: None, threading.Event())
    assert e.value.code == INPUT_NOT_ACCEPTED


def test_the_guide_shows_the_example_package_as_it_is():
    """docs/WRITING_A_PROCESSOR.md quotes the package the tests install: an
    edit to one without the other fails here."""
    guide = (REPO / "docs" / "WRITING_A_PROCESSOR.md").read_text()
    package = PLUGINS / "gpubus_example_plugin"
    for path in (package / "pyproject.toml", package / "gpubus_example_plugin" / "__init__.py"):
        assert path.read_text() in guide, f"{path} differs from its copy in the guide"
