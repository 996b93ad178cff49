"""`python -m ops.healthcheck gateway|node`: the containers' HEALTHCHECK.

Slim images have no curl; this asks the process in the same container over
loopback, with the standard library only. The gateway is healthy when
`/ready` answers 200 (NATS connected, topology in place), so compose can hold
nodes back until it is; a node when its metrics endpoint answers (its event
loop and metrics thread are alive). Exit 0 healthy, 1 not.
"""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request

from bus.settings import Settings

TIMEOUT_S = 3.0
OK = 200


def url_for(target: str, settings: Settings) -> str:
    if target == "gateway":
        scheme = "https" if settings.tls_cert_file else "http"
        return f"{scheme}://127.0.0.1:{settings.port}/ready"
    if target == "node":
        if settings.metrics_port == 0:
            raise SystemExit("a node's healthcheck needs a fixed GPUBUS_METRICS_PORT (not 0)")
        return f"http://127.0.0.1:{settings.metrics_port}/metrics"
    raise SystemExit(f"usage: python -m ops.healthcheck gateway|node (got {target!r})")


def probe(url: str, timeout_s: float = TIMEOUT_S) -> bool:
    # Our own process over loopback: liveness, not identity, so the
    # certificate (made for the public name) is not checked here.
    unverified = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=unverified) as r:
            return r.status == OK
    except (OSError, urllib.error.URLError):
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    url = url_for(args[0] if args else "", Settings())
    healthy = probe(url)
    if not healthy:
        print(f"unhealthy: {url}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
