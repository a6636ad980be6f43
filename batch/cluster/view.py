"""What a sharded DIR holds (`status DIR` when DIR/cluster/plan.json is there): per shard and in total,
tasks succeeded, failed and pending; shards pending, running (a run holds the shard's directory now) and
done. Read-only and streaming; needs no Redis (the directories are the truth).

`report`, `export` and the gallery read a sharded DIR through `batch_scope`: the manifest's order (the
tasks' id digests, DIR/cluster/order.ids, written by submit) and the shards as parts of it
(output.scope.Part); `report` is each shard's report, summed (`merge_reports`).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.cluster.plan import SHARDS, BatchPlan, order_digest, read_plan, shard_dir
from batch.errors import DirLockedError, OutputError
from batch.output.files import write_atomic_chunks
from batch.output.lock import probe
from batch.output.report import SLOWEST, maybe_billed_parts, maybe_billed_said, report
from batch.output.runlog import account
from batch.output.scope import Part, Scope
from batch.output.store import RESULTS, RUNS, USAGE, finished_results, read_lines
from batch.running.order import Order
from batch.running.prices import PriceTable, money

if TYPE_CHECKING:
    from batch.cluster.queue import QueueState

log = logging.getLogger("batch.cluster.view")

ORDER = Path("cluster") / "order.ids"  # the tasks' 8-byte id digests, in manifest order


def write_order(root: Path, order: Order) -> None:
    """DIR/cluster/order.ids, for the readers: the manifest's order without a walk of the manifest."""
    try:
        write_atomic_chunks(root / ORDER, order.blocks())
    except OSError as exc:
        raise OutputError(f"cannot write {root / ORDER}: {exc.strerror or exc}") from exc


def read_order(root: Path, plan: BatchPlan) -> Order | None:
    """The order submit wrote, if it is the plan's (None: not there, e.g. a batch of an older version),
    read a window at a time (Order.from_file)."""
    try:
        order = Order.from_file(root / ORDER)
        if len(order) != plan.total or order_digest(order) != plan.order_digest:
            log.warning("%s is not the order of the submitted manifest: it is not used", root / ORDER)
            return None
    except (OSError, ValueError):
        return None
    return order


def batch_scope(
    root: Path, settings: Mapping[str, Any] | None = None, *, include_orphaned: bool = False
) -> Scope:
    """The scope of `report`, `export` and the gallery on a sharded DIR: every shard, in manifest order.
    `settings` (the shards' --set, --endpoint... as output.scope keeps them) let pending tasks be shown:
    the manifest is then expanded, once."""
    plan = read_plan(root)
    order = read_order(root, plan)
    return Scope(
        manifest=plan.manifest,
        order=order,
        include_orphaned=include_orphaned,
        manifest_path=Path(plan.manifest) if settings is not None else None,
        settings={**(settings or {}), "env_endpoint": plan.endpoint},
        total_hint=plan.total,
        parts=tuple(Part(f"{SHARDS}/{s.index}", s.start, s.end) for s in plan.each_shard()),
    )


def part_scope(scope: Scope, part: Part) -> Scope:
    """The scope of one shard's own directory: its slice of the manifest."""
    order = None if scope.order is None else scope.order.section(part.start, part.end)
    return Scope(
        manifest=scope.manifest,
        order=order,
        include_orphaned=scope.include_orphaned,
        total_hint=part.end - part.start,
    )


def cluster_report(root: Path, scope: Scope, prices: PriceTable, *, reprice: bool = False) -> dict[str, Any]:
    """`report` of a sharded DIR: each shard's, summed, with a line per shard."""
    found = []
    for part in scope.parts:
        found.append(report(root / part.folder, prices, reprice=reprice, scope=part_scope(scope, part)))
    merged = merge_reports(found)
    merged.update(directory=str(root), manifest=scope.manifest)
    merged["per_shard"] = [
        {"shard": index, **{key: one[key] for key in ("tasks", "succeeded", "failed", "pending", "cost")}}
        for index, one in enumerate(found)
    ]
    return merged


SUMMED = (
    "tasks",
    "succeeded",
    "failed",
    "orphaned",
    "orphaned_failed",
    "orphaned_answers",
    "orphaned_tokens",
    "attempts",
    "retries",
    "resent_changed",
    "requests",
    "maybe_billed",
    "maybe_billed_counted",
    "maybe_billed_uncounted",
    "images_missing",
    "tokens",
    "runs",
)


