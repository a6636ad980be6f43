"""`submit`: validate a whole manifest, write the batch's plan beside its outputs, queue its shards.

Nothing is queued for an invalid manifest (ManifestError, exit 65). The manifest is streamed, as `run`
checks it: what is held is 8 bytes per task id (to find duplicates and the manifest's identity), never
the tasks.

`resume`: the queue rebuilt from the outputs alone (after Redis lost it): each shard whose directory
lacks some of its tasks' results is queued again, unless it is on the queue already (queued, or taken by
a worker). `retry`: the shards that hold failed tasks queued again, to send those tasks again."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch import __version__
from batch.cluster.plan import (
    BatchPlan,
    Shard,
    order_digest,
    queue_name,
    read_plan,
    split,
    write_plan,
    write_plan_to_store,
)
from batch.cluster.queue import ShardQueue
from batch.cluster.shard import submitted_manifest
from batch.cluster.view import finished_counts, last_failure, write_order
from batch.config import Options, checked_manifest, endpoint_for
from batch.errors import UsageError
from batch.values import StoreUrl, without_password

if TYPE_CHECKING:
    from batch.output.remote import Store

log = logging.getLogger("batch.cluster.submit")

# Options that mean a whole run, not a shard: refused by submit rather than applied to each shard alone.
WHOLE_RUN_ONLY = (
    "max_cost",
    "max_tokens",
    "deadline",
    "max_duration",
    "retry_failed",
    "rerun_changed",
)


def refuse_whole_run_options(options: Options) -> None:
    defaults = Options()
    given = [name for name in WHOLE_RUN_ONLY if getattr(options, name) != getattr(defaults, name)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        counted = set(given) - {"rerun_changed"}  # the others count or stop a whole run
        why = " (each shard would count alone)" if counted else ""
        raise UsageError(f"{flags}: not for a sharded batch yet{why}")


def changed_options(options: Options) -> dict[str, Any]:
    """The options that differ from the defaults, as JSON can hold them (for people reading the plan)."""
    defaults = Options()
    found: dict[str, Any] = {}
    for item in dataclasses.fields(Options):
        value = getattr(options, item.name)
        if value != getattr(defaults, item.name):
            found[item.name] = value if isinstance(value, int | float | str | bool) else str(value)
    return found


def submit(
    manifest: Path,
    out: Path | StoreUrl,
    options: Options,
    queue: ShardQueue,
    *,
    shard_size: int,
    run_flags: Sequence[str] = (),
) -> BatchPlan:
    """Check `manifest` whole, write DIR/cluster/plan.json (or PREFIX/cluster/plan.json in a store) and
    queue one message per shard."""
    refuse_whole_run_options(options)
    split(0, shard_size)  # a shard size no split can use is refused before the long walk
    store: Store | None = None
    if isinstance(out, StoreUrl):  # the plan and the shards' outputs in a store (output.remote)
        from batch.output.remote import open_store

        store = open_store(out)
        if store.names("results"):
            raise UsageError(f"{out} holds a single run (results/): submit into a new prefix")
    elif (out / "results.jsonl").exists():
        raise UsageError(f"{out} holds a single run (results.jsonl): submit into a new directory")
    queue.ping()  # an unreachable Redis is said before the manifest's walk, not after
    endpoint = endpoint_for(options)
    checked = checked_manifest(manifest, options, endpoint)  # ManifestError: nothing written or queued
    plan = BatchPlan(
        manifest=str(manifest.absolute()),
        out=str(out) if isinstance(out, StoreUrl) else str(out.absolute()),
        queue=queue_name(str(out) if isinstance(out, StoreUrl) else out),
        total=checked.plan.total,
        order_digest=order_digest(checked.plan.order),
        shard_size=shard_size,
        shards=split(checked.plan.total, shard_size),
        run_flags=list(run_flags),
        endpoint=endpoint,
        options=changed_options(options),
        version=__version__,
        redis=without_password(queue.settings.url),
        ids=checked.builder.settings.id_scheme,
        submitted=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if store is not None:
        path = write_plan_to_store(store, plan)
    else:
        path = str(write_plan(Path(out), plan))
        write_order(Path(out), checked.plan.order)  # for report, export and the gallery over every shard
    queued = queue.put(plan.queue, plan.each_shard())
    log.debug(
        "%s: %d tasks in %d shards queued on %s (plan: %s)", manifest, plan.total, queued, plan.queue, path
    )
    return plan


def resume(out: Path, options: Options, queue: ShardQueue) -> tuple[BatchPlan, list[Shard]]:
    """Queue again each shard of DIR's batch that its directory does not hold whole and that is not on
    the queue (queued, or taken by a worker, alive or not: a dead one's goes back by itself). The
    manifest must be the one submitted (ManifestError, exit 65). Returns the plan and the shards queued."""
    plan = read_plan(out)
    queue.ping()
    submitted_manifest(plan, dataclasses.replace(options, endpoint=plan.endpoint))
    state = queue.look(plan.queue)
    on_queue = {s.index for s in state.queued if not s.retry_failed}
    on_queue.update(s.index for shards in state.taken.values() for s in shards if not s.retry_failed)
    lacking = [
        shard
        for shard, (succeeded, failed) in zip(plan.each_shard(), finished_counts(out, plan), strict=True)
        if succeeded + failed < shard.size and shard.index not in on_queue
    ]
    queue.put(plan.queue, lacking)
    log.debug("%s: %d shards queued again on %s", out, len(lacking), plan.queue)
    return plan, lacking


def retry(out: Path, queue: ShardQueue) -> tuple[BatchPlan, list[Shard], int]:
    """Queue each shard of DIR's batch that holds failed tasks, to be run with --retry-failed (its failed
    tasks sent again, no others), unless such a message is on the queue already. Returns the plan, the
    shards queued and the failed tasks they hold."""
    plan = read_plan(out)
    queue.ping()
    state = queue.look(plan.queue)
    waiting = {s.index for s in state.queued if s.retry_failed}
    waiting.update(s.index for shards in state.taken.values() for s in shards if s.retry_failed)
    chosen, failures = [], 0
    for shard, (_, failed) in zip(plan.each_shard(), finished_counts(out, plan), strict=True):
        if failed and shard.index not in waiting:
            upto = last_failure(out, shard.index)
            chosen.append(dataclasses.replace(shard, retry_failed=True, retry_upto=upto))
            failures += failed
    queue.put(plan.queue, chosen)
    return plan, chosen, failures
