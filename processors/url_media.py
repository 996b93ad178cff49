"""URL jobs: download the media with yt-dlp, then transcribe it like an upload."""

from __future__ import annotations

import threading
from pathlib import Path

from processors import media_fetch
from processors.media_fetch import FetchConfig
from processors.transcription import TranscriptionProcessor
from schemas import names
from schemas.errors import INPUT_MISSING, JobFailed
from schemas.jobs import JobMessage
from schemas.names import Kind, Lane
from schemas.processing import Input, JobOutput, OwnerFile, ProgressFn, Staging
from schemas.results import Transcript
from schemas.url_guard import UrlRefused, check_syntax

COOKIES_FILENAME = "cookies.txt"
# The owner's yt-dlp cookie file (PUT /api/v1/auth/cookies), staged into the
# job's private work dir (mode 0700) and deleted with it; never logged.
STAGING = Staging(work_dir=True, owner_files=(OwnerFile(names.COOKIES_OBJECT, COOKIES_FILENAME),))


class UrlProcessor:
    kinds = frozenset({Kind.URL.value})
    lanes = frozenset(Lane)
    inputs = frozenset({Input.URL})

    def __init__(self, transcriber: TranscriptionProcessor, cfg: FetchConfig) -> None:
        self.transcriber = transcriber
        self.cfg = cfg
        self.device = transcriber.device

    @property
    def models(self) -> list[str]:
        return self.transcriber.models

    def staging(self, job: JobMessage) -> Staging:
        """A directory to download into, and the owner's cookies if any."""
        return STAGING

    def run(
        self,
        job: JobMessage,
        input_path: Path | None,
        work_dir: Path | None,
        progress: ProgressFn,
        cancelled: threading.Event,
    ) -> JobOutput:
        if not job.url or work_dir is None:
            raise JobFailed(INPUT_MISSING, "a url job needs a url (and a work dir to download into)")
        try:
            url = check_syntax(job.url)  # the gateway checked it too; a node trusts no message
        except UrlRefused as e:
            raise JobFailed(e.code, e.message) from None
        cookies = work_dir / COOKIES_FILENAME
        download_dir = work_dir / "download"
        download_dir.mkdir()
        fetched = media_fetch.fetch(
            url,
            download_dir,
            self.cfg,
            cookiefile=cookies if cookies.is_file() else None,
            on_progress=lambda _bytes: progress(0.0, 0.0),  # proof of life while downloading
            cancelled=cancelled,
        )
        output = self.transcriber.run(job, fetched.path, work_dir, progress, cancelled)
        if isinstance(output.result, Transcript):
            output.result.source_url = url
            output.result.title = fetched.title
        return output
