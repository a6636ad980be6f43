"""A job end to end: check a manifest, then run it into an output directory. Used by the CLI and by
programs that import batch; neither reads the environment here (that is the caller's business).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from batch import __version__
from batch.errors import OutputError
from batch.events import Observer
from batch.kind import Registry
from batch.manifest import plancache
from batch.manifest.plan import Plan, check_manifest, iter_tasks
from batch.manifest.plancache import Sources
from batch.manifest.read import Manifest, load
from batch.manifest.tasks import BuildSettings, TaskBuilder
from batch.output import gallery
from batch.output.runlog import Interrupted, RunLog, recover
from batch.output.store import OutputDir, finished_results, retried_ids
from batch.running.budget import Spent, ledger_spent
from batch.running.client import ApiClient, ClientConfig
from batch.running.dispatch import Runner
from batch.running.idset import IdSet
from batch.running.shared import SharedLimits
from batch.running.summary import RunSettings, RunSummary

log = logging.getLogger("batch.running.job")


@dataclass(frozen=True)
class JobConfig:
    """Everything a run needs, decided before it starts."""

    manifest: Path
    out: Path
    client: ClientConfig
    run: RunSettings = field(default_factory=RunSettings)
    fsync: bool = True
    sync_interval: float = 0.1  # seconds between journal fsyncs; 0 = fsync each line before going on
    retry_failed: bool = False  # send the failed tasks again, and only them
    gallery: bool = True  # thumbnails as images are saved, and DIR/index.html after the run
    run_info: Mapping[str, Any] = field(default_factory=dict)  # for the run log's start line (the command)


@dataclass
class CheckedManifest:
    manifest: Manifest
    builder: TaskBuilder
    plan: Plan
    cache_key: dict[str, Any] | None = None  # what a remembered plan depends on (None: no cache)
    sources: Sources | None = None  # the files the tasks were made from, as validated
    cached: bool = False  # the plan came from DIR's cache: the manifest was not walked again


def check(
    source: Path | Manifest, build: BuildSettings, registry: Registry, cache: Path | None = None
) -> CheckedManifest:
    """Load (from a file) and validate a whole manifest. Raises ManifestError for a file that is not a
    manifest; other problems are in `plan.problems`. With `cache` (a folder in DIR), a plan remembered
    there is used when nothing it depends on changed (for a manifest file; one built in code is checked
    each time)."""
    path = source if isinstance(source, Path) else None
    manifest = load(path) if path is not None else source
    assert isinstance(manifest, Manifest)
    sources = Sources()
    builder = TaskBuilder(manifest, registry, build, sources=sources)
    if path is None:
        cache = None
    cache_key = plancache.key(path, dataclasses.asdict(build)) if cache is not None and path else None
    if cache is not None and cache_key is not None and not builder.problems:
        remembered = plancache.load(cache, cache_key)
        if remembered is not None:
            plan = Plan(
                manifest.name,
                total=remembered.total,
                counts=remembered.counts,
                order=remembered.order,
                estimates=remembered.estimates,
            )
            for key in remembered.order:
                plan.ids.add_digest(key)
            builder.trust()
            return CheckedManifest(manifest, builder, plan, cache_key, remembered.sources, cached=True)
    if path is not None:
        sources.file(path, expanded=True)
    plan = check_manifest(manifest, builder)
    builder.trust()
    return CheckedManifest(manifest, builder, plan, cache_key, sources)


def _watch(sources: Sources | None) -> Callable[[], bool] | None:
    """What tells the dispatch walk that the manifest changed under it (its field rules are not checked
    again: they were, and an edit in the middle of a run must stop it rather than send unchecked tasks)."""
    return sources.expansion_changed if sources is not None else None


class Job:
    """One run of a checked manifest into an output directory, holding DIR's lock while open."""

    def __init__(
        self,
        config: JobConfig,
        checked: CheckedManifest,
        registry: Registry,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.config = config
        self.checked = checked
        self.registry = registry
        self.observers = list(observers)
        self.out = OutputDir(config.out, fsync=config.fsync, sync_interval=config.sync_interval)
        self.runner: Runner | None = None
        self.retried = 0  # failed tasks --retry-failed made pending again
        self._stop: tuple[str, int] | None = None  # asked for before the runner existed

    def stop(self, reason: str, exit_code: int) -> None:
        """Stop dispatching (see Runner.stop); safe to call at any moment of the job."""
        if self.runner is not None:
            self.runner.stop(reason, exit_code)
        elif self._stop is None:
            self._stop = (reason, exit_code)

    def cancel_in_flight(self) -> None:
        if self.runner is not None:
            self.runner.cancel_in_flight()

    @property
    def stopping(self) -> bool:
        return self.runner.stopping if self.runner is not None else self._stop is not None

    def __enter__(self) -> Job:
        self.out.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.out.close()

    def _build_gallery(self) -> None:
        try:
            gallery.build(self.out.root)
        except (OSError, ValueError, OutputError) as exc:  # the page is a view: it must not fail the run
            log.warning("could not write the gallery: %s", exc)

    def finished(self) -> tuple[IdSet, int]:
        """The ids of this manifest that already have a result line, and how many of them failed."""
        wanted = self.checked.plan.ids
        done = IdSet()
        failed = 0
        for task_id, task_failed in finished_results(self.out.results.path):
            if task_id in wanted:
                done.add(task_id)
                failed += task_failed
        done.freeze()  # worker threads only read it
        return done, failed

    def _prepare(self) -> _Start:
        """Everything a run reads and rewrites in DIR before its first request: blocking file work (the
        journals scanned, failures moved aside, killed runs' logs closed, the ledger summed), done in a
        worker thread before the loop has anything else to do."""
        checked = self.checked
        wanted, order = checked.plan.ids, checked.plan.order
        forgotten: list[str] = []
        if self.config.retry_failed:
            forgotten = self.out.forget_failures(lambda task_id: task_id in wanted)
        finished, failed_before = self.finished()
        skip = (lambda position: finished.contains_digest(order[position])) if len(finished) else None
        left_alone = 0
        if self.config.retry_failed:
            # with the failures that an earlier --retry-failed moved aside but did not get to (stopped)
            again = {i for i in retried_ids(self.out.root) if i in wanted and i not in finished}
            only = IdSet(again.union(forgotten))
            only.freeze()
            self.retried = len(only)

            def skip_all_but_failed(position: int) -> bool:
                return not only.contains_digest(order[position])

            skip = skip_all_but_failed
            left_alone = checked.plan.total - len(finished) - len(only)
        self._remember_plan()
        interrupted = recover(self.out.runs)
        spent = (
            ledger_spent(self.out.usage.path, self.config.run.prices) if self.config.run.budget.any else None
        )
        tag = secrets.token_hex(3)
        run_log = RunLog(self.out.runs, f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{tag}")
        run_log.open(
            {
                **self.config.run_info,
                "plan": "remembered" if checked.cached else "validated",
                "pid": os.getpid(),
                "manifest": checked.manifest.name,
                "version": __version__,
                "tasks": checked.plan.total,
            }
        )
        return _Start(finished, failed_before, skip, left_alone, interrupted, spent, run_log, tag)

    def _remember_plan(self) -> None:
        """Save a freshly validated plan in DIR's cache, for the next run of the same manifest."""
        checked = self.checked
        if checked.cache_key is None or checked.sources is None or not checked.plan.ok or checked.cached:
            return
        plan = checked.plan
        try:
            plancache.save(
                self.out.root / plancache.FOLDER,
                checked.cache_key,
                checked.sources,
                plan.total,
                plan.counts,
                plan.order,
                plan.estimates,
            )
        except OutputError as exc:  # the plan is only remembered for speed: the run goes on without
            log.warning("the plan is not remembered: %s", exc)

    async def run(self) -> RunSummary:
        """Run what the manifest has that DIR lacks. The run's attempt log is closed however it ends,
        except by a kill, which the next run's recover() then accounts for."""
        limits = self.config.run.limits
        shared = None
        if limits.shared is not None:  # Redis must answer before anything is written or sent (exit 78)
            shared = SharedLimits(limits.shared, limits.rpm, limits.tpm)
            await shared.connect()
        try:
            return await self._run(shared)
        finally:
            if shared is not None:
                await shared.aclose()

    async def _run(self, shared: SharedLimits | None) -> RunSummary:
        checked = self.checked
        start = await anyio.to_thread.run_sync(self._prepare)
        ending: dict[str, Any] = {"error": "the run ended with an unexpected error"}
        try:
            async with ApiClient(self.config.client) as client:
                self.runner = Runner(
                    iter_tasks(checked.manifest, checked.builder, start.skip, _watch(checked.sources)),
                    registry=self.registry,
                    client=client,
                    out=self.out,
                    finished=start.finished,
                    failed_before=start.failed_before,
                    left_alone=start.left_alone,
                    total=checked.plan.total,
                    settings=dataclasses.replace(
                        self.config.run, thumbnails=self.config.run.thumbnails and self.config.gallery
                    ),
                    log=start.log,
                    run_tag=start.tag,
                    interrupted=start.interrupted.by_task,
                    spent=start.spent,
                    observers=self.observers,
                    shared=shared,
                )
                if self._stop is not None:
                    self.runner.stop(*self._stop)
                summary = await self.runner.run()
            if self.config.gallery:
                await anyio.to_thread.run_sync(self._build_gallery)
            summary.interrupted = len(start.interrupted.requests)
            ending = {**dataclasses.asdict(summary), "exit_code": summary.exit_code}
            return summary
        finally:
            try:
                start.log.close(ending)
            except OutputError as exc:  # a full disk: the run's own outcome (74 already) comes first
                log.warning("could not close the attempt log: %s", exc)


@dataclass(frozen=True)
class _Start:
    """What a run learnt from DIR before its first request (see Job._prepare)."""

    finished: IdSet  # tasks with a result line
    failed_before: int  # of them, failed
    skip: Callable[[int], bool] | None  # positions in the plan not to send
    left_alone: int  # pending tasks that --retry-failed does not send (it sends the failed ones only)
    interrupted: Interrupted  # what killed runs left
    spent: Spent | None  # what the ledger says was spent, when a budget needs it
    log: RunLog  # this run's attempt log, open
    tag: str
