"""The library API: run a manifest, or tasks built in code, from Python, with the same checkpoint, ledger,
limits and budgets as `maas-batch run`.

    import batch

    summary = batch.run("jobs/tonight.yaml", "runs/tonight", concurrency=8, max_cost=20)

    tasks = batch.from_tasks([{"kind": "generate", "id": "fox", "prompt": "a red fox in snow"}])
    async for result in batch.stream(tasks, "runs/foxes", simulate=True):
        print(result.id, result.status, result.files)

The whole manifest is validated before anything is sent (ManifestError lists every problem). The API key
comes from MAAS_API_KEY only. The run happens in a thread of its own, with its own event loop: `run` blocks
until it ends and works from any code, async or not; `stream` hands each result to the caller's loop as
it is saved (asyncio only). Leaving `stream` early (break, an exception, cancellation) stops dispatching,
lets the requests in flight finish and be saved (for up to `grace` seconds), and leaves DIR resumable;
`async with` around the stream waits there for that, otherwise it happens in the background. A callback
that raises stops the run the same way, and its exception is raised once the run has ended.

Task kinds of one's own (subclasses of batch.kind.TaskKind) run beside the built-in ones:
`batch.run(manifest, out, kinds=[MyKind()])`, also for `stream` and `validate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Unpack

from batch.config import (
    Options,
    OptionValues,
    check_run_settings,
    checked_manifest,
    connection,
    endpoint_for,
    job_config,
    loop_factory,
)
from batch.errors import unwrap
from batch.events import Event, TaskFinished
from batch.exitcodes import EXIT_TEMPFAIL
from batch.kind import TaskKind
from batch.kind import builtin_registry as registry
from batch.manifest.checked import CheckedManifest
from batch.manifest.plancache import FOLDER as PLAN_FOLDER
from batch.manifest.read import Manifest, from_data
from batch.recorded import Result, in_manifest_order, local_dir
from batch.running.job import Job, JobConfig
from batch.running.summary import RunSummary

log = logging.getLogger("batch.api")


def from_tasks(
    items: Iterable[Mapping[str, Any]],
    *,
    defaults: Mapping[str, Any] | None = None,
    endpoints: Mapping[str, Any] | None = None,
    prices: Mapping[str, Any] | None = None,
    folder: str | Path = ".",
    name: str = "tasks",
) -> Manifest:
    """A manifest built in code: each item is a task as a manifest's `tasks:` list holds it (`kind`, `id`,
    the API fields, `meta`, expansions such as `prompts_file`); paths are relative to `folder`. Messages
    about a task name it `name[index]`."""
    data: dict[str, Any] = {"tasks": [dict(item) for item in items]}
    for key, value in (("defaults", defaults), ("endpoints", endpoints), ("prices", prices)):
        if value is not None:
            data[key] = dict(value)
    return from_data(data, Path(folder).resolve(), name)


def validate(
    manifest: str | Path | Manifest, *, kinds: Iterable[TaskKind] = (), **options: Unpack[OptionValues]
) -> CheckedManifest:
    """Check a whole manifest as `run` would, sending nothing. Raises ManifestError with every problem
    (MissingConfigError when they are all missing configuration); the result's `plan` has the task counts
    and estimates. `kinds`: task kinds of the caller's own, beside the built-in ones."""
    chosen = Options(**options)
    checked = checked_manifest(manifest, chosen, endpoint_for(chosen), None, registry(kinds))
    check_run_settings(checked, chosen)  # its prices, budget and deadline, as `run` checks them
    return checked


def run(
    manifest: str | Path | Manifest,
    out: str | Path,
    *,
    on_result: Callable[[Result], None] | None = None,
    on_event: Callable[[Event], None] | None = None,
    kinds: Iterable[TaskKind] = (),
    **options: Unpack[OptionValues],
) -> RunSummary:
    """Run every task of `manifest` that `out` does not hold yet; block until the run ends. Returns the
    run's summary (`exit_code` as the CLI's). `options`: any field of batch.Options (concurrency,
    max_cost, deadline, simulate...). `on_result` and `on_event` are called in the run's thread.

    KeyboardInterrupt stops dispatching and lets the requests in flight finish for `grace` seconds (a
    second one cancels them at once), then is raised again; DIR stays resumable. An exception raised by a
    callback stops the run the same way and is raised once the run has ended. `kinds`: task kinds of the
    caller's own (batch.kind.TaskKind instances), beside the built-in ones."""
    session = _Session(
        manifest, local_dir(out), Options(**options), on_event, on_result, stream=False, kinds=kinds
    )
    try:
        session.start()
        session.wait()
    except KeyboardInterrupt as interrupt:
        if not session.started:
            raise
        session.stop("interrupted (KeyboardInterrupt)")
        try:
            session.wait_or_cancel()
        except KeyboardInterrupt:
            session.cancel()
            session.wait_through_interrupts()
        if session.error is not None:  # what else ended the run (a full disk, say) is not lost
            raise interrupt from session.error
        raise
    return session.summary()


