"""The download of one URL job, in a child process of the node.

Run as `python -m processors.fetch_child` with a JSON spec on stdin; prints
one JSON object per line on stdout: `{"progress": bytes, "total": bytes|null}`
while it downloads, then `{"ok": true, ...}` or `{"ok": false, "code", ...}`.

Why a process: the node can kill it at the time limit or on cancel (a
thread cannot be stopped), and every name lookup in this process goes through
the SSRF guard (`socket.getaddrinfo` is wrapped below), so the rules hold for
every request yt-dlp makes, whichever HTTP library it picks, on every
redirect, and against DNS answers that change between check and connect.
The cookie file's path arrives in the spec; its contents are never printed.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

from schemas.url_guard import URL_REFUSED_CODE, UrlRefused, check_address

DOWNLOAD_FAILED = "DOWNLOAD_FAILED"
DOWNLOAD_TOO_LARGE = "DOWNLOAD_TOO_LARGE"
DOWNLOAD_UNAVAILABLE = "DOWNLOAD_UNAVAILABLE"  # transient: network trouble, 5xx
OUTPUT_STEM = "download"
PROGRESS_EVERY_BYTES = 256 * 1024

_refusals: list[str] = []


def limit_text(max_bytes: int) -> str:
    return f"{max_bytes / (1024 * 1024):.1f} MiB"


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def install_guard(*, allow_private: bool) -> None:
    """Every lookup is checked; one forbidden address refuses the whole name,
    so a host with a public and a private record cannot slip through."""
    real_getaddrinfo = socket.getaddrinfo

    def guarded(host, port, *args, **kwargs):
        infos = real_getaddrinfo(host, port, *args, **kwargs)
        for info in infos:
            ip = str(info[4][0]).split("%", 1)[0]
            try:
                check_address(str(host), ip, allow_private=allow_private)
            except UrlRefused as e:
                _refusals.append(e.message)
                raise socket.gaierror(socket.EAI_NONAME, e.message) from None
        return infos

    socket.getaddrinfo = guarded


class _TooLarge(Exception):
    pass


class _Log:
    """yt-dlp's messages, kept for the error report (not printed: stdout is
    the protocol, and the node logs only our summary)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.too_large: str | None = None

    def debug(self, msg: str) -> None:
        if "max-filesize" in msg:  # yt-dlp skips, without an error, what the server says is too big
            self.too_large = msg

    info = debug

    def warning(self, msg: str) -> None:
        pass

    def error(self, msg: str) -> None:
        self.errors.append(msg)


def _options(spec: dict[str, Any], log: _Log) -> dict[str, Any]:
    from yt_dlp.utils import match_filter_func

    max_bytes = int(spec["max_bytes"])
    last = {"at": 0}

    def hook(d: dict[str, Any]) -> None:
        done = int(d.get("downloaded_bytes") or 0)
        if done > max_bytes:
            raise _TooLarge(f"the download passed the limit of {limit_text(max_bytes)}")
        if done - last["at"] >= PROGRESS_EVERY_BYTES or d.get("status") == "finished":
            last["at"] = done
            emit({"progress": done, "total": d.get("total_bytes") or d.get("total_bytes_estimate")})

    opts: dict[str, Any] = {
        "format": "bestaudio/best",  # audio only when the site offers it
        "outtmpl": {"default": str(Path(spec["out_dir"]) / f"{OUTPUT_STEM}.%(ext)s")},
        "noplaylist": True,
        "playlist_items": "1",
        "match_filter": match_filter_func("!is_live"),
        "max_filesize": max_bytes,
        "socket_timeout": float(spec["socket_timeout_s"]),
        "retries": 2,
        "fragment_retries": 2,
        "extractor_retries": 1,
        "proxy": "",  # direct: a proxy would resolve names where the guard cannot see
        "cachedir": False,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "logger": log,
        "progress_hooks": [hook],
        "overwrites": True,
    }
    if spec.get("cookiefile"):
        opts["cookiefile"] = spec["cookiefile"]
    return opts


def _classify(message: str) -> tuple[str, bool]:
    """(code, transient) for a yt-dlp error message."""
    m = message.lower()
    if any(s in m for s in ("timed out", "connection reset", "temporarily", "http error 5", "remote end closed")):
        return DOWNLOAD_UNAVAILABLE, True
    return DOWNLOAD_FAILED, False


def download(spec: dict[str, Any]) -> dict[str, Any]:
    from yt_dlp import YoutubeDL
    from yt_dlp.utils import DownloadError, YoutubeDLError

    log = _Log()
    try:
        with YoutubeDL(_options(spec, log)) as ydl:
            info = ydl.extract_info(spec["url"], download=True)
    except (YoutubeDLError, _TooLarge, OSError) as e:
        cause = getattr(e, "exc_info", None)
        if isinstance(e, _TooLarge) or (cause and isinstance(cause[1], _TooLarge)):
            return {"ok": False, "code": DOWNLOAD_TOO_LARGE, "message": str(cause[1] if cause else e)}
        if _refusals:
            return {"ok": False, "code": URL_REFUSED_CODE, "message": _refusals[0]}
        message = (log.errors[-1] if log.errors else str(e)).removeprefix("ERROR: ")
        if isinstance(e, YoutubeDLError) and not isinstance(e, DownloadError):
            # Raised past yt-dlp's own reporting, e.g. a redirect to file:// or
            # ftp:// (RequestError): the same URL will do it again.
            return {"ok": False, "code": DOWNLOAD_FAILED, "message": message[:500]}
        code, transient = _classify(message)
        return {"ok": False, "code": code, "message": message[:500], "transient": transient}
    if info is None:
        return {"ok": False, "code": DOWNLOAD_FAILED, "message": "nothing to download (a live stream?)"}
    files = sorted(Path(spec["out_dir"]).glob(f"{OUTPUT_STEM}.*"))
    files = [f for f in files if not f.name.endswith((".part", ".ytdl"))]
    if not files:
        if log.too_large:
            limit = limit_text(int(spec["max_bytes"]))
            return {"ok": False, "code": DOWNLOAD_TOO_LARGE, "message": f"the media is over the limit of {limit}"}
        return {"ok": False, "code": DOWNLOAD_FAILED, "message": "yt-dlp downloaded nothing"}
    return {
        "ok": True,
        "path": str(files[0]),
        "size": files[0].stat().st_size,
        "title": info.get("title"),
        "extractor": info.get("extractor_key") or info.get("extractor"),
        "duration": info.get("duration"),
    }


def main() -> None:
    """Always one outcome line: a child that dies without one looks like a
    crashed node to the parent, which retries the job as transient, five
    times over, for an error that repeats every time."""
    try:
        spec = json.loads(sys.stdin.read())
        install_guard(allow_private=bool(spec["allow_private"]))
        outcome = download(spec)
    except Exception as e:  # a bug of ours or yt-dlp's, for this URL: permanent
        outcome = {
            "ok": False,
            "code": DOWNLOAD_FAILED,
            "message": f"the download failed: {type(e).__name__}: {e}"[:500],
        }
    emit(outcome)


if __name__ == "__main__":
    main()
