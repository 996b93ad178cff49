"""Which URLs a node may fetch: the one place the SSRF rules live.

The gateway checks the syntax at submit (422 for anything but a plain
http/https URL); the node checks every address a download connects to,
including each redirect, against the ranges below (see
processors/media_fetch.py, which routes yt-dlp's name lookups through
`check_address`). Checking resolved addresses, not host names, is what stops
a public name that resolves to 127.0.0.1 or a redirect to 169.254.169.254.

`allow_private` (GPUBUS_ALLOW_PRIVATE_URLS) opens loopback, private,
link-local and carrier-grade NAT ranges, for a node that fetches from its own
LAN. Cloud metadata endpoints stay closed even then: no media lives there, and
they hand out the machine's credentials.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from schemas.errors import InvalidInput

MAX_URL_CHARS = 4096
SCHEMES = frozenset({"http", "https"})
URL_REFUSED_CODE = "URL_REFUSED"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Instance metadata services: AWS/GCP/Azure/OpenStack, AWS IPv6, AWS ECS task
# credentials, Alibaba Cloud.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)


class UrlRefused(InvalidInput):
    """The URL is not one a node may fetch."""

    code = URL_REFUSED_CODE


def check_syntax(url: str) -> str:
    """A plain absolute http(s) URL with a host; returns it stripped."""
    url = (url or "").strip()
    if not url:
        raise UrlRefused("url: empty")
    if len(url) > MAX_URL_CHARS:
        raise UrlRefused(f"url: longer than {MAX_URL_CHARS} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise UrlRefused("url: contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise UrlRefused(f"url: not a valid URL ({e})") from None
    if parts.scheme.lower() not in SCHEMES:
        raise UrlRefused(f"url: scheme {parts.scheme or '(none)'!r} is not allowed; use http or https")
    if not parts.hostname:
        raise UrlRefused("url: no host")
    return url


# IPv6 forms that carry an IPv4 address in their last 32 bits: IPv4-compatible
# (::a.b.c.d, deprecated but still routed by some stacks), well-known NAT64 and
# local-use NAT64 (RFC 8215). A NAT64 gateway or a dual stack turns them into a
# connection to the embedded address, so that address is what gets checked.
_EMBEDS_IPV4_LOW32 = (
    ipaddress.IPv6Network("::/96"),
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
)
# Only global unicast (2000::/3) can be public; inside it, blocks that are
# never a media server, whatever this Python's `is_global` thinks of them
# (3.11 calls 3fff::/20 global): Teredo, documentation.
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_SPECIAL_V6 = tuple(ipaddress.IPv6Network(n) for n in ("2001::/32", "2001:db8::/32", "3fff::/20"))


def _unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv6 address that reaches it (mapped,
    compatible, NAT64, 6to4), which would otherwise smuggle 127.0.0.1 past
    an IPv4 check."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if int(ip) > 1 and any(ip in net for net in _EMBEDS_IPV4_LOW32):  # :: and ::1 are IPv6's own
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _is_public(addr: IPAddress) -> bool:
    if isinstance(addr, ipaddress.IPv4Address):
        return addr.is_global
    return addr.is_global and addr in _GLOBAL_UNICAST_V6 and not any(addr in net for net in _SPECIAL_V6)


def refusal(ip: IPAddress | str, *, allow_private: bool) -> str | None:
    """Why a node may not connect to `ip`, or None when it may."""
    addr = _unwrap(ipaddress.ip_address(ip) if isinstance(ip, str) else ip)
    if addr in METADATA_ADDRESSES:
        return "a cloud metadata endpoint"
    if addr.is_unspecified or addr.is_multicast:
        return "not a unicast address"
    if addr.is_loopback:
        return None if allow_private else "a loopback address"
    if addr.is_link_local:
        return None if allow_private else "a link-local address"
    if addr.is_reserved:  # before is_global: Python calls some reserved blocks global
        return "a reserved address"
    if _is_public(addr):
        return None
    return None if allow_private else "a private or non-public address"


def check_address(host: str, ip: IPAddress | str, *, allow_private: bool) -> None:
    reason = refusal(ip, allow_private=allow_private)
    if reason is not None:
        hint = "" if allow_private or "metadata" in reason else " (a node's GPUBUS_ALLOW_PRIVATE_URLS=true allows it)"
        raise UrlRefused(f"{host} resolves to {ip}, {reason}; refused{hint}")


def _literal_address(host: str) -> IPAddress | None:
    """The address a host name spells without DNS: an IP literal, or one of
    the old numeric IPv4 forms (2130706433, 0x7f000001, 127.1) that every
    resolver still accepts."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def check_submitted(url: str, *, allow_private: bool) -> str:
    """The gateway's check at submit: the syntax, and a host that is an
    address literal must be one a node may fetch (a 422 now beats a job that
    can only fail on the node). Names are left to the node, which checks
    what they resolve to at connect time."""
    url = check_syntax(url)
    host = urlsplit(url).hostname or ""
    ip = _literal_address(host)
    if ip is not None:
        check_address(host, ip, allow_private=allow_private)
    return url
