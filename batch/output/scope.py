"""Which tasks a report is about, for `status`, `report`, `export` and the gallery alike.

By default: the tasks of the manifest the last run used, known cheaply from DIR/.cache/plan.ids (each
task's 8-byte id digest, in manifest order) without reading the manifest; or the tasks of `--manifest
FILE`, expanded and validated as a run would. A result line of a task no longer in that manifest (a
prompt fixed, a quality raised since) is *orphaned*: counted apart and left out of the totals, unless
`include_orphaned`. When no manifest is known (a directory written by a manifest built in code, or by an
older version), every result line counts, as before.

Manifest order comes from the digests. Pending tasks have no result line: to show their prompts
(export's rows, the gallery's cards) the manifest is expanded (`tasks()`), through the remembered plan
when nothing it depends on changed, so that no validation walk is needed; only when a task is pending.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from batch.errors import BatchError
from batch.manifest import plancache
from batch.output.store import (
    RESULTS,
    RUNS,
    read_line_at,
    read_lines,
    read_lines_with_offsets,
    read_raw_lines_with_offsets,
)
from batch.running.idset import IdSet, LineOffsets, digest, request_key
from batch.running.order import Order
from batch.running.records import ResultRecord

log = logging.getLogger("batch.output.scope")

_Known = TypeVar("_Known")  # what a caller of `entries` has at hand of a line (the page: its card)


@dataclass(frozen=True)
class Task:
    """A task of the manifest as the reports show it: all a pending task has to show."""

    id: str
    kind: str
    model: str | None
    prompt: str
    params: dict[str, Any]
    inputs: tuple[str, ...]
    meta: dict[str, Any]
    custom_id: str | None


@dataclass(frozen=True)
class Part:
    """A run directory under DIR (relative to it) holding the tasks at manifest positions [start, end)."""

    folder: str
    start: int
    end: int


@dataclass
class Scope:
    """The tasks a report counts. `order` None: no manifest is known, every result line counts."""

    manifest: str | None = None  # as the last run (or --manifest) named it; for the reader
    order: Order | None = None  # the current tasks' id digests, in manifest order
    include_orphaned: bool = False
    manifest_path: Path | None = None  # the file to expand for the tasks themselves
    settings: dict[str, Any] = field(default_factory=dict)  # BuildSettings' fields the last run used
    total_hint: int | None = None  # the last run's task count, when no digests are known
    cache: Path | None = None  # DIR/.cache: a remembered plan spares the validation walk
    # a sharded batch (batch.cluster): the run directories under DIR that hold the tasks at positions
    # [start, end), in manifest order; empty for a single run directory
    parts: tuple[Part, ...] = ()
    manifest_sha256: str | None = None  # of the bytes of the manifest the last run checked (its plan's)
    # the current tasks' request digests (plan.requests), in manifest order; None: not known
    requests: Order | None = None
    _ids: IdSet | None = field(default=None, repr=False)
    _keys: IdSet | None = field(default=None, repr=False)  # request_key of each task's id and request
    _said: bool = field(default=False, repr=False)  # that its tasks cannot be listed: said once, not per pass

    @property
    def known(self) -> bool:
        return self.order is not None

    @property
    def total(self) -> int | None:
        """How many tasks the manifest holds (None: not known)."""
        return len(self.order) if self.order is not None else self.total_hint

    def current(self, task_id: str) -> bool:
        """Whether a result line of `task_id` belongs to the manifest (always, when none is known)."""
        if self.order is None:
            return True
        if self._ids is None:
            self._ids = IdSet()
            for key in self.order:
                self._ids.add_digest(key)
            self._ids.freeze()
        return self._ids.contains_digest(digest(task_id))

    def changed(self, task_id: str, request: str | None) -> bool:
        """Whether a current task's result line names another request than the manifest gives it now
        (False where either is not known: a line of an earlier version, no keys)."""
        if request is None or self.requests is None or self.order is None:
            return False
        if self._keys is None:
            self._keys = IdSet()
            for key in map(request_key, self.order, self.requests):
                self._keys.add_digest(key)
            self._keys.freeze()
        return not self._keys.contains_digest(request_key(digest(task_id), int(request, 16)))

    def failed_before(self, task_id: str, failed: bool, request: str | None) -> bool:
        """Whether a line set aside to send its task again (results.retried.jsonl) makes the task, pending
        since, a failure waiting for --retry-failed: the line failed, with the request the task has now (or
        one not known). A line that did not fail, or of another request, was set aside by --rerun-changed:
        its task is a changed one waiting to be sent again, and was no failure."""
        return failed and not self.changed(task_id, request)

    def counted(self, task_id: str) -> bool:
        """Whether a result line goes into the totals: a current task's, or any with include_orphaned."""
        return self.include_orphaned or self.current(task_id)

    def tasks(self) -> Iterator[Task] | None:
        """The manifest's tasks in order, or None when they cannot be had (no manifest known, or it is
        gone, invalid, or no longer the one the last run used: then the reports go without pending rows)."""
        if self.manifest_path is None or self.order is None:
            return None
        try:
            return _expanded(self.manifest_path, self.settings, self.order, self.cache)
        except (BatchError, OSError) as exc:
            if not self._said:
                log.warning("cannot list the tasks of %s (%s): pending tasks left out", self.manifest, exc)
                self._said = True
            return None


