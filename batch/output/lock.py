"""One run per output directory: an flock on DIR/.lock. The kernel releases it when its process dies,
however it dies, so a lock left by a killed run never blocks the next one.

A store (s3://..., az://...) has no lock of its own; a run on one holds this machine's flock for it
(store_lock_path), so that tonight's cron run cannot start on the store while last night's still goes
on here. Runs on other machines are not stopped by it."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time
from pathlib import Path

from batch.errors import DirLockedError, OutputError

LOCK = ".lock"
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
BUSY_PATIENCE = 0.25  # seconds


def _flags(extra: int) -> int:
    return extra | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


def acquire(root: Path) -> int:
    """Lock DIR for this process; returns the descriptor to close to release it."""
    path = root / LOCK
    return hold(path, f"another run is using {root} (it holds {path})")


def hold(path: Path, busy: str) -> int:
    """An exclusive flock on `path` (created), this process's pid written in it; DirLockedError(busy) if
    another process holds it. Returns the descriptor to close to release it."""
    try:
        fd = os.open(path, _flags(os.O_RDWR | os.O_CREAT), 0o644)
    except OSError as exc:
        raise OutputError(f"cannot open the lock file {path}: {exc.strerror or exc}") from exc
    # `status` and a starting run's probe hold a shared lock for an instant: a lock still busy after
    # BUSY_PATIENCE seconds is another run's.
    give_up = time.monotonic() + BUSY_PATIENCE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno in _BUSY and time.monotonic() < give_up:
                time.sleep(0.01)
                continue
            os.close(fd)
            if exc.errno in _BUSY:
                raise DirLockedError(busy) from None
            raise OutputError(f"cannot lock {path}: {exc.strerror or exc}") from exc
    try:  # the pid is a courtesy for humans (and `status`); the flock is the lock
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass
    return fd


def store_lock_path(identity: str) -> Path:
    """This machine's lock for the store named by `identity` (its protocol, bucket and prefix, and the
    endpoint or account it is reached at): in the user's cache folder, named by a digest."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    name = hashlib.sha256(identity.encode()).hexdigest()[:32]
    return Path(cache) / "maas-batch" / "store-locks" / f"{name}.lock"


def probe(root: Path) -> None:
    """Raise DirLockedError if a run holds DIR now. Creates nothing: used before a (possibly long)
    manifest check so that a second run gives up in a second, having written nothing."""
    try:
        fd = os.open(root / LOCK, _flags(os.O_RDONLY))
    except OSError:
        return  # no lock file (or no DIR): nobody holds it; acquire() will tell of other trouble
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _BUSY:
            raise DirLockedError(f"another run is using {root} (it holds {root / LOCK})") from None
    finally:
        os.close(fd)


def held_by(path: Path) -> int | None:
    """The pid of the process that holds the lock at `path` now (0: one whose pid cannot be read), or
    None when none does. Creates nothing."""
    try:
        fd = os.open(path, _flags(os.O_RDONLY))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in _BUSY:
            return None
        try:
            return int(os.pread(fd, 64, 0).split()[0])
        except (OSError, ValueError, IndexError):
            return 0
    finally:
        os.close(fd)
    return None