def stream(
    manifest: str | Path | Manifest,
    out: str | Path,
    *,
    on_event: Callable[[Event], None] | None = None,
    kinds: Iterable[TaskKind] = (),
    include_finished: bool = False,
    **options: Unpack[OptionValues],
) -> ResultStream:
    """The results of a run as they finish: `async for result in batch.stream(...)`. The manifest is
    validated at once (ManifestError); the run starts with the iteration. `.summary` once it is over.
    `include_finished`: first the results `out` already holds for the manifest's tasks, in its order (a
    resumed pipeline gets the whole set; with `retry_failed`, the failed ones come when run again, and with
    `rerun_changed` those whose request changed)."""
    session = _Session(manifest, local_dir(out), Options(**options), on_event, None, stream=True, kinds=kinds)
    return ResultStream(session, include_finished)


class ResultStream:
    """An async iterable of Results; also an async context manager that stops the run on leaving."""

    def __init__(self, session: _Session, include_finished: bool = False) -> None:
        self._session = session
        self._iterated = False
        self._include_finished = include_finished

    @property
    def summary(self) -> RunSummary:
        return self._session.summary()

    def __aiter__(self) -> AsyncIterator[Result]:
        if self._iterated:
            raise RuntimeError("a batch.stream can be iterated once")
        self._iterated = True
        return self._results()

    async def __aenter__(self) -> ResultStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the run if it is still going (in-flight requests get `grace`), and wait for its end."""
        session = self._session
        if session.started and not session.done:
            session.stop("the caller stopped reading the results")
            await asyncio.to_thread(session.wait_or_cancel)

    async def _results(self) -> AsyncIterator[Result]:
        session = self._session
        if self._include_finished:
            for item in await asyncio.to_thread(session.finished):
                yield item
        session.start()
        try:
            while True:
                items = await asyncio.to_thread(session.take)
                if items is None:
                    break
                for item in items:
                    yield item
            session.wait()  # raises what ended the run, if an error did
        finally:
            await self.aclose()


_END = object()


class _Session:
    """One run of a checked manifest in a thread of its own (an event loop of its own)."""

    def __init__(
        self,
        manifest: str | Path | Manifest,
        out: Path,
        options: Options,
        on_event: Callable[[Event], None] | None,
        on_result: Callable[[Result], None] | None,
        *,
        stream: bool,
        kinds: Iterable[TaskKind],
    ) -> None:
        self._out = out.absolute()  # Result.files are absolute; the run does not follow a chdir
        self._options = options
        self._grace = options.grace
        self._on_event = on_event
        self._on_result = on_result
        self._stream = stream  # queue the results for `take` (not for `run`: nobody would read them)
        self._deadline = options.deadline_time()
        # Validate now, in the caller's thread: a bad manifest raises before anything starts.
        self._kinds = registry(kinds)  # the built-in kinds and the caller's
        self._checked = checked_manifest(
            manifest, options, endpoint_for(options), _plan_cache(manifest, self._out), self._kinds, self._out
        )
        self._results: queue.SimpleQueue[Result | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name="maas-batch-run", daemon=True)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._job: Job | None = None
        self._pending: list[Callable[[Job], None]] = []  # asked for before the job existed
        self._finished = threading.Event()  # set when the thread's work is over, however it ended
        self._summary: RunSummary | None = None
        self._error: BaseException | None = None
        self._callback_error: BaseException | None = None
        self.started = False

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def finished(self) -> list[Result]:
        """What DIR already holds of the manifest's tasks, in its order (before the run starts)."""
        # those are run again, and come as they finish
        options = self._options
        again = in_manifest_order(
            self._checked, self._out, failed=not options.retry_failed, changed=not options.rerun_changed
        )
        return list(again)

    def start(self) -> None:
        if not self.started:
            self._thread.start()
            self.started = True  # after: a Ctrl-C during start() finds it False and waits for nothing

    def _observe(self, event: Event) -> None:
        """In the run's thread. A callback that raises stops the run (its error is raised at the end)."""
        try:
            if isinstance(event, TaskFinished):
                result = Result.from_record(event.record, self._out)
                if self._stream:
                    self._results.put(result)
                if self._on_result is not None:
                    self._on_result(result)
            if self._on_event is not None:
                self._on_event(event)
        except Exception as exc:
            if self._callback_error is None:
                self._callback_error = exc
                log.error("a callback raised %r: stopping the run", exc)
                self.stop(f"a callback raised {exc!r}")
                # as after Ctrl-C: the requests in flight get `grace` seconds, then are cancelled
                self._call(self._cancel_after_grace)

    def _cancel_after_grace(self, job: Job) -> None:
        asyncio.get_running_loop().call_later(self._grace, job.cancel_in_flight)

    def _main(self) -> None:
        try:
            with connection(self._options) as connected:
                run_info = {"api": "python", "cwd": os.getcwd()}
                config = job_config(
                    self._options, self._checked, self._out, connected, run_info, self._deadline
                )
                with asyncio.Runner(loop_factory=loop_factory()) as runner:
                    self._summary = runner.run(self._run(config, self._checked))
        except BaseException as exc:  # handed to the caller's thread
            self._error = unwrap(exc)
        finally:
            self._finished.set()
            self._results.put(_END)

    async def _run(self, config: JobConfig, checked: CheckedManifest) -> RunSummary:
        with Job(config, checked, self._kinds, [self._observe]) as job:
            with self._lock:
                self._loop, self._job = asyncio.get_running_loop(), job
                pending, self._pending = self._pending, []
            for action in pending:
                action(job)
            return await job.run()

    def _call(self, action: Callable[[Job], None]) -> None:
        """Do `action` to the job in its own thread (now if it is running, else as soon as it is)."""
        with self._lock:
            loop, job = self._loop, self._job
            if loop is None or job is None:
                self._pending.append(action)
                return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the run is over
            loop.call_soon_threadsafe(action, job)

    def stop(self, reason: str) -> None:
        """Stop dispatching; requests in flight finish (see `wait_or_cancel`). Does not block."""
        self._call(lambda job: job.stop(reason, EXIT_TEMPFAIL))

    def cancel(self) -> None:
        """Cancel the requests still in flight (they may be billed; DIR stays resumable)."""
        self._call(lambda job: job.cancel_in_flight())

    def wait_or_cancel(self) -> None:
        """Until the run ends, cancelling what is still in flight after `grace` seconds."""
        if not self._finished.wait(self._grace):
            log.warning("grace period of %g s over: cancelling the requests still in flight", self._grace)
            self.cancel()
            self.wait_quietly()

    def wait_quietly(self) -> None:
        while not self._finished.wait(0.5):  # in slices, so that KeyboardInterrupt gets through
            pass

    def wait_through_interrupts(self) -> None:
        """Until the run ends, after `cancel`: a few moments, during which it still holds DIR's lock."""
        while True:
            try:
                self.wait_quietly()
                return
            except KeyboardInterrupt:
                log.warning("the requests in flight are being cancelled: the run ends in a moment")

    @property
    def error(self) -> BaseException | None:
        """What ended the run in its thread, if an error did."""
        return self._error

    def take(self) -> list[Result] | None:
        """The results saved since the last call (waiting for one), or None when the run is over."""
        first = self._results.get()
        if first is _END:
            return None
        items = [first]
        while True:
            try:
                item = self._results.get_nowait()
            except queue.Empty:
                break
            if item is _END:
                self._results.put(_END)  # seen by the next call
                break
            items.append(item)
        return [item for item in items if isinstance(item, Result)]

    def wait(self) -> None:
        """Until the run ends; raises what ended it, if an error did, or what a callback raised."""
        self.wait_quietly()
        if self._error is not None:
            raise self._error
        if self._callback_error is not None:
            raise self._callback_error

    def summary(self) -> RunSummary:
        if self._summary is None:
            if self._error is not None:
                raise self._error
            raise RuntimeError("the run has not ended yet")
        return self._summary


def _plan_cache(manifest: str | Path | Manifest, out: Path) -> Path | None:
    """DIR's remembered plan, for a manifest file (one built in code is checked each time)."""
    return None if isinstance(manifest, Manifest) else out / PLAN_FOLDER


__all__ = ["Result", "ResultStream", "from_tasks", "run", "stream", "validate"]
