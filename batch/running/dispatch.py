"""The dispatcher: tasks stream from the manifest to a fixed pool of workers, each of which runs one task
at a time (batch.running.attempt); around them, the run's control: stop, the deadline, the heartbeat and
the journals' fsync. The summary counts the run's events as they are emitted.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batch.errors import ManifestError, OutputError
from batch.events import Event, Heartbeat, Observer, RunStarted, RunStopping
from batch.exitcodes import EXIT_DATAERR, EXIT_DEADLINE, EXIT_FAILED, EXIT_IOERR, EXIT_UNAVAILABLE
from batch.kind import Registry
from batch.manifest.tasks import TaskSpec
from batch.output.files import reason
from batch.output.gallery import Thumbnailer
from batch.output.runlog import Interrupted, KeptAnswer, RunLog
from batch.output.store import OutputDir
from batch.running.answers import short
from batch.running.attempt import TaskAttempts
from batch.running.budget import Budget, Spent
from batch.running.client import ApiClient
from batch.running.context import AttemptContext
from batch.running.finishedset import Finished
from batch.running.health import ServiceHealth
from batch.running.limits import EndpointLimits
from batch.running.looplag import LoopLag
from batch.running.summary import RunSettings, RunSummary

if TYPE_CHECKING:
    from batch.running.shared import SharedLimits

PRODUCER_BATCH = 64  # tasks pulled from the manifest per trip to a worker thread

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunStart:
    """What a run learnt from DIR before its first request (see Job._prepare)."""

    finished: Finished  # the plan's positions with a result line (one bit a task)
    finished_before: int  # the plan's tasks with a result line
    failed_before: int  # of them, failed
    skip: Callable[[int], bool] | None  # positions in the plan not to send
    left_alone: int  # pending tasks that --retry-failed does not send (it sends the failed ones only)
    interrupted: Interrupted  # what killed runs left
    spent: Spent | None  # what the ledger says was spent, when a budget needs it
    log: RunLog  # this run's attempt log, open
    tag: str
    # task id -> the answer a killed run paid for and kept, to finish the task from (runlog.recover)
    kept: Mapping[str, KeptAnswer] = field(default_factory=dict)
    # DIR is a store's staging folder: what only DIR holds (answers/.to-finish.jsonl, an answer no line
    # names) never reaches the store, so a stopped task's kept answer goes up with a failed line instead
    on_store: bool = False


class Runner:
    """Runs TaskSpecs against the API into an OutputDir."""

    def __init__(
        self,
        tasks: Iterator[TaskSpec],
        start: RunStart,
        *,
        registry: Registry,
        client: ApiClient,
        out: OutputDir,
        total: int,
        settings: RunSettings,
        observers: Sequence[Observer] = (),
        rng: random.Random | None = None,
        shared: SharedLimits | None = None,
        partial: bool = False,
        endpoints: Collection[str] = (),
    ) -> None:
        """`total`: the tasks the run is for, finished ones included; `partial`: `start` counted the
        finished tasks of more than those (a shard's run counts its DIR's, which may hold others');
        `endpoints`: those the tasks go to (the plan's), for ServiceHealth's give-up of one alone."""
        self._tasks = tasks
        self._partial = partial
        self._orphaned = 0 if partial else start.finished.orphaned  # a shard's DIR holds others' lines
        self._changed = start.finished.changed
        self._out = out
        self._settings = settings
        self._stopping = anyio.Event()
        self._shared = shared
        if shared is not None:  # its waits end when the run stops, as the run's own do
            shared.sleep, shared.stopping = self._sleep, self._stopping.is_set
        self._limits = EndpointLimits(settings.limits, shared=shared)
        # The run's blocking work (building specs and requests, decoding, fsync'd writes) has threads of
        # its own: with fewer threads than tasks in flight, answers would wait for a thread while their
        # disk writes wait for the disk. anyio's process-wide default limiter is left as it is.
        workers = settings.limits.concurrency or settings.limits.max_concurrency
        self._threads = anyio.CapacityLimiter(workers + 8)
        self._health = ServiceHealth(
            max(5, settings.limits.concurrency or 16),
            settings.outage_limit,
            on_outage=lambda reason: self.stop(reason, EXIT_UNAVAILABLE),
            probe_timeout=client.config.timeout,
            endpoints=endpoints,
        )
        self._producer_scope = anyio.CancelScope()
        self._work_scope = anyio.CancelScope()
        self.summary = RunSummary(
            total=total,
            finished_before=start.finished_before,
            failed_before=start.failed_before,
            left_alone=start.left_alone,
        )
        self._observers: list[Observer] = list(observers)  # after the summary, which counts first
        self._attempts = TaskAttempts(self._context(registry, client, out, start, rng))

    def _context(
        self,
        registry: Registry,
        client: ApiClient,
        out: OutputDir,
        start: RunStart,
        rng: random.Random | None,
    ) -> AttemptContext:
        """What every task's attempts share: the collaborators given, and the run's own control."""
        settings = self._settings
        return AttemptContext(
            registry=registry,
            client=client,
            out=out,
            log=start.log,
            settings=settings,
            limits=self._limits,
            budget=Budget(settings.budget, start.spent if start.spent is not None else Spent()),
            health=self._health,
            emit=self._emit,
            stop=self.stop,
            stopping=self._stopping.is_set,
            sleep=self._sleep,
            threads=self._threads,
            run_tag=start.tag,
            rng=rng or random.Random(),
            interrupted=dict(start.interrupted.by_task),  # task id -> requests of killed runs, maybe billed
            kept=start.kept,
            on_store=start.on_store,
        )

    # -- control ------------------------------------------------------------------------------------

    def stop(self, reason: str, exit_code: int) -> None:
        """Stop dispatching: no new task starts and no retry is sent; in-flight requests finish.
        The first reason given is the one reported."""
        if self.summary.stop_code is None:
            self.summary.stop_reason = reason
            self.summary.stop_code = exit_code
            self._emit(RunStopping(reason, exit_code))
        self._stopping.set()
        self._producer_scope.cancel()
        self._health.release()

    def cancel_in_flight(self) -> None:
        """Abandon the requests still in flight (after a grace period, or a second signal)."""
        self._work_scope.cancel()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _emit(self, event: Event) -> None:
        """Hand `event` to the summary, then to each view of the run (the progress bar, log lines, the
        gallery's thumbnails, a library's callbacks). A view that raises is a view that failed (a
        terminal gone, a closed stdout): it is dropped with one warning; the run, and the task whose
        bookkeeping emitted the event, go on as if it had never been there."""
        self.summary.observe(event)
        for observer in self._observers:
            try:
                observer(event)
            except Exception as exc:
                self._observers = [other for other in self._observers if other is not observer]
                logger.warning(
                    "a view of the run failed (%s: %s); the run goes on without it",
                    type(exc).__name__,
                    short(exc),
                    exc_info=True,
                )

    async def _sleep(self, seconds: float) -> None:
        """A retry's wait, cut short when the run stops (the next attempt then sees it and gives up)."""
        with anyio.move_on_after(seconds):
            await self._stopping.wait()

    # -- the run ------------------------------------------------------------------------------------

    async def run(self) -> RunSummary:
        started = time.monotonic()
        summary = self.summary
        self._emit(
            RunStarted(summary.total, summary.finished_before, summary.not_run, self._orphaned, self._changed)
        )
        if self._changed:  # without a word, a fixed prompt or a --set would do nothing
            logger.warning(
                "%s finished task(s) ran with another request than the manifest gives them now: a prompt, "
                "a setting (--set, defaults), the endpoint or an input file changed since. They are not "
                "sent again: a task's id is its `id`, and results.jsonl holds it. To buy them again, run "
                "with --rerun-changed",
                f"{self._changed:,}",
            )
        if self._orphaned and summary.not_run:  # they may be the tasks to send, under other names
            logger.warning(  # the run's, not a view's: said with a progress bar too
                "results.jsonl holds %s result line(s) of tasks this manifest no longer has: a prompt, a "
                "setting (--set, defaults) or the endpoint changed since they ran, or the task was removed. "
                "Such a task is a new one, and is sent; `status` counts the old lines apart (orphaned)",
                f"{self._orphaned:,}",
            )
        workers = self._settings.limits.concurrency or self._settings.limits.max_concurrency
        # no more workers than the run has tasks to send (a shard's: its tasks, finished ones included,
        # as a shard's finished count is not known here)
        workers = max(1, min(workers, summary.total if self._partial else summary.not_run))
        send, receive = anyio.create_memory_object_stream[TaskSpec](min(workers, 64))
        lag = LoopLag()
        thumbnailer = Thumbnailer() if self._settings.thumbnails else None
        if thumbnailer is not None:  # the gallery observes the run: each saved image's thumbnail
            self._observers.append(thumbnailer.observer(self._out.root))
        try:
            await self._dispatch(send, receive, lag, workers, started)
        finally:
            if thumbnailer is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(thumbnailer.close, limiter=self._threads)
        # tasks rate limited (or failed by the service) are not failed, and not done: 69 says so
        if not self.stopping:
            self._left_pending()
        with anyio.CancelScope(shield=True):
            try:
                await self._out.sync()
            except OutputError as exc:
                self.stop(str(exc), EXIT_IOERR)
        summary.maybe_billed = self._attempts.maybe_billed
        summary.maybe_billed_counted = self._attempts.maybe_billed_counted
        summary.seconds = time.monotonic() - started
        summary.loop_lag_p99_ms = round(lag.percentile(0.99) * 1000, 1)
        summary.concurrency = self._limits.snapshot()
        # the dispatch is over: its walk of the manifest is not read again
        self._tasks = iter(())
        return summary

    def _left_pending(self) -> None:
        """Stop (69) if tasks were left pending, rate limited or the service failing, though every other
        task ran."""
        attempts = self._attempts
        left = attempts.left_at_deadline + attempts.left_given_up + attempts.left_failing
        if not left:
            return
        why = []
        if attempts.left_given_up:
            endpoints = ", ".join(self._health.endpoints_given_up) or "?"
            why.append(
                f"{attempts.left_given_up:,} of endpoint(s) {endpoints}, which answered nothing but HTTP 429 "
                f"(rate limited) for --outage-limit ({self._settings.outage_limit:g} s)"
            )
        if attempts.left_at_deadline:
            why.append(f"{attempts.left_at_deadline:,} still answered 429 at their --task-deadline")
        if attempts.left_failing:
            why.append(
                f"{attempts.left_failing:,} still answered HTTP 5xx (or no connection) at their "
                "--task-deadline, the service failing more than it answered"
            )
        limited = attempts.left_at_deadline + attempts.left_given_up
        if limited and attempts.left_failing:
            cause = "rate limited or the service failing"
        else:
            cause = "rate limited" if limited else "the service failing"
        self.stop(
            f"{left:,} task(s) left pending, {cause} ({'; '.join(why)}): the next run sends them",
            EXIT_UNAVAILABLE,
        )

    async def _dispatch(
        self,
        send: MemoryObjectSendStream[TaskSpec],
        receive: MemoryObjectReceiveStream[TaskSpec],
        lag: LoopLag,
        workers: int,
        started: float,
    ) -> None:
        async with anyio.create_task_group() as background:
            background.start_soon(self._sync_journals)
            background.start_soon(lag.watch)
            background.start_soon(self._health.watch)  # --outage-limit, kept while every task sleeps
            if self._settings.deadline is not None:
                background.start_soon(self._watch_deadline, self._settings.deadline)
            if self._settings.heartbeat > 0:
                background.start_soon(self._beat, self._settings.heartbeat, started)
            if self._shared is not None:
                background.start_soon(self._shared.keep_leases)
            with self._work_scope:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._produce, send)
                    for _ in range(workers):
                        group.start_soon(self._work, receive.clone())
                    receive.close()
            background.cancel_scope.cancel()

    async def _sync_journals(self) -> None:
        """fsync the journals beside the work; a full disk stops the run (74), it does not crash it."""
        try:
            await self._out.run_syncer()
        except OutputError as exc:
            self.stop(str(exc), EXIT_IOERR)

    async def _watch_deadline(self, deadline: float) -> None:
        """Stop dispatching when the requests in flight would need until the deadline to finish (the
        90th percentile of recent requests' times; before any has finished, a minute, or a tenth of the
        time given if that is less), and cancel what is left at it."""
        first_guess = min(60.0, (deadline - time.time()) / 10)
        durations = self._attempts.durations
        while not self.stopping:
            margin = _percentile(durations, 0.9) if durations else first_guess
            left = deadline - time.time() - margin
            if left <= 0:
                when = datetime.fromtimestamp(deadline).strftime("%Y-%m-%d %H:%M")
                self.stop(f"deadline: stopped dispatching so that the run ends by {when}", EXIT_DEADLINE)
                break
            await anyio.sleep(min(left, 1.0))
        await anyio.sleep(max(0.0, deadline - time.time()))
        self.cancel_in_flight()

    async def _beat(self, every: float, started: float) -> None:
        """A Heartbeat event every `every` seconds: the periodic log line of an unattended run."""
        while True:
            await anyio.sleep(every)
            summary = self.summary
            done = summary.succeeded + summary.failed
            elapsed = time.monotonic() - started
            rate = done / elapsed if elapsed > 0 else 0.0
            left = summary.not_run
            self._emit(
                Heartbeat(
                    done=done,
                    failed=summary.failed,
                    left=left,
                    in_flight=self._attempts.in_flight,
                    retries=summary.retries,
                    per_second=rate,
                    eta_seconds=left / rate if rate > 0 else None,
                    tokens=summary.total_tokens,
                    cost=summary.cost,
                    unpriced=summary.unpriced,
                    last_error=summary.last_error,
                )
            )

    async def _produce(self, send: MemoryObjectSendStream[TaskSpec]) -> None:
        async with send:
            with self._producer_scope:
                while True:
                    try:
                        batch = await anyio.to_thread.run_sync(self._next_batch, limiter=self._threads)
                    except ManifestError as exc:
                        first = exc.problems[0] if exc.problems else exc
                        self.stop(f"the manifest changed during the run: {first}", EXIT_DATAERR)
                        return
                    except OutputError as exc:  # the manifest's order could not be read back
                        self.stop(str(exc), EXIT_IOERR)
                        return
                    except OSError as exc:  # the manifest itself (a disk failing under it)
                        self.stop(f"cannot read the manifest during the run: {reason(exc)}", EXIT_IOERR)
                        return
                    except Exception as exc:  # a fault of ours: the requests in flight still finish
                        logger.exception("the walk of the manifest: unexpected %s", type(exc).__name__)
                        message = f"unexpected {type(exc).__name__} in the walk of the manifest: {short(exc)}"
                        self.stop(message, EXIT_FAILED)
                        return
                    if not batch:
                        return
                    try:
                        for spec in batch:
                            try:  # into the buffer without a round through the event loop while it has room
                                send.send_nowait(spec)
                            except anyio.WouldBlock:
                                await send.send(spec)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return  # the workers are gone (the run stopped while this batch was being built)

    def _next_batch(self) -> list[TaskSpec]:
        """Up to PRODUCER_BATCH unfinished tasks. Runs in a worker thread: building a spec may hash files.
        The walk passes over the finished ones (start.skip), and stops at any task that is not the one
        the check found at its position (iter_tasks), so none of them is sent again."""
        return list(itertools.islice(self._tasks, PRODUCER_BATCH))

    async def _work(self, receive: MemoryObjectReceiveStream[TaskSpec]) -> None:
        async with receive:
            while True:
                try:  # take a waiting task without a round through the event loop; wait only if none
                    spec = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        spec = await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                if not self.stopping:
                    await self._attempts.run_task(spec)


def _percentile(values: deque[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
