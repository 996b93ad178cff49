"""A real HTTP server on 127.0.0.1 serving the speech fixtures, for URL jobs.

yt-dlp's generic extractor takes direct media links, so these are real
downloads. The server records each request's path and Cookie header, and has
a few misbehaving routes: redirects to a cloud metadata address and to
file:// and ftp://, a body
without Content-Length, and one that drips bytes forever.
"""

from __future__ import annotations

import functools
import http.server
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

METADATA_URL = "http://169.254.169.254/latest/meta-data/"
REDIRECTS = {  # path -> Location: where a hostile page sends the downloader
    "/to-metadata": METADATA_URL,
    "/to-file": "file:///etc/passwd",
    "/to-ftp": "ftp://127.0.0.1:1/a.wav",
}


@dataclass
class Seen:
    path: str
    cookie: str | None


@dataclass
class MediaServer:
    root: Path
    requests: list[Seen] = field(default_factory=list)

    def start(self) -> MediaServer:
        handler = functools.partial(_Handler, self, directory=str(self.root))
        self._srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._srv.daemon_threads = True
        threading.Thread(target=self._srv.serve_forever, daemon=True).start()
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._srv.server_address[1]}/{path.lstrip('/')}"

    def cookies_for(self, path: str) -> list[str | None]:
        return [r.cookie for r in self.requests if r.path == "/" + path.lstrip("/")]

    def stop(self) -> None:
        self._srv.shutdown()
        self._srv.server_close()


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, server_state: MediaServer, *args, directory: str, **kwargs) -> None:
        self._state = server_state
        super().__init__(*args, directory=directory, **kwargs)

    def log_message(self, *args) -> None:
        pass

    def _record(self) -> None:
        self._state.requests.append(Seen(self.path, self.headers.get("Cookie")))

    def do_HEAD(self) -> None:
        self._record()
        super().do_HEAD()

    def do_GET(self) -> None:
        self._record()
        if self.path in REDIRECTS:
            self.send_response(302)
            self.send_header("Location", REDIRECTS[self.path])
            self.end_headers()
        elif self.path.startswith("/stream/"):
            self._stream(self.path.removeprefix("/stream/"))
        elif self.path == "/drip.wav":
            self._drip()
        else:
            super().do_GET()

    def _stream(self, name: str) -> None:
        """The file without a Content-Length: only the byte count can stop it."""
        data = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "audio/x-wav")
        self.send_header("Connection", "close")
        self.end_headers()
        for i in range(0, len(data), 64 * 1024):
            self.wfile.write(data[i : i + 64 * 1024])

    def _drip(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "audio/x-wav")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"\0" * 512)
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            return
