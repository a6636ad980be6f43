"""DIR/index.html: one self-contained page (opened from disk, no network) to review a run: a header with
the done / failed / pending counts, total tokens and cost, the manifest and the date; a card per task of
the manifest in manifest order (output.scope: pending tasks too, orphaned lines only when asked for),
with its images in their own aspect ratio, prompt, parameters, tokens and cost, the chat answers beside
their input images, and the failures with their messages; sorting (newest, cost, slowest), filters by
status and kind and a search, all kept in the URL's hash so that a link shows the same cards; and a
larger view of any task with its inputs, meta and whole answer.

During a run the page is rebuilt every minute or so (Rebuilder: each time in a child process at low
priority, never in the run's own process), from the thumbnails made so far; at the end of the run, whole.

What a card shows, and the cards a run makes as it writes its lines for its last page, are in
output.cards.

Thumbnails (DIR/thumbs/, WebP, 320 px) are made as images are saved, by a background thread at low CPU
priority (Thumbnailer), so that building the page after a run mostly only writes the page: 10,000 images
cost a fraction of a second, not minutes. The page draws cards in chunks as you scroll and lets the browser
load thumbnails lazily.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch import codec
from batch.errors import OutputError
from batch.events import Event, TaskFinished
from batch.manifest.regular import open_regular
from batch.output.cards import (
    Card,
    Cards,
    as_text,
    card_json,
    cost_of,
    entry_card,
    input_thumb_name,
    page_json,
    tokens_of,
)
from batch.output.files import real_folder, write_atomic, write_atomic_chunks
from batch.output.scope import Lines, Scope, entries, index, may_name_pictures, scope_of
from batch.output.store import (
    ANSWERS,
    IMAGES,
    RESULTS,
    THUMBS,
    USAGE,
    thumbnail_name,
    whole_lines,
)
from batch.running.idset import IdSet
from batch.running.imaging import DECODE_PIXELS
from batch.running.records import finished_entry

if TYPE_CHECKING:
    from batch.output.remote import Store

log = logging.getLogger("batch.output.gallery")

PAGE = "index.html"
THUMB_SIZE = (320, 320)
MAX_ITEMS = 50_000  # the first tasks of the manifest shown; the counts cover all
REBUILD_EVERY = 60.0  # seconds between two builds of the page during a run


def make_thumbnail(source: bytes | Path, destination: Path, *, fsync: bool = False) -> bool:
    """A small WebP of an image (blocking: call it from a worker thread). False if it cannot be read."""
    from PIL import Image  # Pillow loads with the first picture: a run without any never needs it

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # a path is opened as a regular file only: a FIFO a result line names would block forever
            handle = io.BytesIO(source) if isinstance(source, bytes) else open_regular(source)
            with handle, Image.open(handle) as image:
                image.draft("RGB", THUMB_SIZE)  # JPEG: decode at a fraction of the size
                if image.width * image.height > DECODE_PIXELS:
                    # decoded whole to be made small: an 8192x8192 WebP of 177 KB took 1.1 GB. Past what
                    # the answers' check decodes (running.imaging), the card shows no picture
                    return False
                # reducing_gap 1: an integer reduce() first, then a resize of a small image; with method
                # 0, a 2 MB PNG costs about 11 ms (decoding it, 6 ms of that), not 19
                image.thumbnail(THUMB_SIZE, reducing_gap=1.0)
                small = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
        buffer = io.BytesIO()
        small.save(buffer, "WEBP", quality=72, method=0)
    except Exception:  # Pillow raises many kinds on hostile bytes (IndexError, struct.error, ...)
        return False
    try:
        real_folder(destination.parent.parent)  # thumbs/ (or thumbs/ of thumbs/inputs/): never a link
        real_folder(destination.parent)
        write_atomic(destination, buffer.getvalue(), fsync=fsync)
    except (OSError, OutputError):  # a full disk: the page shows the card without its picture
        return False
    return True


class Thumbnailer:
    """Makes the thumbnails of saved images in one background thread at the lowest CPU priority, off the
    tasks' path: a run's throughput does not wait for them, and where the CPU is busy they wait instead.
    What is still queued when the run ends (or more than `backlog`) is made by `build`, in parallel."""

    def __init__(self, backlog: int = 1000) -> None:
        self._queue: queue.Queue[tuple[Path, Path] | None] = queue.Queue(maxsize=backlog)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._work, name="maas-batch-thumbnails", daemon=True)
        self._thread.start()

    def submit(self, source: Path, destination: Path) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait((source, destination))

    def observer(self, root: Path) -> Callable[[Event], None]:
        """An observer of a run into `root`: each finished task's images get their thumbnails."""

        def observe(event: Event) -> None:
            if isinstance(event, TaskFinished):
                for relative in event.record.get("files") or []:
                    name = thumbnail_name(Path(str(relative)).name)
                    self.submit(root / str(relative), root / THUMBS / name)

        return observe

    def drain(self) -> None:
        """Until every thumbnail asked for so far is made (or dropped)."""
        self._queue.join()

    def close(self) -> None:
        """Stop after the thumbnail being made (`build` makes the rest) and wait for the thread."""
        self._stopping.set()
        while True:  # make room for the end mark in a full queue: what is dropped, `build` makes
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
                    self._queue.task_done()
        self._thread.join()

    def _work(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: a thread has its own nice value
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if not self._stopping.is_set():
                    make_thumbnail(*item)
            finally:
                self._queue.task_done()


def _existing_thumbnails(root: Path) -> set[str]:
    """The thumbnails (relative names) in DIR now."""
    found = {f"{THUMBS}/{p.name}" for p in (root / THUMBS).glob("*.webp")}
    return found | {f"{THUMBS}/inputs/{p.name}" for p in (root / THUMBS / "inputs").glob("*.webp")}


def _wanted(root: Path, records: Iterable[dict[str, Any]]) -> dict[str, Path]:
    """The thumbnails (relative names) the cards of `records` show, each with the picture it is made of:
    a file of the run's inside DIR (no `..`, no absolute path, no link out of it: a result line edited by
    hand must not have a file elsewhere read into thumbs/), an input where it is (an edit's pictures are
    outside DIR by design)."""
    wanted: dict[str, Path] = {}
    real_root = root.resolve()
    for record in records:
        for relative in record.get("files") or []:
            name = _saved_file(root, root / str(relative))
            if name is not None and (root / name).resolve().is_relative_to(real_root):
                wanted[f"{THUMBS}/{thumbnail_name(Path(name).name)}"] = root / name
        for path in record.get("inputs") or []:
            wanted[input_thumb_name(str(path))] = Path(str(path))
    return wanted


def _thumbnails(root: Path, records: Iterable[dict[str, Any]]) -> set[str]:
    """The thumbnails (relative names) of `records` that exist, after making the missing ones: in a few
    threads, as Pillow lets go of the GIL while it decodes and encodes."""
    wanted = _wanted(root, records)
    real_folder(root / THUMBS)
    real_folder(root / THUMBS / "inputs")
    existing = _existing_thumbnails(root)
    made = {name for name in wanted if name in existing}
    missing = [(name, source) for name, source in wanted.items() if name not in existing]
    made.update(_copied_from_shards(root, missing))
    missing = [(name, source) for name, source in missing if name not in made]
    if missing:
        log.debug("making %d missing thumbnails", len(missing))
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            done = pool.map(lambda item: make_thumbnail(item[1], root / item[0]), missing)
            made.update(name for (name, _), ok in zip(missing, done, strict=True) if ok)
    return made


def _copied_from_shards(root: Path, missing: Iterable[tuple[str, Path]]) -> Iterator[str]:
    """The thumbnails of a sharded batch's images (DIR/shards/<k>/images/...) that their shard's run made
    already (DIR/shards/<k>/thumbs/), copied into DIR/thumbs/ rather than made again."""
    for name, source in missing:
        folder = source.parent.parent  # the run directory of images/<name>
        if folder == root or not folder.is_relative_to(root) or name.startswith(f"{THUMBS}/inputs/"):
            continue
        made = folder / THUMBS / Path(name).name
        try:
            write_atomic(root / name, made.read_bytes(), fsync=False)
        except OSError:  # none there (a shard run with --no-gallery): made below
            continue
        yield name


def build(
    root: Path,
    scope: Scope | None = None,
    *,
    make_missing: bool = True,
    cards: Cards | None = None,
    spent: tuple[int, float] | None = None,
) -> Path:
    """Write DIR/index.html for the tasks of `scope` (the last run's manifest by default); make any
    thumbnail that is missing, unless not `make_missing` (during a run: the run's thread makes them).
    Returns the page. The page is written card by card: memory stays flat however many tasks DIR has.
    `cards`: those a run made of the lines it wrote (Cards), taken where they still hold, and closed.
    `spent`: the tokens and cost of the header, where the caller knows them (a run: the ledger's as it
    began, and its own); else the ledger is read for them (spent_on)."""
    scope = scope or scope_of(root)
    taken = None if cards is None else cards.taken(root / RESULTS)
    # None where a line may name a picture (it stops there), or for shards; the lines the cards were made
    # of are not read again
    lines = index(root, scope, None if taken is None else taken.start)
    if lines is None:
        taken = None
    elif taken is not None:
        taken.index(lines.offsets)
    if make_missing and _may_want_thumbnails(root, scope, lines):  # a first pass for the cards' pictures
        shown = itertools.islice(entries(root, scope), MAX_ITEMS)
        made = _thumbnails(root, (entry_card(entry) for entry in shown))
    else:
        made = _existing_thumbnails(root)
    page = root / PAGE
    try:
        parts = _page(root, scope, made, lines=lines, cards=taken, spent=spent)
        write_atomic_chunks(page, parts, fsync=False)
    finally:
        if cards is not None:
            cards.close()  # taken once
    return page


def build_in_store(root: Path, store: Store, scope: Scope | None = None, page: Path | None = None) -> str:
    """The page of an s3:// output, into the store: `root` is a view of it (output.remote.view: the
    journals, no images). The thumbnails the store lacks are made from its images (or from an edit's
    inputs, where this machine has them) and uploaded, create-only, under thumbs/; then index.html,
    replacing the last one (written first to `page`, root/index.html by default). The page's links are
    relative, as in a DIR: it shows its pictures where the store is served from (a website endpoint, a
    mount, a synced copy). Returns the page's URL."""
    scope = scope or scope_of(root)
    made: set[str] = set()
    if _may_want_thumbnails(root, scope):
        wanted = _wanted(root, (entry_card(e) for e in itertools.islice(entries(root, scope), MAX_ITEMS)))
        stored = {f"{THUMBS}/{name}" for name in store.names(THUMBS)}
        made = {name for name in wanted if name in stored}
        missing = [(name, source) for name, source in wanted.items() if name not in stored]
        real_folder(root / THUMBS)
        real_folder(root / THUMBS / "inputs")

        def make(name: str, source: Path) -> bool:
            # an edit's input where this machine has it; an image of the output's from the store, unless
            # the view holds it (a run's staging DIR: the images it saved); nothing else a line names
            picture: bytes | Path | None = source
            if not name.startswith(f"{THUMBS}/inputs/"):
                relative = _saved_file(root, source)
                if relative is None:
                    return False
                picture = root / relative if (root / relative).is_file() else store.read(relative)
            if picture is None or not make_thumbnail(picture, root / name):
                return False
            store.create(name, (root / name).read_bytes())  # one made meanwhile by another: the same
            return True

        if missing:
            log.info("making %d missing thumbnails from the store's images", len(missing))
            with ThreadPoolExecutor(max_workers=8) as pool:  # mostly waiting on the store
                done = pool.map(lambda item: make(*item), missing)
                made.update(name for (name, _), ok in zip(missing, done, strict=True) if ok)
    page = root / PAGE if page is None else page
    title = store.url.rstrip("/").rpartition("/")[2]
    write_atomic_chunks(page, _page(root, scope, made, title), fsync=False)
    store.replace(PAGE, page)
    return f"{store.url.rstrip('/')}/{PAGE}"


def _saved_file(root: Path, path: Path) -> str | None:
    """The name in the output of a file a result line names (images/..., answers/..., or a shard's:
    shards/<k>/images/...), None for any other path (absolute, or out through "..")."""
    try:
        parts = Path(os.path.normpath(path)).relative_to(root).parts
    except ValueError:
        return None
    in_shard = len(parts) > 3 and parts[0] == "shards"
    if (len(parts) > 1 and parts[0] in (IMAGES, ANSWERS)) or (in_shard and parts[2] in (IMAGES, ANSWERS)):
        return "/".join(parts)
    return None


def _may_want_thumbnails(root: Path, scope: Scope, lines: Lines | None = None) -> bool:
    """Whether a card may show a picture: False only when every result line says, in the bytes the tool
    writes, that it names no file and no input, and no task is pending (a pending card shows its inputs).
    A chat run's page is then written in one pass over results.jsonl, not two. Errs towards True: a
    line written by hand or by another version is read by the first pass as before. `lines`: the
    scope's `index`, made only where no line may name a picture (without it, a pass of its own reads
    results.jsonl, up to the first line that may)."""
    if lines is not None:
        return scope.order is not None and lines.pending(scope.order)
    finished = IdSet()  # 8 bytes an id: a million result lines are 8 MB here, not a set's 100
    for raw in whole_lines(root / RESULTS):
        if may_name_pictures(raw):
            return True
        if scope.order is not None:
            found = finished_entry(raw)
            if found is not None:
                finished.add(found[0])
    return scope.order is not None and any(not finished.contains_digest(key) for key in scope.order)


def _page(
    root: Path,
    scope: Scope,
    made: set[str],
    title: str | None = None,
    lines: Lines | None = None,
    cards: Cards | None = None,
    spent: tuple[int, float] | None = None,
) -> Iterator[bytes]:
    """The page in pieces: the template around one JSON object, whose `items` (the cards) come first and
    whose counts, known once every task has been seen, come last. `title`: DIR's name by default;
    `lines`: the scope's `index`, if made; `cards`: the cards of the lines it holds that the run made
    as it wrote them (Cards.taken)."""
    title = root.name if title is None else title
    template = Path(__file__).with_name("gallery.html").read_text(encoding="utf-8")
    head, marker, tail = template.partition("/*DATA*/")
    assert marker, "gallery.html has lost its /*DATA*/ marker"
    yield head.replace("TITLE", _escape(title)).encode()
    yield b'{"items": ['
    counts: Counter[str] = Counter()  # "<kind>/<status>"
    statuses: Counter[str] = Counter()
    total = tokens = shown = 0
    cost = 0.0
    for entry in entries(root, scope, lines, None if cards is None else cards.card_at):
        total += 1
        if isinstance(entry, Card):  # made as the run wrote its line
            statuses[entry.status] += 1
            counts[entry.count] += 1
            tokens += entry.tokens
            cost += entry.cost
        else:
            statuses["orphaned" if entry.orphaned else entry.status] += 1
            counts[f"{entry.kind}/{entry.status}"] += 1
            record = entry.record
            if record is not None:
                tokens += tokens_of(record)
                cost += cost_of(record)
        if shown < MAX_ITEMS:
            yield (b", " if shown else b"") + (
                entry.json if isinstance(entry, Card) else card_json(entry, made)
            )
            shown += 1
    spent = spent or spent_on(root, scope)
    if spent is not None:  # the ledger's: every billed answer, a paid failure since retried too
        tokens, cost = spent
    rest = {
        "title": title,
        "manifest": None if scope.manifest is None else as_text(scope.manifest),
        "built": datetime.now(UTC).astimezone().isoformat(timespec="seconds"),
        "total": total,
        "tasks": scope.total,
        "shown": shown,
        "counts": dict(counts),
        "statuses": dict(statuses),
        "tokens": tokens,
        "cost": round(cost, 6),
    }
    yield b"], " + page_json(rest)[1:]  # the rest of the object: its keys without the opening brace
    yield tail.encode()


def spent_on(root: Path, scope: Scope, upto: int | None = None) -> tuple[int, float] | None:
    """The tokens and cost the ledger (usage.jsonl) records for the tasks the page is about, or None
    without a ledger. The cards' sums left out what a task's line no longer says: a paid failure set
    aside by a retry, an answer whose task was killed before its line (the page said $1.33 of $1.83).
    A line as UsageRecord.to_line writes it is read for its three figures without parsing it whole
    (about 4 us a line, the lookup of its task included); any other line is parsed. `upto`: the lines
    that begin before this offset only (what the ledger held when a run began)."""
    if not (root / USAGE).exists():
        return None
    every = scope.include_orphaned or scope.order is None  # no line to leave out: none looked up
    tokens, cost = 0, 0.0
    offset = 0
    for raw in whole_lines(root / USAGE):
        if upto is not None and offset >= upto:
            break
        offset += len(raw)
        figures = _figures(raw)
        if figures is None:
            continue
        task, total, price = figures
        if every or scope.current(task):
            tokens += total
            cost += price

    return tokens, cost


_TASK = b'{"task_id": "'
_TOTAL = b', "total_tokens": '
_COST = b', "cost": '


def _figures(raw: bytes) -> tuple[str, int, float] | None:
    """(task id, total tokens, cost) of a ledger line; None for one that is not a ledger line. The line's
    own format first: its task first, its total tokens, then its cost (UsageRecord.to_line)."""
    if raw.startswith(_TASK):
        end = raw.find(b'"', len(_TASK))
        total_at = raw.find(_TOTAL, end)
        cost_at = raw.find(_COST, total_at)
        if end > 0 and total_at > 0 and cost_at > 0 and b"\\" not in raw[: end + 1]:
            total_end = raw.find(b",", total_at + len(_TOTAL))
            cost_end = raw.find(b",", cost_at + len(_COST))
            total_text = raw[total_at + len(_TOTAL) : total_end]
            cost_text = raw[cost_at + len(_COST) : cost_end]
            if total_text.isdigit() and len(total_text) < 19:
                try:
                    price = 0.0 if cost_text == b"null" else float(cost_text)
                except ValueError:
                    price = None
                if price is not None and abs(price) < 1e300:
                    return raw[len(_TASK) : end].decode("utf-8", "replace"), int(total_text), price
    try:  # a line written otherwise (by hand, or by another version): parsed
        line = codec.loads(raw)
    except (ValueError, RecursionError):  # a torn or damaged line: as read_lines, left out
        return None
    task = line.get("task_id") if isinstance(line, dict) else None
    if not isinstance(task, str):
        return None
    total, price = line.get("total_tokens"), line.get("cost")
    number = isinstance(price, int | float) and not isinstance(price, bool) and abs(price) < 1e300
    return task, total if type(total) is int else 0, float(price) if number else 0.0


class Rebuilder:
    """Builds the page again and again during a run, each time in a child process at the lowest CPU
    priority (batch.output.pagebuild: why a process, not a thread, is said there): every
    `every` seconds when results.jsonl grew, and less often for a page that takes long to build (at most
    `most` of the time, a tenth). This thread only starts the builds and waits for them."""

    def __init__(self, root: Path, every: float | None = None, most: float = 0.1) -> None:
        self.root = root
        self.every = REBUILD_EVERY if every is None else every
        self.most = most
        self.looks = 0  # times the thread looked whether results.jsonl grew
        self.builds = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._work, name="maas-batch-gallery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end, and a build in progress too (its page would be replaced at the run's
        end anyway); returns at once."""
        with self._lock:
            self._stopping.set()
            child = self._child
        if child is not None and child.poll() is None and os.name == "posix":  # Windows: it ends its build
            with contextlib.suppress(OSError):
                child.terminate()  # SIGTERM: the build unwinds, leaving no half page (pagebuild)

    def close(self) -> None:
        """Stop, and wait for the thread and its build (blocking: from a worker thread)."""
        self.stop()
        self._thread.join()

    def _work(self) -> None:
        built_size = -1
        wait = self.every
        while not self._stopping.wait(wait):
            self.looks += 1
            try:
                size = (self.root / RESULTS).stat().st_size
            except OSError:
                size = 0
            if size == built_size:
                continue
            started = time.monotonic()
            if self._build():
                built_size = size
                self.builds += 1
            wait = max(self.every, (time.monotonic() - started) / self.most)

    def _build(self) -> bool:
        """One build, in a child process; whether it wrote the page."""
        with self._lock:
            if self._stopping.is_set():
                return False
            try:
                child = self._child = _page_process(self.root, whole=False)
            except OSError as exc:
                log.debug("could not rebuild the gallery: %s", exc)
                return False
        _, errors = child.communicate()
        with self._lock:
            self._child = None
        if child.returncode != 0:  # a view: it must never fail the run
            if not self._stopping.is_set():
                log.debug("could not rebuild the gallery: %s", errors.decode(errors="replace").strip())
            return False
        return True


def build_apart(root: Path) -> Path:
    """build(root) in a child process (`pagebuild DIR --whole`): a big run's last page, whose reading of
    results.jsonl (12 bytes a line and more) is then not added to the memory the run holds. What the
    build warns of is logged here; a build that fails raises OutputError with the child's message."""
    try:
        child = _page_process(root, whole=True)
    except OSError as exc:
        raise OutputError(f"cannot start the page's build: {exc}") from exc
    _, errors = child.communicate()
    said = [line for line in errors.decode(errors="replace").splitlines() if line.strip()]
    if child.returncode < 0:  # a signal: the system's out-of-memory killer, say
        raise OutputError(f"the page's build was killed by signal {-child.returncode}")
    if child.returncode != 0:
        raise OutputError(said[-1] if said else f"the page's build exited {child.returncode}")
    for line in said[-20:]:
        log.warning("%s", line)
    return root / PAGE


