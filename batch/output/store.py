"""The output directory: its lock, its journals, and crash-safe output files.

    DIR/
      results.jsonl   one line per finished task; also the checkpoint a resumed run reads
      usage.jsonl     the ledger: one line per billed answer
      images/         output images, <task id>.<ext> (or <task id>~<k>.<ext> when an answer has several)
      runs/           one attempt log per run (output.runlog), to account for requests a kill interrupted
      answers/        the raw body of each paid answer the tool could not use, <request id>.<ext>:
                      nothing paid for is lost, and the task's failed result line names its file
      .lock           flock'ed by the run that owns DIR

Why an append-only journal rather than SQLite: results.jsonl must exist anyway, as the file users and
pipelines read. Making that same file the checkpoint leaves one source of truth and nothing to reconcile
after a crash. A line is written whole, in one write(2), only after the files it names are renamed into
place, so a reader never sees a result whose files are missing. The only damage a crash can do is a torn
last line, which the next run cuts off before appending.

Order of a task's commit: files to `.<name>.<random>.tmp`, fsync, rename, fsync the folder; then the result
line. Usage is appended as soon as a billed answer arrives and is kept (carried in answers/.carried.jsonl,
or in answers/: output.runlog), before anything else. Journal lines reach the kernel at once (a killed
process loses none) and the disk within `sync_interval` (default 0.1 s: a power cut may lose the last tenth
of a second); with sync_interval 0 each line is fsync'd (grouped among concurrent writers) before the run
goes on.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import anyio

from batch import codec
from batch.errors import OutputError
from batch.output.files import (
    TMP_SUFFIX,
    cut_torn_tail,
    fsync_dir,
    nofollow_flags,
    real_folder,
    reason,
    write_atomic,
)
from batch.output.lock import LOCK, acquire
from batch.running.records import finished_entry, requested_entry

log = logging.getLogger("batch.output.store")

RESULTS = "results.jsonl"
USAGE = "usage.jsonl"
IMAGES = "images"
RUNS = "runs"
ANSWERS = "answers"
THUMBS = "thumbs"  # the gallery's thumbnails
# result lines set aside as their tasks were sent again: failures (--retry-failed), lines of tasks whose
# request changed (--rerun-changed)
RETRIED = "results.retried.jsonl"


def _journal_encoder() -> Callable[[Any], str]:
    """The text of a journal's line: json.dumps's, with non-ASCII kept, `str` of what JSON cannot
    hold, and NaN and the infinities refused (ValueError): a server's usage of 1e999 was written as
    `Infinity`, which other readers of the journals (JSON.parse, SQLite's json_extract) refuse.

    JSONEncoder.encode makes json's C encoder anew for each line (with a dict to find cycles in, and
    a closure), some 9,000 instructions of a result line's 68,000: it is made once here, as encode
    makes it, without the cycle check (a line is made of parsed JSON and the tool's own values; a
    cycle would end in RecursionError, as it did through encode_line's _finite). Where Python has no C
    encoder, JSONEncoder's own encode."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has it
        return json.JSONEncoder(ensure_ascii=False, default=str, allow_nan=False).encode
    # its arguments as JSONEncoder.iterencode gives them: markers (None: no cycle check), default,
    # the string encoder (ensure_ascii=False), indent, the separators, sort_keys, skipkeys, allow_nan
    encoder = make(None, str, json.encoder.encode_basestring, None, ": ", ", ", False, False, False)
    return lambda record: "".join(encoder(record, 0))


_encode = _journal_encoder()
_SECRETS: list[bytes] = []  # this process's API keys: no journal line is written with one in it
REDACTED = b"[redacted]"
SECRET_MIN = 8  # a "key" shorter than this is no secret (tests, a local proxy): it is not looked for


def thumbnail_name(image_name: str) -> str:
    """A picture's thumbnail in thumbs/ (the page's, and a picture set aside takes its own along)."""
    return f"{image_name}.webp"


def never_write(secret: str) -> None:
    """Keep `secret` (the API key) out of every journal line this process writes, whatever put it in a
    record: an answer that spells it in JSON escapes, or splits it across a stream's events, reaches the
    line as the key itself. The key percent-encoded whole (`%73%6B%2D...`, as a server may echo it in an
    x-request-id or an id, which go into results.jsonl, usage.jsonl and the page) is kept out too."""
    data = secret.encode()
    if len(data) < SECRET_MIN:
        return
    encoded = ["".join(f"%{byte:{case}}" for byte in data).encode() for case in ("02X", "02x")]
    for form in (data, *encoded):
        if form not in _SECRETS:
            _SECRETS.append(form)


_JSON_ESCAPE = re.compile(rb"\\u([0-9a-fA-F]{4})|\\/")


def _unescaped(match: re.Match[bytes]) -> bytes:
    code = match.group(1)
    return b"/" if code is None else chr(int(code, 16)).encode("utf-8", "replace")


def without_secrets(data: bytes) -> bytes:
    """A body to keep as it came (answers/), without the key: written out, or spelt in JSON escapes
    (`\\u0073k-...`), which any JSON reader of the file turns back into the key. A body that spells it
    so is kept with its escapes undone and the key redacted."""
    for secret in _SECRETS:
        data = data.replace(secret, REDACTED)
    if _SECRETS and b"\\" in data:
        plain = _JSON_ESCAPE.sub(_unescaped, data)
        if any(secret in plain for secret in _SECRETS):
            for secret in _SECRETS:
                plain = plain.replace(secret, REDACTED)
            return plain
    return data


def encode_line(record: Mapping[str, Any]) -> bytes:
    """A journal's line, JSON in UTF-8: a lone surrogate that reached a record (a server's text cut in
    the middle of a UTF-16 pair) is written as "?", never fails the line; a number that is no JSON
    number (NaN, an infinity: from a server's `1e999`) is written as its text ("inf")."""
    return _encoded(record)[0]


def _encoded(record: Mapping[str, Any]) -> tuple[bytes, bool]:
    """encode_line's bytes, and whether json wrote them of `record` as it is: no text in place of a
    number, no "?" in place of a surrogate."""
    try:
        text = _encode(record) + "\n"
    except ValueError:  # the rare line with a non-finite float: found and said as text
        return (_encode(_finite(record)) + "\n").encode("utf-8", "replace"), False
    try:
        return text.encode(), True
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace"), False


_JSON_SCALARS = frozenset((str, int, float, bool, type(None)))


def reads_back(line: Mapping[str, Any], depth: int = 1) -> bool:
    """Whether `line`, its bytes written by json as it is (Journal's tap is given it only then: no NaN
    or infinity, no lone surrogate in it), is read back from them (codec.loads) as itself: equal, of the
    same types, its keys in the same order. True only where it holds nothing but dicts with string keys,
    lists, strings, ints, floats, bools and None (exact types: no subclass), nested at most MAX_DEPTH deep
    (parse_record's limit). Not for a tuple (read back as a list), a key 1 (read back as "1") or a date
    (its text): False, and the reader reads the bytes. (A line's card, output.cards, is made from the
    line it was written from where this holds: tests/output/test_gallery_cards.py compares the two.)"""
    if type(line) is not dict or depth > MAX_DEPTH:
        return False
    for key, value in line.items():
        if type(key) is not str:
            return False
        kind = type(value)
        if kind is dict:
            if not reads_back(value, depth + 1):
                return False
        elif kind is list:
            if not _list_reads_back(value, depth + 1):
                return False
        elif kind not in _JSON_SCALARS:
            return False
    return True


def _list_reads_back(items: list[Any], depth: int) -> bool:
    """reads_back of a list inside a line."""
    if depth > MAX_DEPTH:
        return False
    for value in items:
        kind = type(value)
        if kind is dict:
            if not reads_back(value, depth + 1):
                return False
        elif kind is list:
            if not _list_reads_back(value, depth + 1):
                return False
        elif kind not in _JSON_SCALARS:
            return False
    return True


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinity turned into its text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


class Journal:
    """An append-only JSONL file. `write` puts a whole line in the kernel (it survives a killed process);
    `sync` makes everything written so far durable, sharing one fsync among all who wait for it."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._fd = -1
        self._size = 0
        self._written = 0  # lines written
        self._synced = 0  # lines known durable
        self._syncing: anyio.Event | None = None
        # told of each line once it is written: its offset in the file, its bytes, and the record json
        # wrote them of as it is (None: written as bytes, a number or a surrogate written otherwise, or
        # a key taken out of them) (the page's output.cards.Cards); one that raises is told no more
        self.tap: Callable[[int, bytes, Mapping[str, Any] | None], None] | None = None

    @property
    def size(self) -> int:
        """The file's size: where the next line goes."""
        return self._size

    def open(self) -> None:
        cut_torn_tail(self.path)
        try:
            self._fd = os.open(self.path, nofollow_flags(os.O_WRONLY | os.O_APPEND | os.O_CREAT), 0o644)
        except OSError as exc:
            raise OutputError(f"cannot open {self.path}: {reason(exc)}") from exc
        self._size = os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one line. On failure (a full disk) the file is cut back so no partial line remains."""
        data, exact = _encoded(record)
        self._write(data, record if exact else None)

    def write_bytes(self, data: bytes) -> None:
        """Append whole lines already encoded (one write(2), however many lines)."""
        self._write(data, None)

    def _write(self, data: bytes, record: Mapping[str, Any] | None) -> None:
        """Append `data`, json's bytes of `record` as it is (None: not known)."""
        line = data
        for secret in _SECRETS:
            if secret in line:
                line = line.replace(secret, REDACTED)
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, "short write")
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise OutputError(f"cannot write {self.path.name}: {reason(exc)}") from exc
        self._size += len(line)
        self._written += 1
        if self.tap is not None:
            try:
                # the record the line was encoded from, unless a key was taken out of the bytes
                self.tap(self._size - len(line), line, record if line is data else None)
            except Exception as exc:  # the line is written: a view of it must not fail the run
                log.warning("%s: a view of its lines failed (%s): it is told no more", self.path.name, exc)
                self.tap = None

    def empty(self) -> None:
        """Cut the file to nothing (ftruncate): the next line is its first. OutputError if it cannot be."""
        try:
            os.ftruncate(self._fd, 0)
        except OSError as exc:
            raise OutputError(f"cannot empty {self.path.name}: {reason(exc)}") from exc
        self._size = 0

    def write_durably(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Append lines and make them durable before returning (blocking: for a run's start)."""
        self.write_bytes(b"".join(map(encode_line, records)))
        if self.fsync:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise OutputError(f"cannot sync {self.path.name}: {reason(exc)}") from exc
            self._synced = self._written

    async def sync(self) -> None:
        """Wait until every line written so far is on disk (group commit: one fsync for many writers)."""
        target = self._written
        while self.fsync and self._synced < target:
            if self._syncing is not None:
                await self._syncing.wait()
                continue
            self._syncing = done = anyio.Event()
            upto = self._written
            try:
                await anyio.to_thread.run_sync(os.fsync, self._fd)
                self._synced = upto
            except OSError as exc:
                raise OutputError(f"cannot sync {self.path.name}: {reason(exc)}") from exc
            finally:
                self._syncing = None
                done.set()

    @property
    def dirty(self) -> bool:
        return self.fsync and self._written > self._synced


def whole_lines(path: Path) -> Iterator[bytes]:
    """The complete lines of a file, none if it does not exist; a torn last line is not one. A file that
    cannot be read (a disk failing under it, a folder in its place) raises OutputError naming it: every
    reader of DIR's journals (a run's start, the reports) then ends with 74 and a message, not a
    traceback."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputError(f"cannot read {path}: {reason(exc)}") from exc
    with handle:
        try:  # around the reads: the yield receives nothing but GeneratorExit
            for raw in handle:
                if not raw.endswith(b"\n"):
                    return
                yield raw
        except OSError as exc:
            raise OutputError(f"cannot read {path}: {reason(exc)}") from exc


MAX_DEPTH = 200  # levels of nesting of a line read back (and of an answer kept): the tool writes a handful;
# JSON deep enough to break a writer's recursion (json's, at some 990; orjson's limit is 254) would crash
# the page, the exports and a run's end


def parse_record(raw: bytes) -> dict[str, Any] | None:
    """The record of one JSONL line, None if it is not a JSON object (or one nested deeper than MAX_DEPTH,
    which no line of the tool's is: read as a damaged line)."""
    try:
        record = codec.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    if too_deep(record, raw):
        return None
    return record


def too_deep(value: Any, raw: bytes | None = None) -> bool:
    """Whether `value` is nested deeper than MAX_DEPTH. `raw`, the bytes it was parsed from, spares the
    walk when they hold fewer brackets than that (a journal's short line); an answer of megabytes is not
    scanned: its few containers are walked, stopping at the first too deep."""
    if raw is not None and raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a JSONL file, skipping a torn or unreadable line."""
    for raw in whole_lines(path):
        record = parse_record(raw)
        if record is not None:
            yield record


def read_lines_with_offsets(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(byte offset, record) of each line of a JSONL file, as `read_lines` reads them."""
    for offset, _, record in read_raw_lines_with_offsets(path):
        yield offset, record


def read_raw_lines_with_offsets(
    path: Path, upto: int | None = None
) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """(byte offset, the line's bytes, record) of each line of a JSONL file, as `read_lines` reads them;
    `upto`: only the lines that start before this offset."""
    offset = 0
    for raw in whole_lines(path):
        if upto is not None and offset >= upto:
            return
        record = parse_record(raw)
        if record is not None:
            yield offset, raw, record
        offset += len(raw)


def read_line_at(handle: BinaryIO, offset: int) -> dict[str, Any] | None:
    """The record of the line at `offset` of an open JSONL file (see read_lines_with_offsets)."""
    try:
        handle.seek(offset)
        raw = handle.readline()
    except OSError as exc:
        raise OutputError(f"cannot read {getattr(handle, 'name', 'a journal')}: {reason(exc)}") from exc
    return parse_record(raw) if raw.endswith(b"\n") else None


def finished_results(path: Path) -> Iterator[tuple[str, bool]]:
    """(id, failed) of each line of results.jsonl, fast (records.finished_entry). A torn last line is not
    a result."""
    for raw in whole_lines(path):
        entry = finished_entry(raw)
        if entry is not None:
            yield entry


def requested_results(path: Path) -> Iterator[tuple[str, str]]:
    """(id, request_sha256) of each line of results.jsonl that names its request (records.requested_entry),
    fast. A torn last line is not a result."""
    for raw in whole_lines(path):
        entry = requested_entry(raw)
        if entry is not None:
            yield entry


def retried_ids(root: Path) -> set[str]:
    """The ids of the tasks whose lines --retry-failed or --rerun-changed moved to results.retried.jsonl."""
    return {str(record["id"]) for record in read_lines(root / RETRIED) if isinstance(record.get("id"), str)}


OWN_FOLDERS = (IMAGES, ANSWERS, THUMBS, f"{THUMBS}/inputs", RUNS)  # what a run sweeps, or reads as its own


def nested(root: Path) -> str | None:
    """Why `root` cannot be a DIR, or None: it lies in another DIR's own folders, or another DIR lies in
    its own. A run sweeps the temporary files of its DIR's folders as it starts: it would remove those of
    the other DIR's run, between a file's write and its rename; and it reads runs/ as its run logs."""
    real = root.resolve()
    for parent in real.parents:
        if (parent / LOCK).is_file():
            inside = real.relative_to(parent).as_posix()
            folder = next((f for f in OWN_FOLDERS if inside == f or inside.startswith(f"{f}/")), None)
            if folder is not None:
                return (
                    f"{root} is inside the output directory {parent} (its {folder}/ folder), whose runs "
                    f"it would disturb: choose a directory outside {parent}'s own folders"
                )
    for folder in OWN_FOLDERS:
        if (real / folder / LOCK).is_file():
            return (
                f"{root / folder} is an output directory of its own, whose runs a run into {root} would "
                "disturb: move it out"
            )
    return None


@dataclass(frozen=True)
class OutputFile:
    name: str  # file name inside images/
    data: bytes


class OutputDir:
    """DIR, owned by this process while open: locked, repaired, and ready for results."""

    def __init__(self, root: Path, *, fsync: bool = True, sync_interval: float = 0.1) -> None:
        self.root = root
        self.fsync = fsync
        self.sync_interval = sync_interval
        self.images = root / IMAGES
        self.runs = root / RUNS
        self.results = Journal(root / RESULTS, fsync=fsync)
        self.usage = Journal(root / USAGE, fsync=fsync)
        self._lock_fd = -1

    def open(self) -> None:
        """Lock DIR (DirLockedError if another run holds it), then repair and tidy it."""
        refused = nested(self.root)
        if refused is not None:
            raise OutputError(refused)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {self.root}: {reason(exc)}") from exc
        if not self.root.is_dir():
            raise OutputError(f"{self.root} is not a directory")
        self._lock_fd = acquire(self.root)
        try:
            for folder in (self.images, self.runs):
                self._check_not_symlink(folder)
                folder.mkdir(exist_ok=True)
            # made later (the first thumbnail, the first answer kept), and swept of temporary files now: a
            # link there would have the sweep remove files outside DIR
            for folder in (self.root / THUMBS, self.root / THUMBS / "inputs", self.root / ANSWERS):
                self._check_not_symlink(folder)
            self.sweep_temporary_files()
            self.results.open()
            self.usage.open()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.results.close()
        self.usage.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def _check_not_symlink(self, path: Path) -> None:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return
        if stat.S_ISLNK(mode):
            raise OutputError(f"{path} is a symbolic link; refusing to write through it")

    def sweep_temporary_files(self) -> int:
        """Remove the temporary files a killed run left. Returns how many."""
        removed = 0
        thumbs = self.root / THUMBS
        for folder in (self.root, self.images, thumbs, thumbs / "inputs", self.root / ANSWERS):
            if folder.is_symlink():  # never swept through a link (open() refuses one)
                continue
            for path in folder.glob(f".*{TMP_SUFFIX}"):
                try:
                    path.unlink()
                    removed += 1
                except OSError:
                    pass
        return removed

    async def append(self, journal: Journal, record: Mapping[str, Any] | bytes) -> None:
        """Append a line (a record, or one encode_line made already) to results.jsonl or usage.jsonl. It is
        in the kernel at once (a killed process loses nothing); on disk at once with sync_interval 0, else
        within sync_interval (run_syncer)."""
        if isinstance(record, bytes):
            journal.write_bytes(record)
        else:
            journal.write(record)
        if self.sync_interval <= 0:
            await journal.sync()

    async def run_syncer(self) -> None:
        """fsync the journals every sync_interval while they have unsynced lines; run it beside the work
        and cancel it at the end (then call sync())."""
        if not self.fsync or self.sync_interval <= 0:
            return
        while True:
            await anyio.sleep(self.sync_interval)
            await self.sync()

    async def sync(self) -> None:
        """Make every line written so far durable."""
        for journal in (self.usage, self.results):
            if journal.dirty:
                await journal.sync()

    def set_aside(self, pick: Callable[[Mapping[str, Any]], bool], *, keep_files: bool = False) -> list[str]:
        """Make the tasks of the result lines `pick` picks pending again (--retry-failed: failed lines;
        --rerun-changed: the lines of tasks whose request changed): those lines leave results.jsonl
        (rewritten atomically) for results.retried.jsonl, kept for the record. Returns their ids. A crash
        part-way leaves results.jsonl as it was (a line may then be kept twice in the record).
        `keep_files`: each picture such a line names in images/ gets a name of its own first, which the
        line set aside names: the task's new answer is saved under the old names (a DIR's, not a store's,
        where no file is written over). Once results.jsonl no longer names them, the old names go: a task
        whose new try fails leaves no picture of its old request under its name."""
        path = self.results.path
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
        forgotten: list[str] = []
        tag = secrets.token_hex(3)
        moved: list[Path] = []  # the old names of pictures kept under names of their own
        self.results.close()
        try:
            retried = os.open(
                self.root / RETRIED, nofollow_flags(os.O_WRONLY | os.O_CREAT | os.O_APPEND), 0o644
            )
            with (
                os.fdopen(retried, "ab") as old,  # first: closed even if what follows cannot open
                path.open("rb") as source,
                temporary.open("wb") as kept,
            ):
                for raw in source:
                    record = parse_record(raw)
                    if record is not None and pick(record):
                        files = record.get("files")
                        if keep_files and isinstance(files, list) and files:
                            kept_names = [self._kept(name, tag) for name in files]
                            pairs = zip(files, kept_names, strict=True)
                            moved += [self.root / was for was, now in pairs if now != was]
                            raw = encode_line({**record, "files": kept_names})
                        old.write(raw)
                        forgotten.append(str(record.get("id")))
                    else:
                        kept.write(raw)
                for handle in (old, kept):
                    handle.flush()
                    if self.fsync:
                        os.fsync(handle.fileno())
            if forgotten:
                if self.fsync and keep_files:
                    fsync_dir(self.images)
                os.replace(temporary, path)
                if self.fsync:
                    fsync_dir(self.root)
                for old_name in moved:  # named by no line now (a crash before leaves them: harmless)
                    with contextlib.suppress(OSError):
                        old_name.unlink()
            else:
                temporary.unlink()
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise OutputError(f"cannot rewrite {path.name}: {reason(exc)}") from exc
        finally:
            self.results.open()
        return forgotten

    def _kept(self, name: Any, tag: str) -> Any:
        """A picture of a line set aside, under a name of its own (`fox.png`: `fox.before-1a2b3c.png`, a
        hard link, or a copy), its thumbnail moved along (the old name's would show the new picture); the
        name as it was where it is no file of images/ (gone, or named by hand)."""
        if not isinstance(name, str) or not name.startswith(f"{IMAGES}/") or ".." in name.split("/"):
            return name
        relative = Path(name)
        kept = relative.with_name(f"{relative.stem}.before-{tag}{relative.suffix}")
        source, target = self.root / relative, self.root / kept
        try:
            try:
                os.link(source, target, follow_symlinks=False)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise
                shutil.copy2(source, target, follow_symlinks=False)  # a file system without hard links
        except OSError:
            return name
        with contextlib.suppress(OSError):
            thumbs = self.root / THUMBS
            os.replace(thumbs / thumbnail_name(relative.name), thumbs / thumbnail_name(kept.name))
        return kept.as_posix()

    def save_answer(self, name: str, data: bytes) -> str:
        """Keep the raw body of a paid answer that could not be used, atomically and durably, in
        answers/. Blocking: call it from a worker thread. Returns its path relative to DIR."""
        folder = real_folder(self.root / ANSWERS)
        write_atomic(folder / name, without_secrets(data), fsync=self.fsync)
        if self.fsync:
            fsync_dir(folder)
        return f"{ANSWERS}/{name}"

    def save(self, files: list[OutputFile]) -> list[str]:
        """Write files into images/, each atomically and durably. Blocking: call it from a worker thread.
        Returns their paths relative to DIR."""
        paths = []
        for item in files:
            write_atomic(self.images / item.name, item.data, fsync=self.fsync)
            paths.append(f"{IMAGES}/{item.name}")
        if self.fsync and files:
            fsync_dir(self.images)
        return paths
