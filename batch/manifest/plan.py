"""The two walks over a manifest: `check_manifest` validates every task before anything is sent, and
`iter_tasks` streams the TaskSpecs to the dispatcher. Neither holds the tasks in memory.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from batch.errors import ManifestError, Problem
from batch.kind import TokenCounts, openai_batch_urls
from batch.manifest.expand import Expander, expands
from batch.manifest.ids import READABLE_IDS, USED_COLUMN_IDS, valid_id
from batch.manifest.read import Entry, Manifest, Mark
from batch.manifest.tasks import TaskBuilder, TaskSpec
from batch.running.idset import IdSet, digest
from batch.running.order import Order

KEEP_PROBLEMS = 200
SAME_LINES_SHOWN = 3  # lines shown of one problem met at many (a JSONL file's tasks): the rest are counted
MARK_EVERY = 1024  # tasks between two marks of a check walk: where a shard's walk may start


@dataclass
class Plan:
    """What a manifest holds, or what is wrong with it."""

    manifest: str
    total: int = 0
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (kind, model, endpoint)
    problems: list[Problem] = field(default_factory=list)
    repeats: Counter[Problem] = field(default_factory=Counter)  # same problem again in more tasks
    # a problem met at more lines than SAME_LINES_SHOWN (every line of a JSONL manifest without an
    # endpoint): its last line shown, and the last line it was met at, by the problem without its line
    _spread: dict[Problem, tuple[Problem, int, int | None]] = field(default_factory=dict, repr=False)
    dropped: int = 0  # problems past KEEP_PROBLEMS
    order: Order = field(default_factory=Order)  # every task's id digest, in manifest order (on disk)
    # every task's request (TaskSpec.request, its 16 hex digits as a number), in manifest order: a finished
    # task whose result line names another is found changed since it ran (finishedset.find_changed)
    requests: Order = field(default_factory=Order)
    # estimated tokens per (kind, model): [input, image input, output]
    estimates: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    # an entry's first task every MARK_EVERY tasks or more, in order: a shard's walk starts at the last
    # mark before it rather than at the manifest's start (empty for a remembered plan: walk from the start)
    marks: list[Mark] = field(default_factory=list)
    # what does not refuse the plan but is said: an entry's prompt file or records that hold no task (not
    # kept with a remembered plan, whose walk is not made again)
    warnings: list[Problem] = field(default_factory=list)
    # made from `order` when first asked for (a fresh run never asks); a plan with problems holds its own
    _ids: IdSet | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def ids(self) -> IdSet:
        """Every task id, 8 bytes each (and those of tasks with problems); made from `order` when first
        asked for, and again after `release_ids`."""
        return self._ids if self._ids is not None else self.hold_ids()

    def hold_ids(self, others: Iterable[int] = ()) -> IdSet:
        """Make and keep an id set of the order's digests and `others` (the ids of tasks with problems)."""
        ids = IdSet()
        for key in itertools.chain(self.order, others):
            ids.add_digest(key)
        ids.freeze()
        self._ids = ids
        return ids

    def release_ids(self) -> None:
        """Let go of the id set (8 bytes a task) until it is asked for again: a run's end reads it no
        more. Only a valid plan's: its ids are its order's digests, so that they can be made again."""
        if self.ok:
            self._ids = None

    def mark_before(self, position: int) -> Mark | None:
        """The last mark at or before `position`, if any."""
        found = bisect.bisect_right(self.marks, position, key=lambda mark: mark.position)
        return self.marks[found - 1] if found else None

    def estimate(self, kind: str, model: str, tokens: TokenCounts) -> None:
        sums = self.estimates.setdefault((kind, model), [0, 0, 0])
        sums[0] += tokens.input
        sums[1] += tokens.image_input
        sums[2] += tokens.output

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def config_only(self) -> bool:
        """Every problem is missing configuration (an endpoint), not a wrong manifest."""
        return bool(self.problems) and all(p.config for p in self.problems)

    def add(self, problem: Problem) -> None:
        """Keep `problem`, or count it as another task's of one kept: the same problem at the same line
        (a bad default, met by each task it reaches), or at a line past the first SAME_LINES_SHOWN it
        was met at (the same mistake on every line of a JSONL manifest: three lines, and a count)."""
        key = _key(problem)
        if key in self.repeats:
            self.repeats[key] += 1
            return
        anywhere = replace(key, line=None)
        shown, lines, _ = self._spread.get(anywhere, (key, 0, None))
        if lines >= SAME_LINES_SHOWN:
            self.repeats[shown] += 1
            self._spread[anywhere] = (shown, lines, problem.line)
        elif len(self.problems) < KEEP_PROBLEMS:
            self.problems.append(problem)
            self.repeats[key] = 0
            self._spread[anywhere] = (key, lines + 1, None)
        else:
            self.dropped += 1

    @property
    def unshown(self) -> int:
        """Problems found but not in `problems`: past KEEP_PROBLEMS, or the same as one kept."""
        return self.dropped + sum(self.repeats.values())

    def error(self) -> ManifestError:
        return ManifestError(self.problems, more=self.unshown)

    def describe(self, problem: Problem) -> str:
        """The problem as one line, saying how many more tasks share it (a bad default hits them all),
        and, for one met at many lines, the last of them."""
        key = _key(problem)
        again = self.repeats.get(key, 0)
        if not again:
            return str(problem)
        shown, _, last = self._spread.get(replace(key, line=None), (key, 0, None))
        reach = f", to line {last}" if shown == key and last is not None else ""
        return f"{problem} [and in {again:,} more task{'s' if again > 1 else ''}{reach}]"