def can_start_itself() -> bool:
    """Whether this interpreter can start itself for a page's build (not a frozen or embedded one)."""
    return bool(sys.executable) and not getattr(sys, "frozen", False)


# the child's start: the run's own import path (as multiprocessing's spawn passes it), then pagebuild
_CHILD = (
    "import json, sys; sys.path[:] = json.loads(sys.argv.pop(1)); "
    "from batch.output.pagebuild import main; sys.exit(main(sys.argv[1:]))"
)


def _page_process(root: Path, *, whole: bool) -> subprocess.Popen[bytes]:
    """batch.output.pagebuild started in a child process: this interpreter with the run's own import
    path (-P, and the path given whole: the run's `batch`, whatever the current directory holds), the
    run's environment but the API key (it sends nothing), in a session of its own (a Ctrl-C at the
    terminal is the run's to handle: it would kill the build), told the run's pid (it stops if the run
    dies). Windows: a process group of its own and, during a run, below normal priority."""
    if not can_start_itself():
        raise OSError("this Python cannot start itself (frozen, or no sys.executable)")
    environment = {name: value for name, value in os.environ.items() if name != "MAAS_API_KEY"}
    arguments = [str(root), "--parent", str(os.getpid()), *(["--whole"] if whole else [])]
    options: dict[str, Any] = {"start_new_session": True}
    if os.name == "nt":  # pragma: no cover - Windows
        flags = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined,unused-ignore]
        low = 0 if whole else subprocess.BELOW_NORMAL_PRIORITY_CLASS  # type: ignore[attr-defined,unused-ignore]
        options = {"creationflags": flags | low}
    return subprocess.Popen(
        [sys.executable, "-P", "-c", _CHILD, json.dumps([str(entry) for entry in sys.path]), *arguments],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment,
        **options,
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
