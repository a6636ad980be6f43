"""Outputs on an object store (`--out s3://bucket/prefix`, through fsspec and s3fs): a store has no
append and no rename, so a run works in a local staging directory (an ordinary DIR, with every guarantee of
store.OutputDir) and a Mirror replicates it as immutable objects, each written create-only:

    PREFIX/
      results/<run>-<seq>.jsonl   new result lines, in segments (a task's first line there is its result)
      usage/<run>-<seq>.jsonl     new ledger lines
      retried/<run>-<seq>.jsonl   result lines that run set aside to send their tasks again
      runs/<run>/<seq>.jsonl      the run's attempt log, in segments
      images/<name>, answers/<name>   the files result lines name, never overwritten
      .format                     the id scheme, written once
      index.html, thumbs/         the gallery (output.gallery.build_in_store)

Every minute and at its end, a run merges the segments each folder gained into one (Mirror.merge):
<run>-<first>-<last>.jsonl, runs/<run>/<first>-<last>.jsonl; readers skip the segments it holds.

What counts as saved is what the store holds. A task's files go up before its result line, so a line in the
store never names a missing file. A request's `sent` line goes up before the request leaves (RunLog.published:
one upload for all the requests that start meanwhile), so a worker that dies is accounted for. A file name
the store already holds (a dead worker saved it but not its line) is never overwritten: the bytes go under a
name of this run's and the uploaded line names that one.

`pull` assembles a DIR from the store: before a run, so the engine's resume skips what any earlier writer
saved; for the readers (status, report, export), as a read-only view. A request answered in a run that did
not save its task's result line in the store counts there as maybe billed: it may have been paid, and is
not saved.

A run with --retry-failed moves a failed line aside in its staging DIR (results.retried.jsonl), and the
mirror uploads it under retried/ before the run sends anything: for the tasks it names, the failed result
lines of the runs before that one no longer count (the run ids sort by their start: a timestamp). A run
with --rerun-changed moves aside the lines of tasks whose request changed, whatever their status: those
very lines (their bytes) no longer count.

fsspec is imported only when a URL is given; its errors are translated here, into OutputError.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import anyio

from batch.errors import OutputError, UsageError
from batch.output.files import reason
from batch.output.format import FORMAT
from batch.output.lock import held_by, hold, store_lock_path
from batch.output.runlog import CARRIED
from batch.output.store import (
    ANSWERS,
    IMAGES,
    RESULTS,
    RETRIED,
    RUNS,
    USAGE,
    encode_line,
    parse_record,
    whole_lines,
)
from batch.running.records import AttemptRecord, attempt_log_line, finished_entry

log = logging.getLogger("batch.output.remote")

# The stores supported, where create-only writes are known to hold: protocol -> (the fsspec package that
# speaks it, the extra that installs it). s3fs sends `If-None-Match: *` (tested against moto); adlfs asks the
# Blob service for `overwrite=False`, the same header (tested against Azurite, Microsoft's emulator).
BACKENDS = {
    "s3": ("s3fs", "cloud"),
    "s3a": ("s3fs", "cloud"),
    "az": ("adlfs", "azure"),
    "abfs": ("adlfs", "azure"),
}
# the environment that says where a store is reached, by package (Store.identity)
_REACHED_AT = {
    "s3fs": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "adlfs": ("AZURE_STORAGE_ACCOUNT_NAME",),
}
# journal in DIR -> its folder of segments in the store, in the order a push uploads them
SEGMENTS = {RETRIED: "retried", USAGE: "usage", RESULTS: "results"}
# seconds one call to the store may take: a store that takes a request and never answers (a PUT waits
# for `Expect: 100-continue` with no timeout of its own) stops the run (74) instead of holding it all night;
# a 64 MB answer still goes up over a link of 2 Mbit/s
STORE_TIMEOUT = 300.0
READERS = 16  # objects fetched at once when a DIR is assembled from the store
PUSH_INTERVAL = 1.0  # seconds between the mirror's uploads of new lines during a run
MERGE_INTERVAL = 60.0  # seconds between two merges of a run's new segments into one (and one at its end)
PULL_TRIES = 3  # a view assembled again when a merge removed a segment it had listed
# a segment's name in its folder: <run>-<offset>.jsonl (a journal's) or <run>/<offset>.jsonl (an attempt
# log's, in runs/); a merged one holds its run's segments <first> to <last>: <run>-<first>-<last>.jsonl,
# <run>/<first>-<last>.jsonl
_JOURNAL_SEGMENT = re.compile(r"^(?P<run>.+?)-(?P<first>\d{12})(?:-(?P<last>\d{12}))?\.jsonl$")
_LOG_SEGMENT = re.compile(r"^(?P<run>[^/]+)/(?P<first>\d{12})(?:-(?P<last>\d{12}))?\.jsonl$")
_GLOB = re.compile(r"[\[*?]")  # what fsspec's rm reads as a pattern (fsspec.utils.has_magic)
_UNSAVED = ("answered", "broken")  # outcomes of a request whose answer may have been paid


class Store:
    """An output location on an fsspec filesystem: list, read and create-only write, errors translated."""

    def __init__(self, url: str, fs: Any, root: str, timeout: float = STORE_TIMEOUT) -> None:
        self.url = url
        self._fs = fs
        self._root = root
        self.timeout = timeout

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """`fs.method(...)`, cut off after `timeout` seconds (FSTimeoutError) where the filesystem is
        asynchronous, as s3fs and adlfs are: their coroutine, on their loop, cancelled then."""
        fs = self._fs
        coroutine = getattr(fs, f"_{method}", None)
        if getattr(fs, "async_impl", False) and coroutine is not None:
            from fsspec.asyn import sync

            return sync(fs.loop, coroutine, *args, timeout=self.timeout, **kwargs)
        return getattr(fs, method)(*args, **kwargs)

    def _path(self, name: str) -> str:
        return f"{self._root}/{name}" if name else self._root

    def identity(self) -> str:
        """What names this store on this machine, for its lock here: the package that speaks it (s3:// and
        s3a:// are one), its bucket and prefix, and where it is reached (the endpoint, the account: one
        bucket name on two S3 servers is two stores). Never a secret: a connection string's key is left
        out."""
        protocol = self.url.partition("://")[0]
        package = BACKENDS.get(protocol, (protocol, ""))[0]
        where = [os.environ.get(name, "") for name in _REACHED_AT.get(package, ())]
        if package == "adlfs":  # the account and endpoint of a connection string, not its key
            parts = dict(
                part.partition("=")[::2]
                for part in os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "").split(";")
            )
            where += [parts.get("AccountName", ""), parts.get("BlobEndpoint", "")]
        return "\n".join([package, re.sub("/+", "/", self._root).strip("/"), *where])

    def child(self, name: str) -> Store:
        """The store of a sub-folder (a shard's)."""
        return Store(f"{self.url.rstrip('/')}/{name}", self._fs, self._path(name), self.timeout)

    def names(self, folder: str) -> list[str]:
        """The objects under `folder`, relative to it, sorted."""
        path = self._path(folder)
        try:
            self._fs.invalidate_cache(path)
            found = self._call("find", path)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._error("list", folder, exc) from exc
        return sorted(str(name)[len(path) + 1 :] for name in found if str(name).startswith(path + "/"))

    def folders(self, folder: str) -> list[str]:
        """The names of the sub-folders of `folder`, sorted: one listing by delimiter, not every object
        below (a batch's shards hold all its images)."""
        path = self._path(folder)
        try:
            self._fs.invalidate_cache(path)
            found = self._call("ls", path, detail=True)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._error("list", folder, exc) from exc
        return sorted(
            str(item["name"]).rstrip("/").rpartition("/")[2]
            for item in found
            if item.get("type") == "directory"
        )

    def last_written(self, folder: str) -> datetime | None:
        """When the newest object under `folder` was written, by the store's clock (None: no object, or
        a store that does not say). s3fs calls it LastModified, adlfs last_modified."""
        path = self._path(folder)
        try:
            self._fs.invalidate_cache(path)
            found = self._call("find", path, detail=True)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._error("list", folder, exc) from exc
        times = [
            at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # a naive time is the store's UTC
            for info in found.values()
            if isinstance(at := info.get("LastModified", info.get("last_modified")), datetime)
        ]
        return max(times, default=None)

    def read(self, name: str) -> bytes | None:
        """The object's bytes, None if there is none."""
        try:
            return bytes(self._call("cat_file", self._path(name)))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._error("read", name, exc) from exc

    def read_all(self, folder: str) -> Iterator[tuple[str, bytes]]:
        """(name, bytes) of each object under `folder`, in the order of their names, fetched
        READERS at a time: a resume reads every segment a batch's runs left. A segment a merged one holds
        is skipped (see Mirror.merge); one gone since the listing (a merge removed it) raises
        StoreChanged."""
        names = unmerged(self.names(folder))

        def fetch(name: str) -> bytes:
            data = self.read(f"{folder}/{name}")
            if data is None:
                raise StoreChanged(f"{self.url.rstrip('/')}/{folder}/{name} was removed while it was read")
            return data

        with ThreadPoolExecutor(READERS) as pool:  # a window at a time: never every segment in memory
            for start in range(0, len(names), 4 * READERS):
                window = names[start : start + 4 * READERS]
                yield from zip(window, pool.map(fetch, window), strict=True)

    def remove(self, names: list[str]) -> None:
        """Delete these objects (one request per thousand on S3); one already gone is no error. fsspec's
        rm reads a path with a glob character ([, *, ?) as a pattern: under a prefix such as night[1] it
        deleted nothing, under night* the same names under other prefixes too. Such paths go one at a time,
        each as it is (READERS at once)."""
        if not names:
            return
        paths = [self._path(name) for name in names]
        try:
            if any(_GLOB.search(path) for path in paths):
                with ThreadPoolExecutor(READERS) as pool:
                    for _ in pool.map(self._remove_one, paths):
                        pass
            else:
                self._call("rm", paths)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._error("remove", names[0], exc) from exc

    def _remove_one(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call("rm_file", path)

    def create(self, name: str, data: bytes) -> bool:
        """Write a new object; False (and nothing written) if one of that name exists."""
        try:
            self._call("pipe_file", self._path(name), data, mode="create")
        except FileExistsError:
            return False
        except Exception as exc:
            raise self._error("write", name, exc) from exc
        return True

    def replace(self, name: str, source: Path) -> None:
        """Write the local file `source` as `name`, replacing any object of that name: for what is made
        again from the store's own objects (the gallery's page), never for what a run saved."""
        try:
            self._call("put_file", str(source), self._path(name))
        except Exception as exc:
            raise self._error("write", name, exc) from exc

    def _error(self, verb: str, name: str, exc: Exception) -> OutputError:
        where = f"{self.url.rstrip('/')}/{name}" if name else self.url
        if isinstance(exc, TimeoutError) and not str(exc):  # fsspec's FSTimeoutError says nothing
            return OutputError(f"cannot {verb} {where}: the store did not answer within {self.timeout:g} s")
        return OutputError(f"cannot {verb} {where}: {type(exc).__name__}: {_without_secrets(str(exc))}")


# a store's credentials as its errors could quote them: a SAS token's signature in a URL, an account key
# or a signature in a connection string or a header
_SECRETS = re.compile(
    r"(?i)\b(sig|signature|accountkey|sharedaccesssignature|x-amz-security-token)=" r"[^&;\s'\"]+"
)


def _without_secrets(text: str) -> str:
    return _SECRETS.sub(lambda found: f"{found[1]}=(withheld)", text)


class StoreChanged(OutputError):
    """A segment listed a moment ago is gone: a run merged it into one object meanwhile."""


def unmerged(names: list[str]) -> list[str]:
    """`names` (sorted) without the segments a merged segment of their run holds."""
    found = [(name, _parse(name)) for name in names]
    merged: dict[str, list[tuple[int, int]]] = {}
    for _, segment in found:
        if segment is not None and segment[2] is not None:
            merged.setdefault(segment[0], []).append((segment[1], segment[2]))
    return [
        name
        for name, segment in found
        if segment is None
        or segment[2] is not None
        or not any(first <= segment[1] <= last for first, last in merged.get(segment[0], ()))
    ]


def _parse(name: str) -> tuple[str, int, int | None] | None:
    """(run, first, last) of a segment's name: last is None but for a merged one."""
    match = (_LOG_SEGMENT if "/" in name else _JOURNAL_SEGMENT).match(name)
    if match is None:
        return None
    return match["run"], int(match["first"]), None if match["last"] is None else int(match["last"])


def _segment_run(name: str) -> str:
    """The run of a journal's segment (`<run>-<offset>.jsonl`, or a merged `<run>-<first>-<last>.jsonl`)."""
    segment = _parse(name)
    return segment[0] if segment is not None else name.rpartition("-")[0]


def open_store(url: str) -> Store:
    """The store at `url`; a usage error (exit 64) for a protocol not supported, a missing extra or an
    account not named. Credentials and the endpoint are the fsspec package's own: s3fs's (AWS_*
    environment, ~/.aws; AWS_ENDPOINT_URL), adlfs's (AZURE_STORAGE_CONNECTION_STRING, or
    AZURE_STORAGE_ACCOUNT_NAME with a key, a SAS token or an identity)."""
    protocol, _, rest = url.partition("://")
    backend = BACKENDS.get(protocol)
    if backend is None:
        raise UsageError(
            f"{url}: outputs go to a local directory, to s3://bucket/prefix or to az://container/prefix "
            f"({protocol}:// is not supported)"
        )
    package, extra = backend
    root = rest.strip("/")
    if not root:
        raise UsageError(f"{url}: name a bucket or container ({protocol}://bucket/prefix)")
    try:
        import fsspec

        fs = fsspec.filesystem(protocol)
    except ImportError as exc:
        raise UsageError(
            f"--out {url} needs fsspec and {package}: pip install 'maas-batch[{extra}]'"
        ) from exc
    except ValueError as exc:  # adlfs, with no account named
        raise UsageError(
            f"{url}: {exc} (set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with "
            "AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN or an identity)"
        ) from exc
    return Store(url, fs, root)


def _whole_lines(data: bytes) -> Iterator[bytes]:
    for raw in data.splitlines(keepends=True):
        if raw.endswith(b"\n"):
            yield raw


def _segments(store: Store, folder: str) -> Iterator[bytes]:
    """The complete lines of a folder's segments, in the order of their names."""
    for _, data in store.read_all(folder):
        yield from _whole_lines(data)


@contextlib.contextmanager
def view(url: str) -> Iterator[Path]:
    """A temporary, read-only DIR assembled from the store at `url` (no images), for the readers and
    `submit --resume`; removed afterwards."""
    store = open_store(url)
    try:
        holder = tempfile.TemporaryDirectory(prefix="maas-batch-view-")
    except OSError as exc:
        raise OutputError(f"cannot make a temporary folder for {url}: {reason(exc)}") from exc
    with holder as folder:
        root = Path(folder) / "view"
        pull(store, root)
        yield root


@contextlib.contextmanager
def held_here(store: Store) -> Iterator[None]:
    """This machine's lock on `store` for a run (output.lock.store_lock_path): DirLockedError (exit 75)
    while another run here holds it. A lock that cannot be made (no writable cache folder) is warned of,
    and the run goes on without it, as runs on a store did before there was one."""
    path = store_lock_path(store.identity())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = hold(path, f"another run on this machine is using {store.url} (it holds {path})")
    except (OSError, OutputError) as exc:
        log.warning(
            "cannot lock %s on this machine (%s): a second run on it from here would not be stopped",
            store.url,
            exc if isinstance(exc, OutputError) else reason(exc),
        )
        yield
        return
    try:
        yield
    finally:
        os.close(fd)


def holder_here(store: Store) -> int | None:
    """The pid of the run on this machine that holds `store` now (held_here; 0 when its pid cannot be
    read), or None: none here (one on another machine cannot be told)."""
    return held_by(store_lock_path(store.identity()))


@contextlib.contextmanager
def staging(store: Store, folder: Path | None = None, *, prefix: str = "maas-batch-stage-") -> Iterator[Path]:
    """The local DIR a run on the store works in: `folder` (new or empty) or a temporary one, first
    assembled from the store. A temporary one is removed at the end unless it may hold answers the store
    lacks: its run began mirroring it (from then on it may send) and its last push left something behind
    (see mark_started, mark_complete), whatever ended it (the store or the disk failed, the run crashed); it
    is then kept, and its path logged. A dry run, or a run refused before its mirror started, sent nothing:
    its folder goes."""
    temporary = folder is None
    try:
        root = Path(tempfile.mkdtemp(prefix=prefix)) if folder is None else folder
    except OSError as exc:
        raise OutputError(f"cannot make a staging folder for {store.url}: {reason(exc)}") from exc
    try:
        pull(store, root)
        yield root
    finally:
        if temporary and staging_unmirrored(root):
            log.warning(
                "the staging folder %s of %s is kept: it may hold answers the store lacks; the next run "
                "with --stage %s uploads them before it sends anything",
                root,
                store.url,
                root,
            )
        elif temporary:
            shutil.rmtree(root, ignore_errors=True)


def pull(store: Store, root: Path) -> None:
    """Assemble DIR at `root` (new or empty) from the store: results.jsonl (a task's first line only, of
    the runs since the last that retried it), results.retried.jsonl, usage.jsonl, runs/<run>.jsonl,
    .format; a cluster's plan and its shards the same way. No images. Assembled again from the start if
    a run merged segments meanwhile (StoreChanged), up to PULL_TRIES times."""
    for attempt in range(1, PULL_TRIES + 1):
        try:
            _pull(store, root)
            return
        except OSError as exc:  # the local disk (a full or read-only TMPDIR): exit 74, not a traceback
            raise OutputError(f"cannot assemble {root} from {store.url}: {reason(exc)}") from exc
        except StoreChanged:
            if attempt == PULL_TRIES:
                raise
            log.info("%s changed while it was read (a run merged its segments): reading it again", store.url)
            empty(root)


def empty(root: Path) -> None:
    """Remove what `root` holds; the folder itself stays, with its mode (mkdtemp's 0700). But for the
    paid answers a killed run left in answers/ for the next start to finish their tasks from
    (runlog.recover), where a resume would buy them again: local state, never in the store. They stay,
    and so does answers/, their folder: those it carried (answers/.carried.jsonl) and each answer kept
    whole there (one of image links, one over 64 KiB: runlog.RunLog.keeping) that no result line names;
    one a line names went up to the store with that line. The list of answers to finish goes: the start
    lists them again from the killed runs' logs, which never end in the store."""
    try:
        answers = root / ANSWERS
        if answers.is_dir() and not answers.is_symlink():  # first: the result lines tell what goes
            named: set[str] | None = None  # read once, and only if answers/ holds an answer
            for inside in answers.iterdir():
                if inside.name == CARRIED and not inside.is_symlink() and inside.is_file():
                    continue
                if _an_answer(inside):
                    named = _answers_named(root) if named is None else named
                    if inside.name not in named:
                        continue
                if inside.is_dir() and not inside.is_symlink():
                    shutil.rmtree(inside)
                else:
                    inside.unlink()
        for child in root.iterdir():
            if child == answers and child.is_dir() and not child.is_symlink():
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    except OSError as exc:
        raise OutputError(f"cannot empty {root}: {reason(exc)}") from exc


def _an_answer(path: Path) -> bool:
    """Whether a file of answers/ is a paid body kept whole, as the start reads one: an answer
    (runlog._answer_file, .json) or a paid failure's raw body (.body, .sse: its task ends failed from its
    carried line, naming it); not the list to finish or a torn write."""
    return (
        not path.name.startswith(".")
        and path.suffix in (".json", ".body", ".sse")
        and not path.is_symlink()
        and path.is_file()
    )


def _answers_named(root: Path) -> set[str]:
    """The names of the files in answers/ that DIR's result lines name (answer_file)."""
    named: set[str] = set()
    for journal in (RESULTS, RETRIED):
        for raw in whole_lines(root / journal):
            if b'"answer_file"' not in raw:  # most lines: not parsed
                continue
            answer_file = (parse_record(raw) or {}).get("answer_file")
            if isinstance(answer_file, str) and answer_file.startswith(f"{ANSWERS}/"):
                named.add(answer_file[len(ANSWERS) + 1 :])
    return named


def _pull(store: Store, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    retried: dict[str, str] = {}  # task id -> the last run that gave its failure another go
    aside: set[bytes] = set()  # the lines set aside, by their bytes' digest: no task's result now
    with (root / RETRIED).open("wb") as moved:
        for name, data in store.read_all(SEGMENTS[RETRIED]):
            run = _segment_run(name)
            for raw in _whole_lines(data):
                moved.write(raw)
                aside.add(_line_key(raw))
                task_id = _task_id(raw)
                if task_id is not None and run > retried.get(task_id, ""):
                    retried[task_id] = run
    if not (root / RETRIED).stat().st_size:
        (root / RETRIED).unlink()  # as in a DIR no --retry-failed has touched
    finished, others = _pull_results(store, root / RESULTS, retried, aside)
    with (root / USAGE).open("wb") as usage:
        for raw in _segments(store, SEGMENTS[USAGE]):
            usage.write(raw)
    (root / RUNS).mkdir(exist_ok=True)
    logs = ((name.partition("/"), data) for name, data in store.read_all(RUNS))  # a run's segments in a row
    for run, segments in itertools.groupby(logs, key=lambda item: item[0][0]):
        lines = (raw for (_, _, segment), data in segments if segment for raw in _whole_lines(data))
        with (root / RUNS / f"{run}.jsonl").open("wb") as log:  # streamed: a run's log can be long
            log.writelines(_unsaved_as_maybe_billed(lines, run, finished, others))
    scheme = store.read(FORMAT)
    if scheme is not None:
        (root / FORMAT).write_bytes(scheme)
    sizes = {journal: _size(root / journal) for journal in SEGMENTS}  # where a run's own lines begin
    (root / PULLED).write_text(json.dumps({**sizes, "store": store.url}), encoding="utf-8")
    _pull_cluster(store, root)


def _pull_results(
    store: Store, path: Path, retried: dict[str, str], aside: set[bytes]
) -> tuple[dict[str, str], dict[str, set[str]]]:
    """results.jsonl at `path`: each task's first line, but a success over a failure saved before it (two
    runs at once on a URL, or on a shard the queue gave twice, both saved a line), and without the
    failures a later run's --retry-failed moved aside, nor the lines a run set `aside` (--rerun-changed).
    Returns, by task id, the run whose line is kept and the other runs that saved one (their answers are
    saved, not maybe billed)."""
    finished: dict[str, str] = {}
    others: dict[str, set[str]] = {}
    failed_at: dict[str, int] = {}  # task id -> where its kept line starts, while that line is a failure
    dropped: set[int] = set()  # kept failures a later success replaced
    with path.open("wb") as results:
        for name, data in store.read_all(SEGMENTS[RESULTS]):
            run = _segment_run(name)
            for raw in _whole_lines(data):
                entry = finished_entry(raw)
                if entry is None:
                    continue
                task_id, failed = entry
                kept = finished.get(task_id)
                if (failed and run < retried.get(task_id, "")) or (aside and _line_key(raw) in aside):
                    others.setdefault(task_id, set()).add(run)  # given another go by a later run
                elif kept is None or (not failed and task_id in failed_at):
                    if kept is not None:
                        dropped.add(failed_at.pop(task_id))
                        others.setdefault(task_id, set()).add(kept)
                    if failed:
                        failed_at[task_id] = results.tell()
                    finished[task_id] = run
                    results.write(raw)
                else:
                    others.setdefault(task_id, set()).add(run)
    if dropped:  # rare: the file again, without them
        rewritten = path.with_name(f".{path.name}.pull")
        with path.open("rb") as source, rewritten.open("wb") as target:
            offset = 0
            for raw in source:
                if offset not in dropped:
                    target.write(raw)
                offset += len(raw)
        rewritten.replace(path)
    return finished, others


def _line_key(raw: bytes) -> bytes:
    """A line's bytes, as a digest to hold in a set: a result line set aside is found by its bytes."""
    return hashlib.blake2b(raw.rstrip(b"\r\n"), digest_size=16).digest()


def _task_id(raw: bytes) -> str | None:
    record = parse_record(raw)
    task_id = record.get("id") if record is not None else None
    return task_id if isinstance(task_id, str) else None


def _pull_cluster(store: Store, root: Path) -> None:
    plan = store.read("cluster/plan.json")
    if plan is None:
        return
    (root / "cluster").mkdir(exist_ok=True)
    (root / "cluster" / "plan.json").write_bytes(plan)
    for shard in store.folders("shards"):
        _pull(store.child(f"shards/{shard}"), root / "shards" / shard)


def _unsaved_as_maybe_billed(
    lines: Iterator[bytes], run: str, finished: dict[str, str], others: dict[str, set[str]]
) -> Iterator[bytes]:
    """Run `run`'s attempt log, where a request answered for a task this run saved no result line for
    says maybe billed: the run died before saving it (or has not uploaded it yet), so it may have been
    paid without a saved result, and a later run asks again."""
    tasks: dict[str, str] = {}
    for raw in lines:
        line = parse_record(raw)
        record = attempt_log_line(line) if line is not None else None
        if isinstance(record, AttemptRecord):
            if record.event == "sent" and record.task_id is not None:
                tasks[record.request_id] = record.task_id
            elif (
                record.event == "done"
                and record.outcome in _UNSAVED
                and not record.maybe_billed
                and finished.get(task := tasks.get(record.request_id, "")) != run
                and run not in others.get(task, ())
            ):
                raw = encode_line({**(line or {}), "maybe_billed": True, "unsaved": True})
        yield raw


MIRRORING = ".mirroring"  # in a staging DIR: a run began mirroring it, and may send from then on
MIRRORED = ".mirrored"  # in a staging DIR: the run's last push left nothing behind
PULLED = ".pulled"  # in a staging DIR: the journals' sizes as pull wrote them


def pulled_size(root: Path, journal: str, otherwise: int) -> int:
    """The size `journal` had when pull assembled DIR (`otherwise` if pull did not record it)."""
    try:
        size = json.loads((root / PULLED).read_text(encoding="utf-8")).get(journal)
    except (OSError, ValueError, AttributeError):
        return otherwise
    return size if isinstance(size, int) and not isinstance(size, bool) else otherwise


@dataclass
class Mirror:
    """Replicates a staging DIR's new lines and files into the store while a run writes them."""

    store: Store
    root: Path
    run: str  # this run's id: its segments' names
    offsets: dict[str, int] = field(default_factory=dict)
    log_offset: int = 0
    uploaded: dict[str, str] = field(default_factory=dict)  # a file in DIR -> its name in the store
    merging: bool = True  # off once the store refuses a merge (a bucket that lets no one delete)
    _journals: anyio.Lock = field(default_factory=anyio.Lock)
    _log: anyio.Lock = field(default_factory=anyio.Lock)
    # the segments uploaded since the last merge, by prefix: (offset, bytes of the staging file, whether
    # the store's copy differs from those bytes: a result line naming a file under another name)
    _unmerged: dict[str, list[tuple[int, int, bool]]] = field(default_factory=dict)
    _merged_away: list[str] = field(default_factory=list)  # held by the last merge: removed at the next

    def __post_init__(self) -> None:
        for journal in SEGMENTS:  # what DIR holds now came from the store (pull)
            self.offsets[journal] = _size(self.root / journal)
        # but for the lines appended since, from where pull left them: the failed lines --retry-failed has
        # moved aside, and the ledger lines the run's start booked for the answers a killed run kept
        # (runlog.recover), which the store would otherwise never get: maybe billed there, in no cost
        for journal in (RETRIED, USAGE):
            self.offsets[journal] = pulled_size(self.root, journal, self.offsets[journal])

    @property
    def log_path(self) -> Path:
        return self.root / RUNS / f"{self.run}.jsonl"

    def start(self) -> None:
        """Record the id scheme once, and upload the failed lines --retry-failed moved aside, before the
        run sends anything (blocking). The staging DIR is marked first: from now on it may hold what the
        store lacks (see staging)."""
        mark_started(self.root, self.store.url, self.run, dict(self.offsets))
        scheme = (self.root / FORMAT).read_bytes() if (self.root / FORMAT).exists() else None
        if scheme is not None:
            self.store.create(FORMAT, scheme)
        self._push_journals()

    async def publish_log(self) -> None:
        """Upload the attempt log's lines written so far (before a request leaves: see RunLog.published).
        The requests that start while an upload is on its way share the next one."""
        target = _size(self.log_path)
        async with self._log:
            if self.log_offset < target:
                await anyio.to_thread.run_sync(self._push_log)

    async def push(self) -> None:
        """Upload what DIR gained since the last push: ledger lines, then each result line's files and
        the lines, then the attempt log."""
        async with self._journals:
            await anyio.to_thread.run_sync(self._push_journals)
        await self.publish_log()

    async def run_beside(self, every: float = PUSH_INTERVAL, merge_every: float = MERGE_INTERVAL) -> None:
        """Push every `every` seconds, and merge every `merge_every`; cancel it at the end of the run
        (then push and merge once more)."""
        merged = time.monotonic()
        while True:
            await anyio.sleep(every)
            await self.push()
            if time.monotonic() - merged >= merge_every:
                await anyio.to_thread.run_sync(self.merge)
                merged = time.monotonic()

    def merge(self, final: bool = False) -> None:
        """Merge the segments each folder gained since the last merge into one object (blocking): a run
        that pushes every second would otherwise leave thousands of small objects an hour, each read by
        every later start and reader. The merged object, `<prefix><first>-<last>.jsonl`, holds exactly
        their bytes, created-only; readers skip the segments it holds (unmerged), and they are removed at
        the next merge (at once at the run's end), so that a reader that listed them a moment ago still
        finds them. A store that refuses (no right to delete, say) ends the merging, with a warning: the
        segments stay, and nothing is lost. Needs no lock: segments go on being uploaded meanwhile."""
        if not self.merging:
            return
        try:
            merged: list[str] = []
            for prefix, segments in list(self._unmerged.items()):
                taken = segments[:]  # those uploaded after this point wait for the next merge
                if len(taken) < 2:
                    continue
                data = self._merged_bytes(prefix, taken)
                if data is None:  # one is gone from the store: these stay as they are, the next merge
                    del segments[: len(taken)]  # starts after them
                    continue
                self._create(f"{prefix}{taken[0][0]:012d}-{taken[-1][0]:012d}.jsonl", data)
                del segments[: len(taken)]
                merged += [f"{prefix}{offset:012d}.jsonl" for offset, _, _ in taken]
            self.store.remove(self._merged_away)
            self._merged_away = merged
            if final:
                self.store.remove(self._merged_away)
                self._merged_away = []
        except OutputError as exc:
            log.warning("%s; the run's segments are no longer merged (each stays an object)", exc)
            self.merging = False

    def _merged_bytes(self, prefix: str, segments: list[tuple[int, int, bool]]) -> bytes | None:
        """What the store holds in these segments of `prefix`: the staging file's bytes, or, if the store's
        copy of any differs from them, the segments read back (None if one is gone)."""
        names = [f"{prefix}{offset:012d}.jsonl" for offset, _, _ in segments]
        if any(differs for _, _, differs in segments):
            with ThreadPoolExecutor(READERS) as pool:
                found = list(pool.map(self.store.read, names))
            return None if any(data is None for data in found) else b"".join(data or b"" for data in found)
        folder = prefix.partition("/")[0]
        path = self.log_path if folder == RUNS else self.root / _journal_of(folder)
        first, (last, length, _) = segments[0][0], segments[-1]
        return self._new_lines(path, first, last + length)

    @property
    def complete(self) -> bool:
        """Every whole line of the journals and of the attempt log is in the store."""
        journals = all(
            self.offsets.get(journal, 0) >= _whole_size(self.root / journal) for journal in SEGMENTS
        )
        return journals and self.log_offset >= _whole_size(self.log_path)

    def _new_lines(self, path: Path, offset: int, end: int | None = None) -> bytes:
        """The whole lines of `path` from `offset` (up to `end`)."""
        try:
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read(-1 if end is None else max(0, end - offset))
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise OutputError(f"cannot read {path}: {exc.strerror or exc}") from exc
        return data[: data.rfind(b"\n") + 1]

    def _push_log(self) -> None:
        data = self._new_lines(self.log_path, self.log_offset)
        if data:
            self.log_offset += self._segment(f"{RUNS}/{self.run}/", self.log_offset, data, data)

    def _push_journals(self) -> None:
        # results.jsonl's end is taken before the ledger is read: a task's ledger line is written before
        # its result line, so every result line that goes up has its ledger line up in this push too
        ends = {RESULTS: _size(self.root / RESULTS)}
        ends.update({journal: _size(self.root / journal) for journal in (RETRIED, USAGE)})
        for journal in SEGMENTS:  # the failed lines moved aside before the lines that replace them
            offset = self.offsets.get(journal, 0)
            data = self._new_lines(self.root / journal, offset, ends[journal])
            while data:
                lines = (
                    b"".join(self._with_files(raw) for raw in _whole_lines(data))
                    if journal == RESULTS
                    else data
                )
                taken = self._segment(f"{SEGMENTS[journal]}/{self.run}-", offset, data, lines)
                offset += taken
                self.offsets[journal] = offset
                data = data[taken:]

    def _segment(self, prefix: str, offset: int, data: bytes, lines: bytes) -> int:
        """Upload `lines` (what `data`, the lines at `offset` of a staging file, become in the store) as
        the segment named by that offset; returns the bytes of `data` it holds. A segment of that name may
        be there already: an upload whose answer was lost on the way (a timeout) landed all the same. Its
        lines are then the first of these, never sent twice under another name; the rest go next."""
        name = f"{prefix}{offset:012d}.jsonl"
        if self.store.create(name, lines):
            taken = len(data)
        else:
            stored = self.store.read(name) or b""
            count = stored.count(b"\n")
            if not stored or not lines.startswith(stored):
                raise OutputError(f"{self.store.url}: {name} exists already (two runs with one id?)")
            taken = sum(len(raw) for raw in itertools.islice(_whole_lines(data), count))
        self._unmerged.setdefault(prefix, []).append((offset, taken, lines != data))
        return taken

    def _create(self, name: str, data: bytes) -> None:
        if not self.store.create(name, data) and self.store.read(name) != data:
            raise OutputError(f"{self.store.url}: {name} exists already (two runs with one id?)")

    def _with_files(self, raw: bytes) -> bytes:
        """Upload the files a result line names; the line, naming them as the store does."""
        record = parse_record(raw)
        if record is None:
            return raw
        files = record.get("files")
        names = [str(name) for name in files] if isinstance(files, list) else []
        answer = record.get("answer_file")
        stored = [self._upload(name) for name in names]
        renamed = stored != names
        if isinstance(answer, str):
            kept = self._upload(answer)
            renamed = renamed or kept != answer
            record["answer_file"] = kept
        if not renamed:
            return raw
        record["files"] = stored
        return encode_line(record)

    def _upload(self, name: str) -> str:
        """A file of DIR into the store, create-only: under its own name, or if the store holds that one
        already (a worker that died saved it, not its line), under a name of this run's."""
        if name in self.uploaded:
            return self.uploaded[name]
        relative = PurePosixPath(name)
        if (
            relative.is_absolute()
            or ".." in relative.parts
            or relative.parts[:1] not in ((IMAGES,), (ANSWERS,))
        ):
            return name  # not a file of DIR's: nothing to upload
        try:
            data = (self.root / relative).read_bytes()
        except OSError as exc:
            raise OutputError(f"cannot read {self.root / relative}: {exc.strerror or exc}") from exc
        target = name
        # a name the store holds already with these very bytes (an upload that landed though its answer
        # was lost, or this run's, flushed again from its kept folder) is that file
        if not self.store.create(target, data) and self.store.read(target) != data:
            target = str(relative.with_name(f"{relative.stem}.{self.run}{relative.suffix}"))
            self._create(target, data)
        self.uploaded[name] = target
        return target

    def landed(self) -> None:
        """Move each offset past the lines this run's segments in the store hold already (a kept staging
        folder's, whose run stopped: see flush_kept), plain or merged, so that none goes up twice."""
        for journal, folder in SEGMENTS.items():
            self.offsets[journal] = self._landed(folder, self.root / journal, self.offsets[journal])
        self.log_offset = self._landed(RUNS, self.log_path, self.log_offset)

    def _landed(self, folder: str, path: Path, offset: int) -> int:
        found: dict[int, str] = {}  # where a segment of this run starts -> its name (a merged one first)
        for name in self.store.names(folder):
            segment = _parse(name)
            if (
                segment is not None
                and segment[0] == self.run
                and (segment[2] is not None or segment[1] not in found)
            ):
                found[segment[1]] = name
        try:
            with path.open("rb") as handle:
                while (there := found.get(offset)) is not None:
                    count = (self.store.read(f"{folder}/{there}") or b"").count(b"\n")
                    handle.seek(offset)
                    for _ in range(count):
                        if not handle.readline().endswith(b"\n"):
                            raise OutputError(f"{self.store.url}: {folder}/{there} holds lines {path} lacks")
                    if not count:
                        break
                    offset = handle.tell()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OutputError(f"cannot read {path}: {exc.strerror or exc}") from exc
        return offset


def flush_kept(store: Store, root: Path) -> None:
    """Upload what a staging folder kept by a stopped run (the store failed, the run crashed) holds and
    the store lacks: its run's lines and the files they name, under that run's names, each segment that
    landed then skipped. Then the folder may be assembled afresh, and no answer it held is bought again.
    UsageError for a folder that is not a kept staging folder of this store; OutputError if the store
    still refuses."""
    try:
        pulled = json.loads((root / PULLED).read_text(encoding="utf-8"))
        # assembled from the store, its run stopped (killed) before its mirror started: it sent nothing,
        # and what its start wrote (the answers a killed run kept, their ledger lines) the next writes again
        if not (root / MIRRORING).exists() and isinstance(pulled, dict):
            of = pulled.get("store")
            if isinstance(of, str) and of.rstrip("/") == store.url.rstrip("/"):
                return
            raise UsageError(
                f"--stage {root}: the staging folder of {of}, not of {store.url}"
                if isinstance(of, str)
                else f"--stage {root}: left by an older maas-batch, which did not record its store"
            )
        started = json.loads((root / MIRRORING).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError) as exc:
        raise UsageError(f"--stage {root}: not a staging folder a run left behind ({exc})") from None
    # where the run's own lines begin, as its mirror started (the sizes pull wrote, for a folder of an older
    # maas-batch: wrong only where the run rewrote results.jsonl)
    recorded = started.get("offsets") if isinstance(started, dict) else None
    begun = recorded if isinstance(recorded, dict) and recorded else pulled
    offsets = {journal: begun.get(journal) if isinstance(begun, dict) else None for journal in SEGMENTS}
    run = started.get("run") if isinstance(started, dict) else None
    if not isinstance(run, str) or not all(isinstance(offset, int) for offset in offsets.values()):
        raise UsageError(f"--stage {root}: left by an older maas-batch, which did not record its run")
    if started.get("store", "").rstrip("/") != store.url.rstrip("/"):
        raise UsageError(f"--stage {root}: the staging folder of {started.get('store')}, not of {store.url}")
    if not staging_unmirrored(root):
        return  # its run's last push left nothing behind
    mirror = Mirror(store, root, run)
    mirror.offsets.update({journal: int(offset) for journal, offset in offsets.items() if offset is not None})
    mirror.landed()
    mirror._push_journals()
    mirror._push_log()
    mark_complete(mirror)
    log.info("%s: what run %s saved there and %s lacked is uploaded", root, run, store.url)


def _journal_of(folder: str) -> str:
    """The journal in DIR whose segments go in `folder` of the store."""
    return next(journal for journal, name in SEGMENTS.items() if name == folder)


def mark_complete(mirror: Mirror) -> None:
    """Leave MIRRORED in the staging DIR if the store holds all it saved: its folder may then go."""
    if mirror.complete:
        (mirror.root / MIRRORED).touch()


def mark_started(root: Path, store: str = "", run: str = "", offsets: dict[str, int] | None = None) -> None:
    """Leave MIRRORING in a staging DIR before its run may send anything, naming the store, the run and
    where in each journal its own lines begin (flush_kept reads them, should the folder be kept: a
    --retry-failed or --rerun-changed has rewritten results.jsonl smaller since pull wrote it)."""
    try:
        (root / MIRRORING).write_text(
            json.dumps({"store": store, "run": run, "offsets": offsets or {}}), encoding="utf-8"
        )
    except OSError as exc:
        raise OutputError(f"cannot write {root / MIRRORING}: {reason(exc)}") from exc


def left_by_a_run(root: Path) -> bool:
    """Whether `root` may be a staging folder a run left: it began mirroring it (mark_started), or
    assembled it (pull) and stopped before (flush_kept tells which store's)."""
    return (root / MIRRORING).is_file() or (root / PULLED).is_file()


def staging_unmirrored(root: Path) -> bool:
    """Whether a staging DIR may hold what the store lacks: its run began mirroring it (mark_started) and
    its last push did not find everything in the store (mark_complete)."""
    return (root / MIRRORING).exists() and not (root / MIRRORED).exists()


def _whole_size(path: Path) -> int:
    """The bytes of a file's whole lines (a torn last line is not one)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return size
            handle.seek(0)
            return handle.read().rfind(b"\n") + 1
    except OSError:
        return 0


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