def scope_of(
    root: Path,
    manifest: Path | None = None,
    *,
    include_orphaned: bool = False,
    endpoint: str | None = None,
) -> Scope:
    """The scope of a report on DIR: `manifest` (--manifest) if given, else the last run's manifest.
    A --manifest that is not valid raises ManifestError (exit 65), as `validate` would. The last run's
    digests are read from DIR/.cache/plan.ids a window at a time (Order.from_file): a run's page holds no
    second copy of its plan's order, so it need not hand its own over."""
    remembered = _remembered(root)
    if manifest is not None:
        settings = dict(remembered.settings)
        if not _same_manifest(manifest, remembered):
            settings = {"env_endpoint": settings.get("env_endpoint")}  # its own --set may not fit this one
        if settings.get("env_endpoint") is None:  # no run remembered one (a store's view): MAAS_ENDPOINT now
            settings["env_endpoint"] = endpoint
        checked = _checked(manifest, settings, root / plancache.FOLDER)
        return Scope(
            manifest=str(manifest),
            order=checked.plan.order,
            requests=checked.plan.requests if len(checked.plan.requests) == len(checked.plan.order) else None,
            include_orphaned=include_orphaned,
            manifest_path=manifest,
            settings=settings,
            cache=root / plancache.FOLDER,
        )
    remembered.include_orphaned = include_orphaned
    return remembered


def _same_manifest(manifest: Path, remembered: Scope) -> bool:
    """Whether --manifest is the manifest the last run checked: the same file, or one of the same bytes
    (a copy, the same manifest at another path), so that the run's --set and --endpoint apply to it."""
    if remembered.manifest_path is None:
        return False
    if manifest.resolve() == remembered.manifest_path:
        return True
    if remembered.manifest_sha256 is None:
        return False
    try:
        return bool(plancache.key(manifest, {})["sha256"] == remembered.manifest_sha256)
    except OSError:
        return False  # checked, and reported, as the --manifest it is


def _remembered(root: Path) -> Scope:
    """The manifest of the last run, from the plan it remembered, if that run was the plan's."""
    start = _last_start(root / RUNS)
    tasks = start.get("tasks") if isinstance(start.get("tasks"), int) else None
    folder = root / plancache.FOLDER
    try:
        document = json.loads((folder / plancache.PLAN).read_bytes())
        key = document["key"]
        order = Order.from_file(folder / plancache.IDS)
        requests = plancache.remembered_requests(folder, document, len(order))
        path = Path(str(key["manifest"]))
        settings = dict(key["settings"])
        sha256 = key.get("sha256")
    except (OSError, ValueError, KeyError, TypeError):
        return Scope(manifest=start.get("manifest"), total_hint=tasks)
    if len(order) != document.get("total") or (tasks is not None and tasks != len(order)):
        # a later run of another manifest (one built in code is not remembered): its ids are not known
        return Scope(manifest=start.get("manifest"), total_hint=tasks)
    named = start.get("manifest")
    cwd = start.get("cwd")
    if isinstance(named, str) and isinstance(cwd, str) and (Path(cwd) / named).resolve() != path:
        return Scope(manifest=named, total_hint=tasks)
    return Scope(
        manifest=named if isinstance(named, str) else str(path),
        order=order,
        manifest_path=path,
        settings=settings,
        cache=folder,
        manifest_sha256=sha256 if isinstance(sha256, str) else None,
        requests=requests,
    )


