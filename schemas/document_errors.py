"""Why a document, web page or image job failed: one class per cause.

Each is a `JobFailed` (the same input fails the same way, so the message is
termed) with its own stable code, so a client can tell a locked PDF from a
broken one from a file the node refused to unpack.
"""

from __future__ import annotations

from schemas.errors import DECODE_FAILED, JobFailed

DOCUMENT_ENCRYPTED = "DOCUMENT_ENCRYPTED"
ARCHIVE_TOO_LARGE = "ARCHIVE_TOO_LARGE"
IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
DOCUMENT_TOO_LARGE = "DOCUMENT_TOO_LARGE"
UNSUPPORTED_DOCUMENT = "UNSUPPORTED_DOCUMENT"


class DocumentFailed(JobFailed):
    """A document, web page or image job that cannot succeed on this input."""

    code = DECODE_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(type(self).code, message)


class DecodeFailed(DocumentFailed):
    """The file is corrupt, truncated, or not what its name says."""

    code = DECODE_FAILED


class DocumentEncrypted(DocumentFailed):
    """The document needs a password; the node is given none."""

    code = DOCUMENT_ENCRYPTED


class ArchiveTooLarge(DocumentFailed):
    """A DOCX/PPTX/XLSX/EPUB zip that expands past the cap (a zip bomb, or
    just too big): refused before any library unpacks it."""

    code = ARCHIVE_TOO_LARGE


class ImageTooLarge(DocumentFailed):
    """An image that declares more pixels than the cap (a decompression bomb)."""

    code = IMAGE_TOO_LARGE


class DocumentTooLarge(DocumentFailed):
    """More pages or frames than the node converts in one job."""

    code = DOCUMENT_TOO_LARGE


class UnsupportedDocument(DocumentFailed):
    """Not a format this engine converts."""

    code = UNSUPPORTED_DOCUMENT
