"""Files under DIR, written whole or not at all and never through a symbolic link: atomic writes (a
temporary file, fsync, rename), real folders, and the repair of a journal's torn last line."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from batch.errors import OutputError

TMP_SUFFIX = ".tmp"
WRITE_SIZE = 1 << 20  # write_atomic_chunks gathers its pieces into writes of this size


def nofollow_flags(extra: int) -> int:
    return extra | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


def real_folder(path: Path) -> Path:
    """`path` as a real directory (made if missing): OutputError if it is a symbolic link, which could
    lead writes anywhere, or no directory at all."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        try:
            path.mkdir()
        except FileExistsError:
            return real_folder(path)
        except OSError as exc:
            raise OutputError(f"cannot create {path}: {reason(exc)}") from exc
        return path
    if stat.S_ISLNK(mode):
        raise OutputError(f"{path} is a symbolic link; refusing to write through it")
    if not stat.S_ISDIR(mode):
        raise OutputError(f"{path} is not a directory")
    return path


def cut_torn_tail(path: Path) -> int:
    """Cut a last line that a crash left without its newline. Returns the bytes removed. A symbolic
    link is refused (OutputError), never followed: its target could be any file of the user's."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return 0
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise OutputError(f"{path} is not a regular file (a symbolic link?); refusing to write through it")
    size = info.st_size
    if size == 0:
        return 0
    try:
        fd = os.open(path, nofollow_flags(os.O_RDWR))
    except OSError as exc:
        raise OutputError(f"cannot open {path}: {reason(exc)}") from exc
    with os.fdopen(fd, "rb+") as handle:
        end = size
        while end > 0:
            start = max(0, end - (1 << 16))
            handle.seek(start)
            block = handle.read(end - start)
            if end == size and block.endswith(b"\n"):
                return 0
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        handle.truncate(keep)
        return size - keep


def write_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write to a temporary file beside `path`, fsync, rename over `path`. Never leaves a partial file."""
    write_atomic_chunks(path, (data,), fsync=fsync)


def write_atomic_chunks(path: Path, chunks: Iterable[bytes], *, fsync: bool = True) -> None:
    """write_atomic of a file made piece by piece (a page of 50,000 cards is never whole in memory): the
    pieces are gathered into writes of about a megabyte."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        fd = os.open(temporary, nofollow_flags(os.O_WRONLY | os.O_CREAT | os.O_EXCL), 0o644)
        try:
            pending = bytearray()
            for chunk in chunks:
                pending += chunk
                if len(pending) >= WRITE_SIZE:
                    _write_all(fd, pending)
                    pending.clear()
            _write_all(fd, pending)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise OutputError(f"cannot write {path.name}: {reason(exc)}") from exc
    except BaseException:  # the pieces' maker failed (or a Ctrl-C): no half page is left beside the page
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or str(exc)
