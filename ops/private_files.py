"""Files and directories only this user may read: secrets on local disk.

`write_text` then `chmod` leaves the secret readable at the umask's mode
for a moment, and `mkdir` makes 0755 directories. These create with the
final mode, so there is no window; a file that already exists is narrowed
through its open descriptor before a byte of the new content is written.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def write_private(path: Path, content: str | bytes) -> None:
    """`content` into `path`, mode 0600 from the moment it exists."""
    data = content.encode() if isinstance(content, str) else content
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, FILE_MODE)  # an older file may have been made 0644
        f.write(data)


def private_dir(path: Path) -> Path:
    """`path` created 0700 (missing parents at the default mode); an
    existing one narrowed to 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        path.chmod(DIR_MODE)
    return path