def _last_start(folder: Path) -> dict[str, Any]:
    """The start line of the last run that wrote one (each run log's first line): read no further."""
    for path in sorted(folder.glob("*.jsonl"), reverse=True):
        first = next(read_lines(path), None)
        if first is not None and first.get("event") == "start":
            return first
    return {}


def _checked(path: Path, settings: dict[str, Any], cache: Path | None) -> Any:
    """The manifest validated as a run would, with the run's --set and --endpoint values."""
    from batch.config import Options, checked_manifest  # the manifest code, only when a manifest is read

    options = Options(
        overrides=settings.get("overrides") or {},
        endpoints=settings.get("endpoints") or {},
        allow_unknown=bool(settings.get("allow_unknown")),
    )
    remembered = cache if cache is not None and cache.is_dir() else None
    out = cache.parent if cache is not None else None  # DIR: its ids are made as its runs made them
    return checked_manifest(path, options, settings.get("env_endpoint"), remembered, out=out)


def _expanded(path: Path, settings: dict[str, Any], order: Order, cache: Path | None) -> Iterator[Task]:
    from batch.kind import builtin_registry
    from batch.manifest.plan import iter_tasks

    checked = _checked(path, settings, cache)
    if checked.plan.order != order:
        raise BatchError("the manifest changed since the last run")
    registry = builtin_registry()

    def walk() -> Iterator[Task]:
        for spec in iter_tasks(checked.manifest, checked.builder):
            prompt, params = registry[spec.kind].describe(spec.fields)
            yield Task(
                spec.id,
                spec.kind,
                spec.model,
                prompt,
                params,
                tuple(str(info.path.absolute()) for info in spec.inputs.values()),
                dict(spec.meta),
                spec.custom_id,
            )

    return walk()


@dataclass(frozen=True)
class Entry:
    """One row of a report: a task's result line (None: pending) and the task (None: not known)."""

    record: ResultRecord | None
    task: Task | None
    orphaned: bool = False

    @property
    def id(self) -> str:
        return self.record.id if self.record is not None else self.task.id if self.task else ""

    @property
    def status(self) -> str:
        return str(self.record.status) if self.record is not None else "pending"

    @property
    def kind(self) -> str | None:
        return self.record.kind if self.record is not None else self.task.kind if self.task else None


def entries(
    root: Path,
    scope: Scope,
    lines: Lines | None = None,
    at_hand: Callable[[int], _Known | None] | None = None,
) -> Iterator[Entry | _Known]:
    """Each task the report is about. With a known manifest: in manifest order, then (with
    include_orphaned) the orphaned lines in file order; pending tasks too when some are pending and the
    manifest can be expanded (only then is it read: a finished run's order comes from the digests).
    Without: the result lines in file order, orphaned ones only with include_orphaned. One line is held
    at a time, and the byte offset of each result line (12 bytes a line, idset.LineOffsets).

    A sharded batch (`scope.parts`) is read part by part, in manifest order, then (with include_orphaned)
    each part's orphaned lines; the manifest, if it must be expanded, once; the files of its result lines
    are named from DIR (`shards/3/images/...`).

    `lines`: what `index(root, scope)` found, for a caller that looked at it first (read again if None);
    `at_hand`: given the byte offset of a task's line in results.jsonl, what the caller knows of it already
    (the page: the card it made as the run wrote the line), yielded in place of the line's Entry, which is
    then not read; None: read it. Only with `lines`, for a task's line in manifest order (an orphaned line
    is always read)."""
    if not scope.parts:
        path = root / RESULTS
        yield from _entries_in(
            path, scope.order, scope.tasks, scope.include_orphaned, lines=lines, at_hand=at_hand
        )
        return
    walk: list[Iterator[Task] | None] = []  # the manifest's tasks, walked once, when first needed
    position = 0  # of that walk

    def tasks_of(part: Part) -> Iterator[Task] | None:
        nonlocal position
        if not walk:
            walk.append(scope.tasks())
        if walk[0] is None:
            return None
        found = itertools.islice(walk[0], part.start - position, part.end - position)
        position = part.end
        return found

    for part in scope.parts:
        order = None if scope.order is None else scope.order.section(part.start, part.end)
        tasks = functools.partial(tasks_of, part)
        yield from _entries_in(root / part.folder / RESULTS, order, tasks, False, part.folder)
    if not scope.include_orphaned or scope.order is None:
        return
    for part in scope.parts:  # the orphaned lines last, as in one run directory
        known = IdSet()  # 8 bytes a task of the part, not a set's 70
        for key in scope.order.section(part.start, part.end):
            known.add_digest(key)
        known.freeze()
        for _, line in read_lines_with_offsets(root / part.folder / RESULTS):
            task_id = line.get("id")
            if not isinstance(task_id, str) or not known.contains_digest(digest(task_id)):
                yield Entry(_record(line, part.folder), None, orphaned=True)


