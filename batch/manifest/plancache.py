"""A validated plan, remembered in DIR, so that resuming a large unchanged manifest skips the validation
walk (about 30 s for a million tasks) and does not rebuild the tasks already finished.

What a plan depends on, all checked before it is used: the tool's version, the manifest's bytes (sha256),
the command line's --set and --endpoint and the environment's endpoint, and every file the tasks were made
from (prompt files, CSVs, input images: size and modification time; globs: the files they match). Any
change and the manifest is validated again, in full.

    DIR/.cache/plan.json   the key, the files, the counts
    DIR/.cache/plan.ids    every task's id digest, 8 bytes each, in manifest order
    DIR/.cache/plan.requests  every task's request digest (TaskSpec.request), 8 bytes each, in order
"""

from __future__ import annotations

import glob as globbing
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch import __version__
from batch.manifest.read import Mark
from batch.manifest.regular import open_regular
from batch.output.files import real_folder, write_atomic, write_atomic_chunks
from batch.running.order import Order

if TYPE_CHECKING:
    from batch.manifest.plan import Plan

FOLDER = ".cache"
PLAN = "plan.json"
IDS = "plan.ids"
REQUESTS = "plan.requests"


@dataclass
class Sources:
    """The files a manifest's tasks were made from, as they were when it was validated."""

    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (size, mtime_ns)
    globs: dict[str, list[str]] = field(default_factory=dict)  # pattern -> matched paths
    expanded: set[str] = field(default_factory=set)  # of files, those tasks are expanded from (few)

    def file(self, path: Path, expanded: bool = False) -> None:
        self.files[str(path)] = _stat(path)
        if expanded:
            self.expanded.add(str(path))

    def expansion_changed(self) -> bool:
        """Whether a file that tasks are expanded from (the manifest, a prompt file, a CSV) changed: cheap
        enough to ask again and again during a run."""
        return any(_stat(Path(path)) != tuple(self.files[path]) for path in self.expanded)

    def glob(self, pattern: str, matches: Iterable[Path]) -> None:
        self.globs[pattern] = [str(p) for p in matches]

    def unchanged(self) -> bool:
        if any(_stat(Path(path)) != tuple(seen) for path, seen in self.files.items()):
            return False
        return all(
            sorted(p for p in globbing.glob(pattern, recursive=True) if Path(p).is_file()) == matched
            for pattern, matched in self.globs.items()
        )


def _stat(path: Path) -> tuple[int, int]:
    try:
        info = path.stat()
    except (OSError, ValueError):
        return (-1, -1)
    return (info.st_size, info.st_mtime_ns)


# of the remembered plan; 2: with estimates; 3: with the marks where a walk may start; 4: with requests
FORMAT = 4


