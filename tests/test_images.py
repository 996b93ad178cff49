"""The three images of ops/deploy, built for real (on the local Debian base,
testkit/images.py) and started: each runs as non-root with a HEALTHCHECK,
every entry point of it imports and its command's `--help` runs inside it,
the gateway's uvicorn parses HTTP with httptools, the GPU image has NVML and
no torch and names its model, and no build secret is left in any image.

One container per image: with the vfs storage driver every container start
copies the whole image (about 25 s here), so the checks share one."""

from __future__ import annotations

import json

import pytest

from testkit import images
from testkit.images import ENTRY_POINTS

pytestmark = pytest.mark.timeout(3600)  # a cold build downloads every wheel

# Run inside the image: what each check found, as one JSON object.
PROBE = """
import importlib, importlib.util, json, os, subprocess, sys
name, modules = sys.argv[1], sys.argv[2:]
for m in modules:
    importlib.import_module(m)
from uvicorn.protocols.http.auto import AutoHTTPProtocol
help = subprocess.run(["gpubus", name, "--help"], capture_output=True, text=True)
print(json.dumps({
    "uid": os.getuid(),
    "help": help.returncode == 0 and "usage: gpubus" in help.stdout,
    "http": AutoHTTPProtocol.__name__,
    "torch": importlib.util.find_spec("torch") is not None,
    "model": os.environ.get("GPUBUS_WHISPER_MODEL"),
    "models_uid": os.stat("/models").st_uid if os.path.isdir("/models") else None,
    "secrets_left": [p for p in ("/etc/pip.conf", "/run/secrets/pip-ca", "/run/secrets/pip.conf") if os.path.exists(p)],
}))
"""


@pytest.mark.parametrize("name", images.IMAGES)
def test_image_runs_non_root_with_a_healthcheck_and_every_entry_point(built_images, name):
    tag = f"gpubus-{name}:{images.TAG}"
    # Given the image as built
    config = json.loads(images.docker("image", "inspect", tag).stdout)[0]["Config"]
    assert config["User"] == "10001:10001" and config["Entrypoint"] == ["gpubus"]
    assert "ops.healthcheck" in " ".join(config["Healthcheck"]["Test"])
    # When its entry points are imported and its command's --help runs inside it (no network)
    cmd = ["run", "--rm", "--network", "none", "--entrypoint", "python", tag, "-c", PROBE, name, *ENTRY_POINTS[name]]
    out = images.docker(*cmd, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    # Then all import, as uid 10001, and the build's pip settings were secrets, used and gone
    assert found["uid"] == 10001 and found["help"] and found["secrets_left"] == [], found
    # uvicorn parses HTTP with httptools (the gateway's, and the nodes' metrics servers')
    assert found["http"] == "HttpToolsProtocol", found
    if name == "gpu-node":
        # NVML for GPU memory, no torch; the model named, its mount owned by the node's uid
        assert not found["torch"] and found["model"] == "/models/large-v3" and found["models_uid"] == 10001, found
