"""One webhook POST, guarded like a media download (schemas/url_guard.py).

The receiver's host name is resolved at every attempt and every address it
resolves to is checked: one refused address refuses the delivery (a name
that also points at 127.0.0.1 is not a receiver). The request then goes to
a checked address itself, with the name in `Host` and in TLS (SNI and the
certificate check), so a second lookup cannot swap in another address
between the check and the connection. Redirects are never followed: a 3xx
is an answer that is not a 2xx. The response body is never read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from schemas import url_guard
from schemas.errors import GpubusError

USER_AGENT = "gpubus-webhooks/1"


class WebhookRefused(GpubusError):
    """The receiver's URL or address is not one the gateway may call: permanent."""

    code = "WEBHOOK_REFUSED"


class WebhookUnreachable(GpubusError):
    """No HTTP answer (DNS, connection, time-out): worth another attempt."""

    code = "WEBHOOK_UNREACHABLE"


@dataclass(frozen=True)
class Target:
    """Where one attempt connects: `url` names a checked address, `host` the name."""

    url: str
    host_header: str
    sni_hostname: str | None


async def resolve(url: str, *, allow_private: bool) -> Target:
    """The URL checked, resolved, and pinned to an allowed address."""
    try:
        url = url_guard.check_syntax(url)
    except url_guard.UrlRefused as e:
        raise WebhookRefused(e.message) from None
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise WebhookUnreachable(f"{host} does not resolve: {e}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise WebhookUnreachable(f"{host} resolves to no address")
    for ip in addresses:
        try:
            url_guard.check_address(host, ip, allow_private=allow_private)
        except url_guard.UrlRefused as e:
            raise WebhookRefused(e.message) from None
    pinned = addresses[0]
    literal = f"[{pinned}]" if isinstance(ipaddress.ip_address(pinned), ipaddress.IPv6Address) else pinned
    userinfo, _, host_header = parts.netloc.rpartition("@")  # credentials in the URL stay HTTP basic auth
    netloc = f"{userinfo}@{literal}:{port}" if userinfo else f"{literal}:{port}"
    return Target(
        url=urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
        host_header=host_header,
        sni_hostname=host if parts.scheme == "https" else None,
    )


async def post(
    client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], *, allow_private: bool
) -> int:
    """The receiver's HTTP status; WebhookRefused or WebhookUnreachable."""
    target = await resolve(url, allow_private=allow_private)
    extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
    all_headers = {**headers, "host": target.host_header, "user-agent": USER_AGENT}
    try:
        request = client.build_request("POST", target.url, content=body, headers=all_headers, extensions=extensions)
        response = await client.send(request, stream=True, follow_redirects=False)
        await response.aclose()
    except httpx.HTTPError as e:
        raise WebhookUnreachable(f"{type(e).__name__}: {e}"[:300]) from None
    return response.status_code