def merge_reports(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Reports (output.report) of parts of one batch as one: counts summed, failures grouped across the
    parts (the first part's example kept), the slowest tasks of all. Pure."""
    merged: dict[str, Any] = {name: sum(int(r[name]) for r in reports) for name in SUMMED}
    pending = [r["pending"] for r in reports]
    merged["pending"] = None if None in pending else sum(pending)
    merged["include_orphaned"] = any(r["include_orphaned"] for r in reports)
    merged["cost"] = round(sum(float(r["cost"]) for r in reports), 6)
    merged["orphaned_cost"] = round(sum(float(r["orphaned_cost"]) for r in reports), 6)
    merged["run_seconds"] = round(sum(float(r["run_seconds"]) for r in reports), 1)
    unpriced: dict[str, int] = {}
    failures: dict[str, dict[str, Any]] = {}
    by: dict[str, dict[str, dict[str, Any]]] = {"by_kind": {}, "by_model": {}}
    for one in reports:
        for model, count in one["unpriced_answers"].items():
            unpriced[model] = unpriced.get(model, 0) + int(count)
        for name, groups in by.items():
            for key, bucket in one[name].items():
                into = groups.setdefault(key, {"answers": 0, "tokens": 0, "cost": 0.0})
                for field in into:
                    into[field] += bucket[field]
        for kind, group in one["failures"].items():
            into = failures.setdefault(kind, {**group, "count": 0, "types": {}})
            into["count"] += group["count"]
            for name, count in group.get("types", {}).items():
                into["types"][name] = into["types"].get(name, 0) + count
    merged["unpriced_answers"] = unpriced
    for name, groups in by.items():
        merged[name] = {k: {**v, "cost": round(v["cost"], 6)} for k, v in sorted(groups.items())}
    merged["failures"] = dict(sorted(failures.items(), key=lambda item: -int(item[1]["count"])))
    slowest = (item for one in reports for item in one["slowest"])
    merged["slowest"] = heapq.nlargest(SLOWEST, slowest, key=lambda item: float(item["seconds"]))
    return merged


def _held(root: Path) -> bool:
    try:
        probe(root)
    except DirLockedError:
        return True
    return False


def _lines(path: Path) -> int:
    return sum(1 for _ in read_lines(path))


def finished_counts(root: Path, plan: BatchPlan) -> list[tuple[int, int]]:
    """(succeeded, failed) of each shard, from its results."""
    found = []
    for shard in plan.each_shard():
        succeeded = failed = 0
        for _, task_failed in finished_results(shard_dir(root, shard.index) / RESULTS):
            failed += task_failed
            succeeded += not task_failed
        found.append((succeeded, failed))
    return found


def last_failure(root: Path, index: int) -> str | None:
    """The latest `finished_at` among the failed result lines of shard `index` (None: none says one)."""
    times = (
        line.get("finished_at")
        for line in read_lines(shard_dir(root, index) / RESULTS)
        if line.get("status") == "failed"
    )
    return max((text for text in times if isinstance(text, str)), default=None)


def shard_status(root: Path, index: int, size: int, taken: bool = False) -> dict[str, Any]:
    """One shard's counts. Running: a run holds its directory (its lock), or a live worker has taken it
    (`taken`: the queue says so; a store has no lock); its requests in flight are then in flight, not
    maybe billed."""
    directory = shard_dir(root, index)
    succeeded = failed = 0
    for _, task_failed in finished_results(directory / RESULTS):
        failed += task_failed
        succeeded += not task_failed
    running = taken or (directory.is_dir() and _held(directory))
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
        **maybe_billed_parts(attempts),
        "in_flight": attempts.in_flight,
    }


def cluster_status(root: Path, queue: QueueState | None = None) -> dict[str, Any]:
    """The whole batch and each shard (see the module's docstring); with `queue` (the batch's queue as
    Redis holds it), the workers alive and each shard's place on the queue too."""
    plan = read_plan(root)
    held = {shard.index for shard in queue.held()} if queue is not None else set()
    shards = [shard_status(root, shard.index, shard.size, shard.index in held) for shard in plan.each_shard()]
    counted = (
        "succeeded",
        "failed",
        "pending",
        "billed_answers",
        "maybe_billed",
        "maybe_billed_counted",
        "maybe_billed_uncounted",
        "in_flight",
    )
    totals = {name: sum(s[name] for s in shards) for name in counted}
    states = _states(shards)
    found = {
        "directory": str(root),
        "manifest": plan.manifest,
        "queue": plan.queue,
        "tasks": plan.total,
        **totals,
        "shards": {"total": len(shards), **states},
        "per_shard": shards,
    }
    if queue is not None:
        found["on_queue"] = queue_summary(queue, shards)
    return found


def _states(shards: Sequence[dict[str, Any]]) -> dict[str, int]:
    return {state: sum(s["state"] == state for s in shards) for state in ("pending", "running", "done")}


def queue_summary(queue: QueueState, shards: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The queue's side of a batch: its workers alive, its shards queued and taken; each shard's place
    (`queue`: queued, taken, taken by a dead worker, or absent) added to `shards`. Pure."""
    places: dict[int, str] = {}
    for shard in queue.queued:
        places.setdefault(shard.index, "queued")
    for shard in queue.orphaned():
        places[shard.index] = "taken by a dead worker"
    workers = queue.alive
    for worker, taken in queue.taken.items():
        if worker in workers:
            info = workers[worker]
            for shard in taken:
                places[shard.index] = f"taken by {info.get('host')}:{info.get('pid')}"
    for one in shards:
        one["queue"] = places.get(one["shard"], "absent")
    working = {w for w in queue.taken if w in workers}
    return {
        "workers_alive": len(workers),
        "workers": [
            {"id": worker, **info, "on_this_batch": worker in working}
            for worker, info in sorted(workers.items())
        ],
        "queued": len(queue.queued),
        "taken": len(queue.held()),
        "taken_by_dead_workers": len(queue.orphaned()),
    }


def format_cluster_status(found: Mapping[str, Any], *, every_shard: bool = True) -> str:
    shards = found["shards"]
    lines = [
        f"{found['directory']}: {found['succeeded']:,} succeeded, {found['failed']:,} failed, "
        f"{found['pending']:,} pending (of {found['tasks']:,}), in {shards['total']:,} shards",
        f"billed answers: {found['billed_answers']:,}; maybe billed without a saved result: "
        f"{maybe_billed_said(found, of_requests=False)}"
        + (f"; {found['in_flight']:,} in flight now" if found["in_flight"] else ""),
        f"shards: {shards['done']:,} done, {shards['running']:,} running, {shards['pending']:,} pending"
        f" (queue {found['queue']})",
    ]
    queue = found.get("on_queue")
    if queue is not None:
        dead = queue["taken_by_dead_workers"]
        lines.append(
            f"on the queue: {queue['queued']:,} shards queued, {queue['taken']:,} taken by live workers"
            + (
                f", {dead:,} taken by dead workers (queued again at a live worker's next poll)"
                if dead
                else ""
            )
            + f"; {queue['workers_alive']:,} workers alive"
            + "".join(
                f"\n  worker {w.get('host')}:{w.get('pid')}"
                + (" (on this batch)" if w["on_this_batch"] else "")
                for w in queue["workers"]
            )
        )
    elif found.get("queue_error"):
        lines.append(f"on the queue: unknown ({found['queue_error']})")
    if every_shard:
        for shard in found["per_shard"]:
            lines.append(
                f"  shard {shard['shard']}: {shard['state']}, {shard['succeeded']:,} succeeded, "
                f"{shard['failed']:,} failed, {shard['pending']:,} pending" + _place(shard)
            )
    return "\n".join(lines)


def format_shard_reports(found: Mapping[str, Any]) -> str:
    """The per-shard lines under a sharded batch's report."""
    lines = ["by shard:"]
    for one in found["per_shard"]:
        pending = "" if one["pending"] is None else f", {one['pending']:,} pending"
        lines.append(
            f"  shard {one['shard']}: {one['succeeded']:,} succeeded, {one['failed']:,} failed{pending}, "
            f"{money(one['cost'])}"
        )
    return "\n".join(lines)


def _place(shard: Mapping[str, Any]) -> str:
    """A shard's place on the queue, when it says something: a shard not done and not on the queue is
    waiting for `submit --resume`."""
    place = shard.get("queue")
    if place is None or (place == "absent" and shard["state"] == "done"):
        return ""
    if place == "absent":
        return "; not on the queue (`maas-batch submit --resume DIR` queues it)"
    return f"; {place}"
