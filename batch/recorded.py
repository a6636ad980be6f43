"""What a run directory holds, for Python: `batch.results(out)` yields every recorded result, so that a
pipeline that resumes gets the whole set back, not only what finished in this call.

    for result in batch.results("runs/labels", manifest="labels.yaml"):
        print(result.id, result.status, result.text)

With a manifest, the results of its tasks come in manifest order and the lines of tasks no longer in it
(a prompt fixed, a quality raised) are left out; without one, every line comes in the order it was written.
A task that has not finished yet has no result.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Unpack

from batch.config import Options, OptionValues, checked_manifest, endpoint_for
from batch.errors import UsageError
from batch.kind import TaskKind
from batch.kind import builtin_registry as registry
from batch.manifest.checked import CheckedManifest
from batch.manifest.plan import iter_tasks
from batch.manifest.read import Manifest
from batch.output.store import RESULTS, read_line_at, read_lines_with_offsets, requested_results
from batch.running.finishedset import changed_digests
from batch.running.idset import IdSet, LineOffsets, digest
from batch.running.records import ResultRecord
from batch.values import StoreUrl, output_location


@dataclass(frozen=True)
class Result:
    """One finished task, as results.jsonl holds it (`record`), with paths made absolute."""

    id: str
    kind: str
    status: str  # "succeeded" | "failed"
    files: tuple[Path, ...]  # the images saved, under DIR
    text: str | None  # a chat answer
    usage: Mapping[str, Any] | None
    cost: float | None  # US dollars; None when the model has no price
    attempts: int
    error: Mapping[str, Any] | None  # type, status, message (a failure)
    meta: Mapping[str, Any]  # the `meta` of the task's input record
    record: Mapping[str, Any] = field(repr=False)

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @classmethod
    def from_record(cls, record: Mapping[str, Any], out: Path) -> Result:
        """A result line as a Result, read through records.ResultRecord (a line edited by hand or
        garbled gives what it can, never an error)."""
        line = ResultRecord.from_line(record)
        error = record.get("error")
        return cls(
            id=line.id,
            kind=str(line.kind or ""),
            status=str(line.status or ""),
            files=tuple(out / name for name in line.files),
            text=line.text,
            usage=line.usage,
            cost=line.cost,
            attempts=line.attempts,
            error=error if isinstance(error, Mapping) else None,
            meta=line.meta or {},
            record=record,
        )


def local_dir(out: str | Path) -> Path:
    """The library's output: a local directory (a path, or file:///absolute/path). An output on a store
    (s3://..., az://...) is the command line's (`maas-batch run --out URL` stages it locally and saves as
    it goes); taken as a path, `s3://bucket/x` would have been a folder named `s3:` here."""
    if isinstance(out, Path):
        return out
    try:
        where = output_location(str(out))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if isinstance(where, StoreUrl):
        raise UsageError(
            f"{out}: the library runs into and reads a local directory; an output on a store is the "
            "command line's (maas-batch run --out URL)"
        )
    return where


def results(
    out: str | Path,
    manifest: str | Path | Manifest | None = None,
    *,
    kinds: Iterable[TaskKind] = (),
    **options: Unpack[OptionValues],
) -> Iterator[Result]:
    """Every result recorded in `out`. With `manifest` (validated as `run` would, with the same
    `options`: `overrides`, `endpoints`...), only its tasks', in its order. Reads; never sends."""
    chosen = Options(**options)  # a misspelt option is a TypeError, with a manifest or without
    root = local_dir(out).absolute()
    if manifest is None:
        for _, record in read_lines_with_offsets(root / RESULTS):
            if isinstance(record.get("id"), str):
                yield Result.from_record(record, root)
        return
    checked = checked_manifest(manifest, chosen, endpoint_for(chosen), None, registry(kinds), root)
    yield from in_manifest_order(checked, root)


def in_manifest_order(
    checked: CheckedManifest, root: Path, *, failed: bool = True, changed: bool = True
) -> Iterator[Result]:
    """The recorded results of a valid manifest's tasks, in its order (`failed`: the failed ones too;
    `changed`: those of tasks whose request changed since, find_changed's, too). Holds an offset per
    line (12 bytes, idset.LineOffsets), not the lines."""
    path = root / RESULTS
    plan = checked.plan
    rerun = IdSet()
    if not changed:
        rerun = changed_digests(plan.order, plan.requests, lambda: requested_results(path))
    where = LineOffsets()
    for offset, record in read_lines_with_offsets(path):
        if isinstance(record.get("id"), str):
            where.add(digest(record["id"]), offset)  # the last line of a task is its result
    if not where:
        return
    with path.open("rb") as handle:
        for spec in iter_tasks(checked.manifest, checked.builder):  # ids are unique: each asked once
            at = where.pop(digest(spec.id))
            found = None if at is None else read_line_at(handle, at)
            if found is None or (not failed and found.get("status") == "failed"):
                continue
            if not rerun or not rerun.contains_digest(digest(spec.id)):
                yield Result.from_record(found, root)
