"""`submit`: validate a whole manifest, write the batch's plan beside its outputs, queue its shards.

Nothing is queued for an invalid manifest (ManifestError, exit 65). The manifest is streamed, as `run`
checks it: what is held is 8 bytes per task id (to find duplicates and the manifest's identity), never
the tasks."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch import __version__
from batch.cluster.plan import BatchPlan, order_digest, queue_name, split, write_plan, write_plan_to_store
from batch.cluster.queue import ShardQueue
from batch.config import Options, checked_manifest, endpoint_for
from batch.errors import UsageError
from batch.values import StoreUrl

if TYPE_CHECKING:
    from batch.output.remote import Store

log = logging.getLogger("batch.cluster.submit")

# Options that mean a whole run, not a shard: refused by submit rather than applied to each shard alone.
WHOLE_RUN_ONLY = ("max_cost", "max_tokens", "deadline", "max_duration", "retry_failed")


def refuse_whole_run_options(options: Options) -> None:
    defaults = Options()
    given = [name for name in WHOLE_RUN_ONLY if getattr(options, name) != getattr(defaults, name)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"{flags}: not for a sharded batch yet (each shard would count alone)")


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
        order_digest=order_digest(checked.plan.order.tobytes()),
        shard_size=shard_size,
        shards=split(checked.plan.total, shard_size),
        run_flags=list(run_flags),
        endpoint=endpoint,
        options=changed_options(options),
        version=__version__,
        submitted=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    path = write_plan_to_store(store, plan) if store is not None else write_plan(Path(out), plan)
    queued = queue.put(plan.queue, plan.each_shard())
    log.debug(
        "%s: %d tasks in %d shards queued on %s (plan: %s)", manifest, plan.total, queued, plan.queue, path
    )
    return plan
