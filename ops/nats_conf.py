"""nats-server configuration syntax from plain data, in one place.

The embedded server, the compose file's server and the Helm values all carry
the same accounts (bus/node_permissions.accounts_spec); rendering them from
one structure is what keeps them from drifting. A string of the form
`$NAME` stays a variable reference; `<< … >>` (the Helm chart's raw marker)
is written as what it wraps; every other string is quoted.
"""

from __future__ import annotations

import json
import re

RAW = re.compile(r"^<<\s*(.*?)\s*>>$")
VARIABLE = re.compile(r"^\$[A-Z_][A-Z0-9_]*$")


def render(value: object, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(value, dict):
        inner = "".join(f"{pad}  {_key(k)}: {render(v, indent + 1)}\n" for k, v in value.items())
        return "{\n" + inner + pad + "}"
    if isinstance(value, list):
        inner = "".join(f"{pad}  {render(v, indent + 1)}\n" for v in value)
        return "[\n" + inner + pad + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    raw = RAW.match(text)
    if raw:
        return raw.group(1)
    if VARIABLE.match(text) or text in ("enabled", "stream"):
        return text
    return json.dumps(text)


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key) else json.dumps(key)


def block(name: str, value: object) -> str:
    return f"{name}: {render(value)}\n"


def deploy_accounts(raw: bool = False) -> dict:
    """The accounts of a deployed server, passwords from its environment
    (`raw`: wrapped for the Helm chart, which quotes plain strings)."""
    from bus import node_permissions

    def var(name: str) -> str:
        return f"<< ${name} >>" if raw else f"${name}"

    return node_permissions.accounts_spec(
        "gpubus", var("GPUBUS_NATS_SERVICE_PASSWORD"), "gpubus-sys", var("GPUBUS_NATS_SYSTEM_PASSWORD")
    )


if __name__ == "__main__":  # python -m ops.nats_conf: the block ops/deploy/nats/nats.conf carries
    print(block("accounts", deploy_accounts()), end="")
