"""Run one shard with today's engine: a normal run directory, DIR/shards/<k>/, holding that shard's tasks.
Its resume is the engine's: a shard delivered again sends only what that directory does not hold yet (what
was in flight on a worker that died), and a directory locked by a live run is refused (DirLockedError).
A batch in a store (s3://...) runs each shard in a local staging DIR mirrored into PREFIX/shards/<k>/: there
no lock exists, and a shard's single owner is the queue's doing (its heartbeats).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from batch.cluster.plan import (
    SHARDS,
    BatchPlan,
    Shard,
    order_digest,
    read_plan,
    read_plan_from_store,
    shard_dir,
)
from batch.config import Options, checked_manifest, connection, job_config, loop_factory
from batch.errors import ManifestError, Problem
from batch.events import Observer
from batch.exitcodes import EXIT_TEMPFAIL
from batch.kind import builtin_registry
from batch.manifest.checked import CheckedManifest
from batch.running.job import Job
from batch.running.summary import RunSummary

log = logging.getLogger("batch.cluster.shard")

# The options of a batch's shards, from its plan (the CLI reads the run flags the plan recorded).
OptionsFor = Callable[[BatchPlan], Options]


class ShardRunner:
    """Runs shards one at a time; keeps the last batch's checked manifest, so that its next shards do not
    validate it again. `stop()` may be called from a signal handler or another thread."""

    def __init__(
        self,
        options_for: OptionsFor,
        observers: Callable[[], Sequence[Observer]] = tuple,
        grace: float | None = None,
    ) -> None:
        self._options_for = options_for
        self._observers = observers
        self._grace = grace
        self._checked: tuple[tuple[str, str], CheckedManifest] | None = None
        self._lock = threading.RLock()  # stop() may come from a signal handler in the same thread
        self._running: tuple[asyncio.AbstractEventLoop, Job] | None = None
        self._grace_now = 0.0
        self._abandoned: str | None = None  # the shard in hand is to stop (abandon), for this reason
        self.stopped = False

    def run(self, shard: Shard) -> RunSummary:
        """Run `shard` until its tasks are done or it is stopped; raises what stops it otherwise."""
        with self._lock:
            self._abandoned = None
        if "://" in shard.out:
            return self._run_on_store(shard)
        root = Path(shard.out)
        return self._run_into(read_plan(root), shard, shard_dir(root, shard.index))

    def _run_on_store(self, shard: Shard) -> RunSummary:
        """A shard of a batch in a store: run in a local staging DIR of its own (a temporary folder),
        first assembled from PREFIX/shards/<k>/, and mirrored there (output.remote)."""
        from batch.output.remote import open_store, staging

        store = open_store(shard.out)
        plan = read_plan_from_store(store)
        shard_store = store.child(f"{SHARDS}/{shard.index}")
        with staging(shard_store, prefix=f"maas-batch-shard-{shard.index}-") as folder:
            return self._run_into(plan, shard, folder, shard_store.url)

    def _run_into(self, plan: BatchPlan, shard: Shard, out: Path, store: str | None = None) -> RunSummary:
        options = dataclasses.replace(
            self._options_for(plan), endpoint=plan.endpoint, retry_failed=shard.retry_failed
        )
        checked = self._checked_manifest(plan, options, out)
        with connection(options) as connected:
            run_info = {"shard": shard.index, "positions": [shard.start, shard.end], "pid": os.getpid()}
            config = job_config(options, checked, out, connected, run_info, options.deadline_time())
            config = dataclasses.replace(config, only=(shard.start, shard.end), retry_upto=shard.retry_upto)
            if store is not None:  # no page per shard: `gallery URL` builds the batch's
                config = dataclasses.replace(config, store=store, gallery=False)
            with Job(config, checked, builtin_registry(), self._observers(), plan_reused=True) as job:
                grace = options.grace if self._grace is None else self._grace
                with asyncio.Runner(loop_factory=loop_factory()) as runner:  # uvloop where installed
                    return runner.run(self._run(job, grace))

    async def _run(self, job: Job, grace: float) -> RunSummary:
        loop = asyncio.get_running_loop()
        with self._lock:
            self._running = (loop, job)
            self._grace_now = grace
            if self.stopped or self._abandoned is not None:
                self._stop(job, loop, self._abandoned or "")
        try:
            return await job.run()
        finally:
            with self._lock:
                self._running = None

    def stop(self) -> None:
        """Stop dispatching; the requests in flight get the grace period. A second call cancels them."""
        with self._lock:
            again = self.stopped
            self.stopped = True
            if self._running is None:
                return
            loop, job = self._running
            if again:
                loop.call_soon_threadsafe(job.cancel_in_flight)
            else:
                self._stop(job, loop)

    def abandon(self, reason: str) -> None:
        """Stop the shard in hand, as `stop` does, and only it: the next shard runs as usual (its
        message was given to another worker). Thread-safe."""
        with self._lock:
            self._abandoned = reason
            if self._running is not None:
                loop, job = self._running
                self._stop(job, loop, reason)

    def _stop(self, job: Job, loop: asyncio.AbstractEventLoop, reason: str = "") -> None:
        grace = self._grace_now
        reason = reason or "the worker was told to stop"
        reason = f"{reason}; requests in flight had {grace:g} s to finish"

        def stop_then_cancel_later() -> None:
            job.stop(reason, EXIT_TEMPFAIL)
            loop.call_later(grace, job.cancel_in_flight)

        loop.call_soon_threadsafe(stop_then_cancel_later)

    def _checked_manifest(self, plan: BatchPlan, options: Options, out: Path) -> CheckedManifest:
        """The plan's manifest, checked as submit checked it; refused if it changed since."""
        key = (plan.out, plan.submitted)
        if self._checked is not None and self._checked[0] == key:
            return self._checked[1]
        checked = submitted_manifest(plan, options, out)
        self._checked = (key, checked)
        return checked


def submitted_manifest(plan: BatchPlan, options: Options, out: Path | None = None) -> CheckedManifest:
    """The plan's manifest, checked as submit checked it; ManifestError if it changed since."""
    checked = checked_manifest(Path(plan.manifest), options, plan.endpoint, out=out, ids=plan.ids)
    found = order_digest(checked.plan.order)
    if checked.plan.total != plan.total or found != plan.order_digest:
        message = (
            f"the manifest changed since it was submitted ({checked.plan.total} tasks now, "
            f"{plan.total} then): its shards cannot be run"
        )
        raise ManifestError([Problem(plan.manifest, None, message)])
    return checked
