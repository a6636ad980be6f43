"""A job end to end: check a manifest, then run it into an output directory. Used by the CLI and by
programs that import batch; neither reads the environment here (that is the caller's business).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from batch import __version__
from batch.errors import OutputError
from batch.events import Observer
from batch.exitcodes import EXIT_IOERR
from batch.kind import Registry
from batch.manifest import plancache
from batch.manifest.checked import CheckedManifest
from batch.manifest.plan import iter_tasks
from batch.manifest.plancache import Sources
from batch.manifest.tasks import TaskSpec
from batch.output import gallery
from batch.output.cards import Cards
from batch.output.format import remember as remember_format
from batch.output.runlog import RunLog, kept_answers, recover
from batch.output.scope import Scope, scope_of
from batch.output.store import RETRIED, OutputDir, finished_results, read_lines, requested_results
from batch.running.budget import ledger_spent
from batch.running.client import ApiClient, ClientConfig
from batch.running.dispatch import Runner, RunStart
from batch.running.finishedset import Finished, changed_digests, find_changed, find_finished
from batch.running.idset import IdSet, digest
from batch.running.records import ResultRecord
from batch.running.summary import RunSettings, RunSummary

if TYPE_CHECKING:
    from batch.output.remote import Mirror
    from batch.running.shared import SharedLimits

log = logging.getLogger("batch.running.job")

# tasks from which a run's last page is built in a process of its own (gallery.build_apart): 0.1-0.25 s of
# CPU to start it (mostly importing the gallery), against the 12 bytes a result line (and more) its build
# would add to the run's memory
PAGE_APART = 20_000


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
    rerun_changed: bool = False  # send again the finished tasks whose request changed since they ran
    retry_upto: str | None = None  # with retry_failed: only the failures finished up to then (a shard's)
    gallery: bool = True  # thumbnails as images are saved, and DIR/index.html after the run
    run_info: Mapping[str, Any] = field(default_factory=dict)  # for the run log's start line (the command)
    only: tuple[int, int] | None = None  # a shard: the tasks at manifest positions [start, end), no others
    # An output on a store (s3://...): `out` is then the local staging DIR, pulled from it beforehand
    # (output.remote.pull), and everything the run saves is mirrored there.
    store: str | None = None


def _watch(sources: Sources | None) -> Callable[[], bool] | None:
    """What tells the dispatch walk that the manifest changed under it (its field rules are not checked
    again: they were, and an edit in the middle of a run must stop it rather than send unchecked tasks)."""
    return sources.expansion_changed if sources is not None else None


class _PastShard(Exception):
    """Raised by a shard's skip at its end position: nothing after it in the manifest is the shard's."""


def _size(path: Path) -> int:
    """A file's size; 0 if there is none."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _within(positions: tuple[int, int], skip: Callable[[int], bool] | None) -> Callable[[int], bool]:
    """`skip` narrowed to a shard: positions before `start` are passed over, and the walk ends at `end`
    (see _until_past) rather than going through the rest of the manifest."""
    start, end = positions

    def outside_or_skipped(position: int) -> bool:
        if position >= end:
            raise _PastShard
        return position < start or (skip is not None and skip(position))

    return outside_or_skipped


def _until_past(tasks: Iterator[TaskSpec]) -> Iterator[TaskSpec]:
    """The tasks of a walk narrowed by _within, ending where the shard ends."""
    try:
        yield from tasks
    except _PastShard:
        return


