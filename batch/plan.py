"""The two walks over a manifest: `check_manifest` validates every task before anything is sent, and
`iter_tasks` streams the TaskSpecs to the dispatcher. Neither holds the tasks in memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from batch.errors import ManifestError, Problem
from batch.idset import IdSet, digest
from batch.manifest import Manifest
from batch.tasks import TaskBuilder, TaskSpec

KEEP_PROBLEMS = 200


@dataclass
class Plan:
    """What a manifest holds, or what is wrong with it."""

    manifest: str
    total: int = 0
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (kind, model, endpoint)
    problems: list[Problem] = field(default_factory=list)
    repeats: Counter[Problem] = field(default_factory=Counter)  # same problem again in more tasks
    dropped: int = 0  # problems past KEEP_PROBLEMS
    ids: IdSet = field(default_factory=IdSet)  # every task id, 8 bytes each

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def config_only(self) -> bool:
        """Every problem is missing configuration (an endpoint), not a wrong manifest."""
        return bool(self.problems) and all(p.config for p in self.problems)

    def add(self, problem: Problem) -> None:
        key = _key(problem)
        if key in self.repeats:
            self.repeats[key] += 1
        elif len(self.problems) < KEEP_PROBLEMS:
            self.problems.append(problem)
            self.repeats[key] = 0
        else:
            self.dropped += 1

    def error(self) -> ManifestError:
        return ManifestError(self.problems, more=self.dropped)

    def describe(self, problem: Problem) -> str:
        """The problem as one line, saying how many more tasks share it (a bad default hits them all)."""
        again = self.repeats.get(_key(problem), 0)
        return str(problem) + (f" [and in {again} more task{'s' if again > 1 else ''}]" if again else "")


def _key(problem: Problem) -> Problem:
    """A problem without its task: the same mistake at the same place, whichever task met it."""
    return Problem(
        problem.file, problem.line, problem.message, None, problem.field, problem.value, problem.config
    )


def walk(manifest: Manifest, builder: TaskBuilder) -> Iterator[TaskSpec | list[Problem]]:
    """Each task of the manifest, built, or the problems that stop it from being built."""
    if builder.problems:
        yield builder.problems
    for entry in manifest.entries():
        if isinstance(entry, Problem):
            yield [entry]
        else:
            yield builder.build(entry)


def check_manifest(manifest: Manifest, builder: TaskBuilder) -> Plan:
    """Validate every task, and that ids are unique. Streams; holds 8 bytes per task."""
    plan = Plan(manifest.name)
    ids = plan.ids
    for item in walk(manifest, builder):
        if isinstance(item, TaskSpec):
            plan.total += 1
            plan.counts[(item.kind, item.model or "-", item.endpoint)] += 1
            ids.add(item.id)
        else:
            for problem in item:
                plan.add(problem)
    repeated = ids.repeated()
    if repeated:
        _report_duplicates(manifest, builder, repeated, plan)
    return plan


def _report_duplicates(manifest: Manifest, builder: TaskBuilder, repeated: set[int], plan: Plan) -> None:
    first: dict[str, TaskSpec] = {}
    for item in walk(manifest, builder):
        if isinstance(item, TaskSpec) and digest(item.id) in repeated:
            if item.id in first:
                where = first[item.id]
                plan.add(
                    Problem(
                        item.file,
                        item.line,
                        f"the id {item.id!r} is already used by {where.label} "
                        f"(line {where.line}); ids must be unique",
                        task=item.label,
                        field="id",
                    )
                )
            else:
                first[item.id] = item


def iter_tasks(manifest: Manifest, builder: TaskBuilder) -> Iterator[TaskSpec]:
    """The TaskSpecs of a manifest that `check_manifest` passed. A manifest (or an input file) changed
    since then raises ManifestError rather than sending a task that was never checked."""
    for item in walk(manifest, builder):
        if not isinstance(item, TaskSpec):
            raise ManifestError(item)
        yield item