def _key(problem: Problem) -> Problem:
    """A problem without its task: the same mistake at the same place, whichever task met it."""
    return Problem(
        problem.file, problem.line, problem.message, None, problem.field, problem.value, problem.config
    )


def walk(
    manifest: Manifest,
    builder: TaskBuilder,
    skip: Callable[[int], bool] | None = None,
    begin: Mark | None = None,
    warn: Callable[[Problem], None] | None = None,
) -> Iterator[tuple[Entry | None, TaskSpec | list[Problem]]]:
    """Each task of the manifest, expanded and built, or the problems that stop it from being built,
    beside the entry it came from (None for problems of the manifest itself). `skip(position)` may pass
    over a task of a valid manifest before it is rendered or built (finished ones, on resume). `begin`:
    a mark of a check walk of this manifest (Plan.marks): the walk starts there, at its position.
    `warn` is told of each entry's file that holds no task (an empty prompt file)."""
    if builder.problems:
        yield None, builder.problems
    scheme = builder.settings.id_scheme
    expander = Expander(
        manifest.name,
        manifest.folder,
        builder.registry,
        builder.sources,
        transliterate=scheme >= READABLE_IDS,
        used_column=scheme >= USED_COLUMN_IDS,
        warn=warn,
    )
    if begin is not None and manifest.format == "jsonl" and begin.offset is None:
        begin = None  # a mark of a line it cannot seek to: from the start
    position = -1 if begin is None else begin.position - 1

    def passed() -> bool:
        nonlocal position
        position += 1
        return skip is not None and skip(position)

    for entry in manifest.entries(openai_batch_urls(builder.registry), begin):
        if isinstance(entry, Problem):
            yield None, [entry]
            continue
        # most entries: the task itself, as the expander gives it, without the expander's generator
        if not expands(entry.data):
            if skip is None or not passed():
                yield entry, builder.build(entry)
            continue
        for item in expander.expand(entry, passed if skip is not None else None):
            if isinstance(item, Problem):
                yield None, [item]
            else:
                yield item, builder.build(item)


def _identity(entry: Entry | None, item: TaskSpec | list[Problem]) -> tuple[str, str, int | None] | None:
    """(id, label, line) of a task: a built one's, or the explicit id of one that has other problems, so
    that duplicate ids are found in the same run as everything else."""
    if isinstance(item, TaskSpec):
        return item.id, item.label, item.line
    task_id = entry.data.get("id") if entry is not None else None
    if entry is not None and isinstance(task_id, str) and valid_id(task_id):
        return task_id, entry.label, entry.line
    return None