class Job:
    """One run of a checked manifest into an output directory, holding DIR's lock while open."""

    def __init__(
        self,
        config: JobConfig,
        checked: CheckedManifest,
        registry: Registry,
        observers: Sequence[Observer] = (),
        *,
        plan_reused: bool = False,
    ) -> None:
        self.config = config
        self.checked = checked
        # the checked manifest serves later jobs (a worker's next shards): its plan keeps its id set, which
        # a million-task plan takes 0.6 CPU s to make again
        self.plan_reused = plan_reused
        self.registry = registry
        self.observers = list(observers)
        self.out = OutputDir(config.out, fsync=config.fsync, sync_interval=config.sync_interval)
        self.runner: Runner | None = None
        self.retried = 0  # failed tasks --retry-failed made pending again
        self.rerun = 0  # finished tasks whose request changed, --rerun-changed made pending again
        self._changed_again = False  # what a remembered plan held changed was looked for again
        self._ledger_start = 0  # the size of usage.jsonl as the run began (its page's header)
        self._stop: tuple[str, int] | None = None  # asked for before the runner existed
        self.mirror: Mirror | None = None

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

    @property
    def _local_gallery(self) -> bool:
        """Thumbnails as images are saved, and the page rebuilt during the run: in a DIR, not on a store
        (its page is built once, at the end: _build_gallery_in_store)."""
        return self.config.gallery and self.config.store is None

    @property
    def _page_apart(self) -> bool:
        """Whether the run's last page is built in a process of its own (PAGE_APART)."""
        return self.checked.plan.total >= PAGE_APART and gallery.can_start_itself()

    def _cards(self) -> Cards | None:
        """The cards of the page built here at the run's end, made as the run writes its lines
        (Cards), the results journal told of each; None for a page built apart."""
        if self._page_apart:
            return None
        try:
            cards = Cards(self.out.root, self.out.results.size, asyncio.get_running_loop().call_soon)
        except OSError as exc:  # no temporary file in DIR: the page reads the lines at the end
            log.debug("the page's cards are made at the end: %s", exc)
            return None
        self.out.results.tap = cards.add
        return cards

    def _build_gallery(self, cards: Cards | None = None, summary: RunSummary | None = None) -> None:
        """The page at the run's end: the tasks of the last run's manifest, as `maas-batch gallery DIR`
        would show them. A big run's in a process of its own (its memory is not added to the run's);
        a smaller one's here, where starting a process would cost more than the page, with the `cards`
        the run made as it wrote its lines."""
        try:
            if self._page_apart:
                gallery.build_apart(self.out.root)
            else:
                scope = scope_of(self.out.root)
                spent = None
                if summary is not None:  # the header's spend: the ledger's before this run, and the run's
                    before = gallery.spent_on(self.out.root, scope, upto=self._ledger_start) or (0, 0.0)
                    spent = (before[0] + summary.total_tokens, before[1] + summary.cost)
                gallery.build(self.out.root, scope, cards=cards, spent=spent)
        except (OSError, ValueError, OutputError) as exc:  # the page is a view: it must not fail the run
            log.warning("could not write the gallery: %s", exc)
            # the summary names no page: one left from during the run would show tasks as still pending
            with contextlib.suppress(OSError):
                (self.out.root / gallery.PAGE).unlink(missing_ok=True)

    def _build_gallery_in_store(self) -> None:
        """The page of a run on a store, once everything it saved is there: into the store, from the
        staging DIR (its images at hand); from a fresh view of the store if the run saved a file under
        another name there (the store held one of that name), so that the page names what the store
        holds."""
        from batch.output.remote import view

        assert self.mirror is not None
        store = self.mirror.store
        try:
            if all(local == stored for local, stored in self.mirror.uploaded.items()):
                gallery.build_in_store(self.out.root, store)
            else:
                with view(store.url) as fresh:
                    gallery.build_in_store(fresh, store, page=self.out.root / gallery.PAGE)
        except (OSError, ValueError, OutputError) as exc:  # the page is a view: it must not fail the run
            log.warning("could not write the gallery: %s", exc)
            (self.out.root / gallery.PAGE).unlink(missing_ok=True)  # the summary names no page

    def finished(self) -> Finished:
        """The positions of the plan's tasks that have a result line, and of them those that failed: one
        bit a task, joined with results.jsonl by digest (finishedset.py), not an id set of 8 bytes a line."""
        path = self.out.results.path
        plan = self.checked.plan
        found = find_finished(plan.order, lambda: finished_results(path))
        found.changed = self._changed(found.count)
        return found

    def _changed(self, finished: int) -> int:
        """How many finished tasks ran with another request than the plan's (finishedset.find_changed):
        as the run that remembered the plan found, while what it found still holds (a resume of the same
        manifest then reads results.jsonl once, not three times); else looked for, and kept to be
        remembered with the plan."""
        sizes = (_size(self.out.results.path), _size(self.out.root / RETRIED))
        then = self.checked.changed
        if self.checked.cached and then is not None and then.holds(*sizes):
            return then.count
        plan, path = self.checked.plan, self.out.results.path
        order, requests = plan.order, plan.requests
        if self.config.only is not None and len(requests) == len(order):  # a shard's: its own positions
            order, requests = order.section(*self.config.only), requests.section(*self.config.only)
        count = find_changed(order, requests, lambda: requested_results(path)) if finished else 0
        self._changed_again = True
        self.checked.changed = plancache.Changed(count, *sizes)
        return count

    def _set_aside(self) -> list[str]:
        """The result lines this run's tasks are sent again in place of, moved to results.retried.jsonl:
        with --retry-failed, the failed ones; with --rerun-changed, every line of a finished task whose
        request changed since (find_changed's). Returns their ids (`rerun`: how many are changed tasks)."""
        config, plan = self.config, self.checked.plan
        changed: IdSet | None = None
        if config.rerun_changed and plan.requests:
            order, requests = plan.order, plan.requests
            if config.only is not None and len(requests) == len(order):  # a shard's: its own positions
                order, requests = order.section(*config.only), requests.section(*config.only)
            path = self.out.results.path
            changed = changed_digests(order, requests, lambda: requested_results(path))
        if not config.retry_failed and not changed:
            return []
        ids = plan.ids if config.retry_failed else None
        upto = config.retry_upto
        rerun: set[str] = set()

        def picked(line: Mapping[str, Any]) -> bool:
            task_id = line.get("id")
            if changed and isinstance(task_id, str) and changed.contains_digest(digest(task_id)):
                rerun.add(task_id)
                return True
            if ids is None or line.get("status") != "failed" or str(task_id) not in ids:
                return False
            finished = line.get("finished_at")  # a failure after `upto`: this retry's own, bought already
            return upto is None or not isinstance(finished, str) or finished <= upto

        moved = self.out.set_aside(picked, keep_files=config.store is None)  # a store overwrites no file
        self.rerun = len(rerun)
        return moved

    def _waiting(self) -> dict[str, bool]:
        """The plan's tasks whose lines were set aside to send them again (results.retried.jsonl), each
        with whether it waits as a failure, or as a changed task (Scope.failed_before)."""
        plan = self.checked.plan
        requests = plan.requests if len(plan.requests) == len(plan.order) else None
        scope = Scope(order=plan.order, requests=requests)
        waiting: dict[str, bool] = {}
        for record in map(ResultRecord.from_line, read_lines(self.out.root / RETRIED)):
            if record.id in plan.ids:
                failure = scope.failed_before(record.id, record.failed, record.request_sha256)
                waiting[record.id] = waiting.get(record.id, False) or failure
        return waiting

    def _prepare(self, loop: str = "asyncio") -> RunStart:
        """Everything a run reads and rewrites in DIR before its first request: blocking file work (the
        journals scanned, failures moved aside, killed runs' logs closed, the ledger summed), done in a
        worker thread before the loop has anything else to do."""
        checked = self.checked
        order = checked.plan.order
        forgotten = self._set_aside()
        finished = self.finished()
        finished_before, failed_before = finished.count, finished.failed
        skip: Callable[[int], bool] | None = finished.__contains__ if finished_before else None
        left_alone = 0
        if self.config.retry_failed:
            # with the tasks an earlier run set aside but did not get to (stopped): failures of an earlier
            # --retry-failed, changed tasks of a --rerun-changed, each counted as what it is
            waiting = self._waiting()
            if waiting:  # those that have a result line since are not sent again
                for task_id, _ in finished_results(self.out.results.path):
                    waiting.pop(task_id, None)
            only = IdSet({*waiting, *forgotten})
            only.freeze()
            self.retried = sum(waiting.values())
            self.rerun = len(only) - self.retried

            def skip_all_but_failed(position: int) -> bool:
                # a task that still has a line in results.jsonl (one that did not fail, beside the failed
                # one moved aside) is finished: it is not sent again
                return position in finished or not only.contains_digest(order[position])

            skip = skip_all_but_failed
            left_alone = checked.plan.total - finished_before - len(only)
        if self.config.only is not None:
            skip = _within(self.config.only, skip)
        self._remember_plan()
        remember_format(self.out.root, self.checked.builder.settings.id_scheme)
        interrupted = recover(self.out.runs, self.out.usage)
        self._ledger_start = self.out.usage.size  # the page's header: the ledger's lines before this run
        kept = kept_answers(self.out.root)  # answers killed runs paid for: their tasks finished from them
        if kept:
            log.info(
                "%s answer(s) a killed or stopped run paid for are kept in answers/: their tasks are "
                "finished from them (their images fetched again), not bought again, unless a task's request "
                "changed since",
                f"{len(kept):,}",
            )
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
                "tasks": self.total,
                "loop": loop,  # the event loop the run is on: uvloop where installed (maas-batch[fast])
            }
        )
        return RunStart(
            finished,
            finished_before,
            failed_before,
            skip,
            left_alone,
            interrupted,
            spent,
            run_log,
            tag,
            kept,
            on_store=self.config.store is not None,
        )

    @property
    def total(self) -> int:
        """The tasks this run is for: the manifest's, or its shard's."""
        if self.config.only is None:
            return self.checked.plan.total
        start, end = self.config.only
        return max(0, min(end, self.checked.plan.total) - start)

    def _remember_plan(self) -> None:
        """Save a freshly validated plan in DIR's cache, for the next run of the same manifest."""
        checked = self.checked
        if checked.cache_key is None or checked.sources is None or not checked.plan.ok:
            return
        if checked.cached:  # remembered already; what it found changed, if found again
            if self._changed_again and checked.changed is not None:
                with contextlib.suppress(OutputError):  # only for speed
                    plancache.note_changed(self.out.root / plancache.FOLDER, checked.changed)
            return
        try:
            plancache.save_plan(
                self.out.root / plancache.FOLDER,
                checked.cache_key,
                checked.sources,
                checked.plan,
                checked.changed,
            )
        except OutputError as exc:  # the plan is only remembered for speed: the run goes on without
            log.warning("the plan is not remembered: %s", exc)

    async def run(self) -> RunSummary:
        """Run what the manifest has that DIR lacks. The run's attempt log is closed however it ends,
        except by a kill, which the next run's recover() then accounts for."""
        limits = self.config.run.limits
        shared = None
        if limits.shared is not None:  # Redis must answer before anything is written or sent (exit 78)
            from batch.running.shared import SharedLimits  # redis and pyrate-limiter: for this run only

            shared = SharedLimits(limits.shared, limits.rpm, limits.tpm)
            await shared.connect()
        try:
            return await self._run(shared)
        finally:
            if shared is not None:
                await shared.aclose()

    async def _run(self, shared: SharedLimits | None) -> RunSummary:
        checked = self.checked
        loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]  # "uvloop" or "asyncio"
        start = await anyio.to_thread.run_sync(self._prepare, loop)
        ending: dict[str, Any] = {"error": "the run ended with an unexpected error"}
        summary: RunSummary | None = None
        cards: Cards | None = None
        try:
            if self.config.store is not None:
                await self._mirror(start)
            async with ApiClient(self.config.client) as client:
                # a shard, or a resume, starts reading the manifest near its first task to send, not at
                # the manifest's start: a million finished tasks are not read again to be passed over
                first = 0 if self.config.only is None else self.config.only[0]
                if start.skip is not None:
                    first = max(first, start.finished.first_missing())
                begin = checked.plan.mark_before(first) if first else None
                watch = _watch(checked.sources)
                order = checked.plan.order
                tasks = iter_tasks(checked.manifest, checked.builder, start.skip, watch, begin, order)
                self.runner = Runner(
                    tasks if self.config.only is None else _until_past(tasks),
                    start,
                    registry=self.registry,
                    client=client,
                    out=self.out,
                    total=self.total,
                    settings=dataclasses.replace(
                        self.config.run, thumbnails=self.config.run.thumbnails and self._local_gallery
                    ),
                    observers=self.observers,
                    shared=shared,
                    partial=self.config.only is not None,
                    endpoints={endpoint for _, _, endpoint in checked.plan.counts},
                )
                del tasks  # the runner's alone: it lets go of the walk when its dispatch is over
                if self._stop is not None:
                    self.runner.stop(*self._stop)
                # the page rebuilt every minute or so during the run, in a process of its own
                rebuilder = gallery.Rebuilder(self.out.root) if self._local_gallery else None
                cards = self._cards() if rebuilder is not None else None
                try:
                    summary = await self._run_mirrored(self.runner)
                finally:
                    self.out.results.tap = None
                    if cards is not None:
                        cards.drain()  # here, in the loop's thread: the last lines' cards
                    if rebuilder is not None:
                        rebuilder.stop()
            start = self._dispatched(start)
            if rebuilder is not None:
                await anyio.to_thread.run_sync(rebuilder.close)  # its last build before the final one
                await anyio.to_thread.run_sync(self._build_gallery, cards, summary)
            summary.interrupted = len(start.interrupted.requests)
            ending = {**dataclasses.asdict(summary), "exit_code": summary.exit_code}
            return summary
        finally:
            if cards is not None:
                cards.close()
            try:
                start.log.close(ending)
            except OutputError as exc:  # a full disk: the run's own outcome (74 already) comes first
                log.warning("could not close the attempt log: %s", exc)
            if self.mirror is not None:
                with anyio.CancelScope(shield=True):
                    await self._last_push(summary)
                if summary is not None and self.config.gallery and self.mirror.complete:
                    await anyio.to_thread.run_sync(self._build_gallery_in_store)

    def _dispatched(self, start: RunStart) -> RunStart:
        """What the run keeps once its dispatch is over, for its page and its log's last line: neither the
        ids it passed over (`start.finished`, 8 bytes a task finished before) nor the plan's id set (8
        bytes a task), unless a later job of this manifest will ask for it (`plan_reused`). Nothing after the
        dispatch reads them."""
        if not self.plan_reused:
            self.checked.plan.release_ids()
        return dataclasses.replace(start, finished=Finished(), skip=None)

    async def _mirror(self, start: RunStart) -> None:
        """Mirror DIR into the store from now on: the id scheme once, and every line of this run's
        attempt log before the request it announces leaves."""
        from batch.output.remote import Mirror, open_store

        assert self.config.store is not None
        self.mirror = Mirror(open_store(self.config.store), self.out.root, start.log.path.stem)
        await anyio.to_thread.run_sync(self.mirror.start)
        start.log.publisher = self.mirror.publish_log

    async def _run_mirrored(self, runner: Runner) -> RunSummary:
        """The run, with the mirror pushing new lines beside it; a store that fails stops it (74)."""
        if self.mirror is None:
            return await runner.run()
        mirror = self.mirror

        async def push_beside() -> None:
            try:
                await mirror.run_beside()
            except OutputError as exc:
                runner.stop(str(exc), EXIT_IOERR)

        async with anyio.create_task_group() as group:
            group.start_soon(push_beside)
            summary = await runner.run()
            group.cancel_scope.cancel()
        return summary

    async def _last_push(self, summary: RunSummary | None) -> None:
        """Everything the run saved, into the store; if the store refuses, the run ends 74 (what is
        not uploaded is still pending there, and a later run does it again)."""
        from batch.output.remote import mark_complete

        mirror = self.mirror
        assert mirror is not None
        try:
            await mirror.push()
            mark_complete(mirror)  # else its staging folder is kept, whatever ended the run
            # the run's segments since the last merge, into one object each (failing, it only warns)
            await anyio.to_thread.run_sync(lambda: mirror.merge(final=True))
        except OutputError as exc:
            log.error("%s", exc)
            if summary is not None and summary.stop_code is None:
                summary.stop_reason, summary.stop_code = str(exc), EXIT_IOERR