def _record(line: dict[str, Any], folder: str) -> ResultRecord:
    """A result line of the run directory `folder` under DIR, its files named from DIR."""
    if folder and isinstance(line.get("files"), list):
        line["files"] = [f"{folder}/{name}" for name in line["files"]]
    return ResultRecord.from_line(line)


@dataclass
class Lines:
    """One pass over a results file (`index`): the byte offset of each task's last line."""

    offsets: LineOffsets  # 12 bytes a line; a dict's ~120 were most of a large run's peak memory
    _pending: tuple[Sequence[int], bool] | None = field(default=None, repr=False)

    def pending(self, order: Sequence[int]) -> bool:
        """Whether a task of `order` has no line (found once for an order: a walk of all of it)."""
        if self._pending is None or self._pending[0] is not order:
            offsets = self.offsets
            self._pending = (order, any(key not in offsets for key in order))
        return self._pending[1]


def index(root: Path, scope: Scope, upto: int | None = None) -> Lines | None:
    """The offsets pass of `entries` over DIR's results.jsonl, for the gallery, which must know before
    it reads the tasks whether a card may show a picture: None for a results file with a line that may
    name one (the pass stops at it), and for a sharded batch or a scope with no manifest (entries then
    reads its files as it goes). `upto`: only the lines that start before this byte offset (the caller
    adds the later ones, which it knows already)."""
    if scope.parts or scope.order is None:
        return None
    return _index(root / RESULTS, stop_at_pictures=True, upto=upto)


def _index(path: Path, *, stop_at_pictures: bool = False, upto: int | None = None) -> Lines | None:
    """A line that does not parse is not a task's last: the one before it of the same task is."""
    offsets = LineOffsets()
    for offset, raw, line in read_raw_lines_with_offsets(path, upto):
        if stop_at_pictures and may_name_pictures(raw):
            return None
        task_id = line.get("id")
        if isinstance(task_id, str):
            offsets.add(digest(task_id), offset)
    return Lines(offsets)


def may_name_pictures(raw: bytes) -> bool:
    """Whether a result line may name a file or an input: False only for the bytes
    ResultRecord.to_line writes for a line that names neither (`"files": []`, no `"inputs"`)."""
    return b'"inputs": [' in raw or b'"files": ["' in raw or b'"files": []' not in raw


def _entries_in(
    path: Path,
    order: Sequence[int] | None,
    tasks_of: Callable[[], Iterator[Task] | None],
    include_orphaned: bool,
    folder: str = "",
    lines: Lines | None = None,
    at_hand: Callable[[int], _Known | None] | None = None,
) -> Iterator[Entry | _Known]:
    """The entries of one results file (see `entries`); `folder`: where it is under DIR; `lines`: its
    `_index`, if made already; `at_hand`: as `entries` says."""
    record = functools.partial(_record, folder=folder)

    if order is None:
        for _, line in read_lines_with_offsets(path):
            yield Entry(record(line), None)
        return
    if lines is None:
        lines = _index(path)
        assert lines is not None
    offsets = lines.offsets
    pending = lines.pending(order)
    tasks = tasks_of() if pending else None
    with contextlib.ExitStack() as stack:
        handle = stack.enter_context(path.open("rb")) if offsets else None

        def read(key: int, task: Task | None) -> Entry | _Known | None:
            """The entry of the task of digest `key`, None if it has no line (or its line is damaged)."""
            at = offsets.pop(key)
            if at is None or handle is None:
                return None
            if at_hand is not None:
                ready = at_hand(at)
                if ready is not None:
                    return ready
            found = read_line_at(handle, at)
            return None if found is None else Entry(record(found), task)

        if tasks is not None:
            for task in tasks:
                item = read(digest(task.id), task)
                yield Entry(None, task) if item is None else item
        else:  # every task has its line (or the manifest cannot be read): the order of the digests
            for key in order:
                done = read(key, None)
                if done is not None:
                    yield done
        if include_orphaned and handle is not None:
            for at in offsets.left():
                found = read_line_at(handle, at)
                if found is not None:
                    yield Entry(record(found), None, orphaned=True)