def check_manifest(manifest: Manifest, builder: TaskBuilder) -> Plan:
    """Validate every task, and that ids are unique. Streams: the order (8 bytes a task) goes to a
    temporary file a window at a time, and the ids are found unique in it, not in an id set beside it."""
    plan = Plan(manifest.name)
    others = Order()  # the ids of tasks with problems, which have no place in the order
    kinds: set[str] = set()  # of every task, built or not: what --set and --endpoint may reach
    last = -1  # the index of the last entry a task came from
    for entry, item in walk(manifest, builder, warn=plan.warnings.append):
        if entry is not None and isinstance(entry.data.get("kind"), str):
            kinds.add(entry.data["kind"])
        if isinstance(item, TaskSpec):
            if entry is not None and entry.index != last:  # an entry's first task
                last = entry.index
                if not plan.marks or plan.total - plan.marks[-1].position >= MARK_EVERY:
                    plan.marks.append(Mark(plan.total, entry.index, entry.line, entry.offset))
            plan.total += 1
            model = item.model or "-"
            plan.counts[(item.kind, model, item.endpoint)] += 1
            plan.order.append(digest(item.id))
            plan.requests.append(int(item.request or "0", 16))
            plan.estimate(item.kind, model, builder.registry[item.kind].estimate(item.fields))
        else:
            for problem in item:
                plan.add(problem)
            identity = _identity(entry, item)
            if identity is not None:
                others.append(digest(identity[0]))
    repeated = plan.order.repeated(others)
    if repeated:
        _report_duplicates(manifest, builder, repeated, plan)
    # with the manifest's own problems too (a typo under defaults:), so that every mistake is said at once;
    # the models of tasks with problems are not known: a model's --endpoint is checked on a valid plan
    models = {model for _, model, _ in plan.counts} if plan.ok else None
    for problem in builder.unused_settings(kinds, models):
        plan.add(problem)
    if models is not None:
        plan.warnings += builder.unused_file_prices(models)
    if not plan.ok:  # its ids are not all in its order
        plan.hold_ids(others)
    return plan


def _report_duplicates(manifest: Manifest, builder: TaskBuilder, repeated: set[int], plan: Plan) -> None:
    first: dict[str, tuple[str, int | None]] = {}
    for entry, item in walk(manifest, builder):
        identity = _identity(entry, item)
        if identity is None or digest(identity[0]) not in repeated:
            continue
        task_id, label, line = identity
        if task_id in first:
            where, where_line = first[task_id]
            message = f"the id {task_id!r} is already used by {where} (line {where_line}); ids must be unique"
            plan.add(Problem(manifest.name, line, message, task=label, field="id"))
        else:
            first[task_id] = (label, line)


CHANGED = "the manifest, or a file its tasks come from, changed during the run; run again to check it"


def iter_tasks(
    manifest: Manifest,
    builder: TaskBuilder,
    skip: Callable[[int], bool] | None = None,
    changed: Callable[[], bool] | None = None,
    begin: Mark | None = None,
    order: Sequence[int] | None = None,
) -> Iterator[TaskSpec]:
    """The TaskSpecs of a manifest that `check_manifest` passed, but for the positions `skip` passes over
    (from the mark `begin` of that check, if given). A manifest, or a file its tasks are expanded from,
    that `changed` (asked every 64 tasks, from the first), or an input file that fails its checks now,
    raises ManifestError rather than sending a task that was never checked. With the plan's `order`, so
    does a task that is not the one the check found at its position, or one past the last: a manifest
    rewritten or appended to between two of `changed`'s looks (a long stretch of finished tasks on a
    resume) stops the walk there, rather than sending a task twice or one never checked. Each task is
    encoded again (TaskSpec.request): its result line names what is sent, whatever changed on disk since
    the check (an input image replaced, a line edited between two of `changed`'s looks)."""
    position = -1

    def passed(at: int) -> bool:
        nonlocal position
        position = at
        if order is not None and at >= len(order):
            raise ManifestError([Problem(manifest.name, None, CHANGED)])
        return skip is not None and skip(at)

    watched = passed if skip is not None or order is not None else None
    for count, (_, item) in enumerate(walk(manifest, builder, watched, begin)):
        if changed is not None and count % 64 == 0 and changed():
            raise ManifestError([Problem(manifest.name, None, CHANGED)])
        if not isinstance(item, TaskSpec):
            raise ManifestError(item)
        if order is not None and digest(item.id) != order[position]:
            raise ManifestError([Problem(manifest.name, item.line, CHANGED)])
        yield item
