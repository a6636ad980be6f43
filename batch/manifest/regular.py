"""Opening the files a manifest names (the manifest, prompt files, CSV and JSONL rows, input images):
regular files only. A FIFO would block a read forever and /dev/zero would never end, so both are refused
before anything is read. Light on purpose: the manifest reader imports it before the HTTP stack."""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path


def why_not_regular(path: Path) -> str | None:
    """Why `path` cannot be read as a manifest input (missing, or a FIFO, a device, a folder), or None.
    A FIFO would block a read forever, /dev/zero would never end: they are refused before any read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except (OSError, ValueError) as exc:
        return f"cannot be read: {getattr(exc, 'strerror', None) or exc}"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a folder, a FIFO or a device?)"
    return None


def open_regular(path: Path) -> io.BufferedReader:
    """`path` opened for reading, checked to be a regular file on the opened descriptor itself (so that a
    file swapped for a FIFO between a check and the open cannot block). Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "is not a regular file (a folder, a FIFO or a device?)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")