def key(manifest: Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """What, besides the source files, a plan depends on."""
    digest = hashlib.sha256()
    with open_regular(manifest) as handle:  # a FIFO or a device is refused (OSError), not read for ever
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {
        "format": FORMAT,
        "version": __version__,
        "manifest": str(manifest.resolve()),
        "sha256": digest.hexdigest(),
        "settings": json.loads(json.dumps(settings, sort_keys=True, default=str)),
    }


@dataclass
class CachedPlan:
    total: int
    counts: Counter[tuple[str, str, str]]
    order: Order  # id digests in manifest order, as DIR/.cache/plan.ids holds them
    requests: Order  # request digests in manifest order, as DIR/.cache/plan.requests holds them
    sources: Sources
    estimates: dict[tuple[str, str], list[int]]
    marks: list[Mark]
    changed: Changed | None = None  # what the run that remembered it found changed, if it looked


@dataclass(frozen=True)
class Changed:
    """How many finished tasks had result lines of another request than the plan's (find_changed), when
    results.jsonl and results.retried.jsonl were so many bytes long. The runs that append to them after
    are this plan's (another plan's run remembers its own), so their lines are of its requests: while
    results.jsonl only grew and results.retried.jsonl did not change, the count holds. Not quite: a run
    that remembers no plan (one from the library with a manifest built in code, one whose plan could not
    be saved) may add lines of other requests, uncounted until results.jsonl is rewritten. It can only
    leave a warning unsaid, never send a task."""

    count: int
    results_size: int
    retried_size: int

    def holds(self, results_size: int, retried_size: int) -> bool:
        return results_size >= self.results_size and retried_size == self.retried_size

    def as_json(self) -> list[int]:
        return [self.count, self.results_size, self.retried_size]

    @classmethod
    def from_json(cls, value: Any) -> Changed | None:
        """What as_json wrote, or None for anything else."""
        if isinstance(value, list) and len(value) == 3 and all(type(number) is int for number in value):
            return cls(*value)
        return None


def save(
    folder: Path,
    plan_key: Mapping[str, Any],
    sources: Sources,
    total: int,
    counts: Mapping[tuple[str, str, str], int],
    order: Order,
    estimates: Mapping[tuple[str, str], list[int]],
    marks: Iterable[Mark] = (),
    requests: Order | None = None,
    changed: Changed | None = None,
) -> None:
    """Remember a valid plan (call while holding DIR's lock). OutputError if `folder` is a link. Without
    `requests` (a caller that has none), the plan is remembered with none: the next run checks it
    again."""
    real_folder(folder)
    ids, sent = hashlib.sha256(), hashlib.sha256()
    write_atomic_chunks(folder / IDS, _hashed(order.blocks(), ids))
    if requests is not None:
        write_atomic_chunks(folder / REQUESTS, _hashed(requests.blocks(), sent))
    document = {
        "key": plan_key,
        "files": sources.files,
        "globs": sources.globs,
        "expanded": sorted(sources.expanded),
        "estimates": [[*k, *v] for k, v in estimates.items()],
        "total": total,
        "counts": [[*k, n] for k, n in counts.items()],
        "ids_sha256": ids.hexdigest(),  # of the bytes order.tobytes() gives
        "requests_sha256": None if requests is None else sent.hexdigest(),
        "changed": None if changed is None else changed.as_json(),
        "marks": [[mark.position, mark.index, mark.line, mark.offset] for mark in marks],
    }
    write_atomic(folder / PLAN, json.dumps(document).encode())


def save_plan(
    folder: Path, plan_key: Mapping[str, Any], sources: Sources, plan: Plan, changed: Changed | None = None
) -> None:
    """save() of a checked plan's parts."""
    save(
        folder,
        plan_key,
        sources,
        plan.total,
        plan.counts,
        plan.order,
        plan.estimates,
        plan.marks,
        plan.requests,
        changed,
    )


def note_changed(folder: Path, changed: Changed) -> None:
    """Put what a run found changed (found again: what the plan held no longer held) in the plan
    remembered in `folder`, which is left as it is otherwise. OutputError if it cannot be written."""
    try:
        document = json.loads((folder / PLAN).read_bytes())
    except (OSError, ValueError):
        return  # no plan remembered: nothing to note it in
    if isinstance(document, dict):
        document["changed"] = changed.as_json()
        write_atomic(folder / PLAN, json.dumps(document).encode())


def _hashed(blocks: Iterable[bytes], digest: Any) -> Iterator[bytes]:
    """`blocks`, each added to `digest` (a hashlib object) on the way: the order is read once."""
    for block in blocks:
        digest.update(block)
        yield block


def load(folder: Path, plan_key: Mapping[str, Any]) -> CachedPlan | None:
    """The remembered plan, if everything it depends on is unchanged; None otherwise."""
    try:
        document = json.loads((folder / PLAN).read_bytes())
        order = Order.from_file(folder / IDS)  # a window at a time, into the order's own temporary file
        if not isinstance(document, dict) or document.get("key") != json.loads(json.dumps(plan_key)):
            return None
        if order.sha256() != document.get("ids_sha256"):
            return None
        requests = remembered_requests(folder, document, len(order))
        if requests is None:
            return None
    except (OSError, ValueError):
        return None
    sources = Sources(
        {k: (v[0], v[1]) for k, v in document.get("files", {}).items()},
        document.get("globs", {}),
        set(document.get("expanded", [])),
    )
    if not sources.unchanged():
        return None
    counts: Counter[tuple[str, str, str]] = Counter()
    for kind, model, endpoint, n in document.get("counts", []):
        counts[(kind, model, endpoint)] = n
    if len(order) != document.get("total"):
        return None
    if "estimates" not in document:  # a plan from before estimates: --max-cost's price check needs them
        return None
    estimates = {(kind, model): [i, im, o] for kind, model, i, im, o in document["estimates"]}
    marks = _marks(document.get("marks"), len(order))
    if marks is None:  # a walk started at a wrong mark would pass over tasks never sent: check it again
        return None
    changed = Changed.from_json(document.get("changed"))
    return CachedPlan(int(document["total"]), counts, order, requests, sources, estimates, marks, changed)


def remembered_requests(folder: Path, document: Mapping[str, Any], count: int) -> Order | None:
    """The requests of the plan remembered in `folder` (its plan.json's `document`), if they are the ones
    it names and one for each of its `count` tasks; None otherwise (a plan from before them)."""
    try:
        requests = Order.from_file(folder / REQUESTS)
    except (OSError, ValueError):
        return None
    if len(requests) != count or requests.sha256() != document.get("requests_sha256"):
        return None
    return requests


def _marks(value: Any, total: int) -> list[Mark] | None:
    """The marks plan.json holds, or None if they are not what `save` writes: [position, entry index,
    line, byte offset] each, positions rising from 0 and under `total`, line and offset numbers or null."""
    if not isinstance(value, list):
        return None
    marks: list[Mark] = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 4):
            return None
        position, index, line, offset = item
        if not all(type(number) is int for number in (position, index)):
            return None
        if not all(number is None or type(number) is int for number in (line, offset)):
            return None
        if not (marks[-1].position if marks else -1) < position < total or index < 0:
            return None
        marks.append(Mark(position, index, line, offset))
    return marks
