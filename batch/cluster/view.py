"""What a sharded DIR holds (`status DIR` when DIR/cluster/plan.json is there): per shard and in total,
tasks succeeded, failed and pending; shards pending, running (a run holds the shard's directory now) and
done. Read-only and streaming; needs no Redis (the directories are the truth)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batch.cluster.plan import read_plan, shard_dir
from batch.errors import DirLockedError
from batch.output.lock import probe
from batch.output.runlog import account
from batch.output.store import RESULTS, RUNS, USAGE, finished_results, read_lines


def _held(root: Path) -> bool:
    try:
        probe(root)
    except DirLockedError:
        return True
    return False


def _lines(path: Path) -> int:
    return sum(1 for _ in read_lines(path))


def shard_status(root: Path, index: int, size: int) -> dict[str, Any]:
    directory = shard_dir(root, index)
    succeeded = failed = 0
    for _, task_failed in finished_results(directory / RESULTS):
        failed += task_failed
        succeeded += not task_failed
    running = directory.is_dir() and _held(directory)
    state = "running" if running else "done" if succeeded + failed >= size else "pending"
    attempts = account(directory / RUNS, live=running)
    return {
        "shard": index,
        "state": state,
        "tasks": size,
        "succeeded": succeeded,
        "failed": failed,
        "pending": max(0, size - succeeded - failed),
        "billed_answers": _lines(directory / USAGE),
        "maybe_billed": attempts.maybe_billed,  # requests of killed runs (workers) with no saved answer
        "in_flight": attempts.in_flight,
    }


def cluster_status(root: Path) -> dict[str, Any]:
    """The whole batch and each shard (see the module's docstring)."""
    plan = read_plan(root)
    shards = [shard_status(root, shard.index, shard.size) for shard in plan.each_shard()]
    counted = ("succeeded", "failed", "pending", "billed_answers", "maybe_billed", "in_flight")
    totals = {name: sum(s[name] for s in shards) for name in counted}
    states = {state: sum(s["state"] == state for s in shards) for state in ("pending", "running", "done")}
    return {
        "directory": str(root),
        "manifest": plan.manifest,
        "queue": plan.queue,
        "tasks": plan.total,
        **totals,
        "shards": {"total": len(shards), **states},
        "per_shard": shards,
    }


def format_cluster_status(found: Mapping[str, Any], *, every_shard: bool = True) -> str:
    shards = found["shards"]
    lines = [
        f"{found['directory']}: {found['succeeded']:,} succeeded, {found['failed']:,} failed, "
        f"{found['pending']:,} pending (of {found['tasks']:,}), in {shards['total']:,} shards",
        f"billed answers: {found['billed_answers']:,}; maybe billed without a saved result: "
        f"{found['maybe_billed']:,}"
        + (f"; {found['in_flight']:,} in flight now" if found["in_flight"] else ""),
        f"shards: {shards['done']:,} done, {shards['running']:,} running, {shards['pending']:,} pending"
        f" (queue {found['queue']})",
    ]
    if every_shard:
        for shard in found["per_shard"]:
            lines.append(
                f"  shard {shard['shard']}: {shard['state']}, {shard['succeeded']:,} succeeded, "
                f"{shard['failed']:,} failed, {shard['pending']:,} pending"
            )
    return "\n".join(lines)
