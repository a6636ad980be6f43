"""The dispatcher: tasks stream from the manifest to a fixed pool of workers; each task is attempted under
the retry policy, billed usage is recorded the moment it arrives, outputs are committed, and the result
line is written last.

A task whose run was stopped (a signal, a refused key, an exhausted quota) is not recorded at all: it is
still pending, and the next run does it. Only tasks with a definite outcome get a result line.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import anyio
from anyio.abc import ObjectSendStream
from anyio.streams.memory import MemoryObjectReceiveStream

from batch.errors import (
    ApiError,
    ApiStatusError,
    BrokenAnswerError,
    ManifestError,
    OutputError,
    TransportError,
)
from batch.events import (
    AttemptFailed,
    Billed,
    Event,
    Heartbeat,
    Observer,
    RunStarted,
    RunStopping,
    TaskFinished,
    TaskStarted,
)
from batch.exitcodes import (
    EXIT_BUDGET,
    EXIT_DATAERR,
    EXIT_DEADLINE,
    EXIT_IOERR,
    EXIT_UNAVAILABLE,
)
from batch.kind import Answer, ApiRequest, EncodedImage, Registry, TaskKind
from batch.manifest.inputs import read_file
from batch.manifest.tasks import TaskSpec
from batch.output.gallery import Thumbnailer, thumbnail_name
from batch.output.runlog import RunLog
from batch.output.store import THUMBS, OutputDir, OutputFile
from batch.running.budget import Budget, Spent
from batch.running.client import ApiClient, Reply
from batch.running.health import ServiceHealth
from batch.running.idset import IdSet
from batch.running.imaging import decode_images
from batch.running.limits import EndpointLimits
from batch.running.looplag import LoopLag
from batch.running.records import ErrorInfo, ResultRecord, TaskUsage, UsageRecord, now
from batch.running.retry import RetryNotice, Verdict, call_with_retries, classify
from batch.running.summary import RunSettings, RunSummary

logger = logging.getLogger(__name__)

PRODUCER_BATCH = 64  # tasks pulled from the manifest per trip to a worker thread
PROMPT_SHOWN = 2000  # characters of a prompt kept in its result line


@dataclass
class _TaskState:
    attempts: int = 0
    lost_to_outage: bool = False  # the last attempt's failure was the service's outage: it costs none
    maybe_billed: int = 0  # this run's requests that may have been billed without a result
    carried: int = 0  # such requests of earlier runs that were killed
    estimate: int = 0  # tokens booked with the pacer for the attempt in flight
    cost: float = 0.0
    unpriced: bool = False  # a billed answer of this task had no price
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    billed: bool = False
    booked: tuple[int, float | None] | None = None  # the budget's estimate for the attempt in flight
    answer: Answer | None = None
    files: list[str] = field(default_factory=list)
    answer_file: str | None = None  # DIR/answers/... : the raw body of a paid answer that was not usable
    server_request_id: str | None = None  # the server's id of the answer kept (x-request-id, or its id)


class _Stopped(Exception):
    """The run stopped before this attempt could be sent."""


class Runner:
    """Runs TaskSpecs against the API into an OutputDir."""

    def __init__(
        self,
        tasks: Iterator[TaskSpec],
        *,
        registry: Registry,
        client: ApiClient,
        out: OutputDir,
        finished: IdSet,
        failed_before: int = 0,
        left_alone: int = 0,
        total: int,
        settings: RunSettings,
        log: RunLog,
        run_tag: str,
        interrupted: Mapping[str, int] | None = None,
        spent: Spent | None = None,
        observers: Sequence[Observer] = (),
        rng: random.Random | None = None,
    ) -> None:
        self._tasks = tasks
        self._registry = registry
        self._client = client
        self._out = out
        self._finished = finished
        self._settings = settings
        self._rng = rng or random.Random()
        self._log = log
        self._run_tag = run_tag
        self._interrupted = dict(interrupted or {})  # task id -> requests of killed runs, maybe billed
        self._stopping = anyio.Event()
        self._limits = EndpointLimits(settings.limits)
        self._budget = Budget(settings.budget, spent if spent is not None else Spent())
        self._durations: deque[float] = deque(maxlen=256)  # recent requests' seconds, for the deadline
        self._thumbnailer: Thumbnailer | None = None
        # The run's blocking work (building specs and requests, decoding, fsync'd writes) has threads of
        # its own: with fewer threads than tasks in flight, answers would wait for a thread while their
        # disk writes wait for the disk. anyio's process-wide default limiter is left as it is.
        workers = settings.limits.concurrency or settings.limits.max_concurrency
        self._threads = anyio.CapacityLimiter(workers + 8)
        self._in_flight = 0
        self._health = ServiceHealth(
            max(5, settings.limits.concurrency or 16),
            settings.outage_limit,
            on_outage=lambda reason: self.stop(reason, EXIT_UNAVAILABLE),
        )
        self._producer_scope = anyio.CancelScope()
        self._work_scope = anyio.CancelScope()
        self.summary = RunSummary(
            total=total, finished_before=len(finished), failed_before=failed_before, left_alone=left_alone
        )
        self._observers: list[Observer] = [self.summary.observe, *observers]  # the summary counts first

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
        for observer in self._observers:
            observer(event)

    # -- the run ------------------------------------------------------------------------------------

    async def run(self) -> RunSummary:
        started = time.monotonic()
        summary = self.summary
        self._emit(RunStarted(summary.total, summary.finished_before, summary.not_run))
        workers = self._settings.limits.concurrency or self._settings.limits.max_concurrency
        send, receive = anyio.create_memory_object_stream[TaskSpec](min(workers, 64))
        lag = LoopLag()
        if self._settings.thumbnails:
            self._thumbnailer = Thumbnailer()
        try:
            await self._dispatch(send, receive, lag, workers, started)
        finally:
            if self._thumbnailer is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._thumbnailer.close, limiter=self._threads)
        with anyio.CancelScope(shield=True):
            try:
                await self._out.sync()
            except OutputError as exc:
                self.stop(str(exc), EXIT_IOERR)
        summary.seconds = time.monotonic() - started
        summary.loop_lag_p99_ms = round(lag.percentile(0.99) * 1000, 1)
        summary.concurrency = self._limits.snapshot()
        return summary

    async def _dispatch(
        self,
        send: ObjectSendStream[TaskSpec],
        receive: MemoryObjectReceiveStream[TaskSpec],
        lag: LoopLag,
        workers: int,
        started: float,
    ) -> None:
        async with anyio.create_task_group() as background:
            background.start_soon(self._sync_journals)
            background.start_soon(lag.watch)
            if self._settings.deadline is not None:
                background.start_soon(self._watch_deadline, self._settings.deadline)
            if self._settings.heartbeat > 0:
                background.start_soon(self._beat, self._settings.heartbeat, started)
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
        while not self.stopping:
            margin = _percentile(self._durations, 0.9) if self._durations else first_guess
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
                    in_flight=self._in_flight,
                    retries=summary.retries,
                    per_second=rate,
                    eta_seconds=left / rate if rate > 0 else None,
                    tokens=summary.total_tokens,
                    cost=summary.cost,
                    unpriced=summary.unpriced,
                )
            )

    async def _produce(self, send: ObjectSendStream[TaskSpec]) -> None:
        async with send:
            with self._producer_scope:
                while True:
                    try:
                        batch = await anyio.to_thread.run_sync(self._next_batch, limiter=self._threads)
                    except ManifestError as exc:
                        first = exc.problems[0] if exc.problems else exc
                        self.stop(f"the manifest changed during the run: {first}", EXIT_DATAERR)
                        return
                    if not batch:
                        return
                    for spec in batch:
                        await send.send(spec)

    def _next_batch(self) -> list[TaskSpec]:
        """Up to PRODUCER_BATCH unfinished tasks. Runs in a worker thread: building a spec may hash files."""
        batch: list[TaskSpec] = []
        for spec in self._tasks:
            if spec.id not in self._finished:
                batch.append(spec)
                if len(batch) >= PRODUCER_BATCH:
                    break
        return batch

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
                    await self._run_task(spec)

    async def _run_task(self, spec: TaskSpec) -> None:
        kind = self._registry[spec.kind]
        state = _TaskState(carried=self._interrupted.get(spec.id, 0))
        started = time.monotonic()
        self._emit(TaskStarted(spec.id, spec.kind))
        try:
            await call_with_retries(
                self._settings.retry,
                lambda: self._attempt(spec, kind, state),
                sleep=self._sleep,
                on_retry=lambda notice: self._on_retry(spec, notice),
                rng=self._rng,
                lost_to_outage=lambda error: state.lost_to_outage,
            )
        except _Stopped:
            self.summary.maybe_billed += state.maybe_billed
            return
        except OutputError as exc:
            self.summary.maybe_billed += state.maybe_billed
            self.stop(str(exc), EXIT_IOERR)
            return
        except ApiError as exc:
            decision = classify(exc)
            if decision.verdict is Verdict.STOP:
                self.summary.maybe_billed += state.maybe_billed
                self.stop(decision.reason, decision.exit_code)
                return
            await self._finish(spec, state, started, error=exc)
            return
        except Exception as exc:  # a fault of ours with this one task: it fails, the night goes on
            logger.exception("task %s: unexpected %s", spec.id, type(exc).__name__)
            failure = BrokenAnswerError(f"{type(exc).__name__}: {_short(exc)}", error_type="internal_error")
            await self._finish(spec, state, started, error=failure)
            return
        await self._finish(spec, state, started)

    async def _sleep(self, seconds: float) -> None:
        """A retry's wait, cut short when the run stops (the next attempt then sees it and gives up)."""
        with anyio.move_on_after(seconds):
            await self._stopping.wait()

    def _on_retry(self, spec: TaskSpec, notice: RetryNotice) -> None:
        self._emit(AttemptFailed(spec.id, notice.attempt, _describe(notice.error), notice.wait))

    async def _attempt(self, spec: TaskSpec, kind: TaskKind, state: _TaskState) -> None:
        await self._health.admit()  # during an outage, wait here without spending an attempt
        if self.stopping:
            raise _Stopped
        if spec.inputs:
            request = await anyio.to_thread.run_sync(
                kind.build_request, spec.fields, read_file, limiter=self._threads
            )
        else:
            request = kind.build_request(spec.fields, read_file)
        adaptive = self._limits.adaptive(spec.endpoint)
        started = await adaptive.acquire() if adaptive is not None else 0.0
        answered = False  # a 2xx came back: billed, whether or not it says how much
        try:
            try:
                if self._limits.paced or self._budget.limits.any:
                    estimate = kind.estimate(spec.fields)
                    state.estimate = estimate.total
                    if self._limits.paced:
                        await self._sleep(self._limits.pacer(spec.endpoint).book(state.estimate))
                    if self._budget.limits.any and not self.stopping:
                        booked = (estimate.total, self._settings.prices.cost(spec.model, estimate))
                        refused = self._budget.admit(*booked)
                        if refused is None:
                            state.booked = booked
                        else:
                            self.stop(f"budget reached: {refused}", EXIT_BUDGET)
                if self.stopping:
                    raise _Stopped
                state.attempts += 1
                request_id = f"{spec.id}/{self._run_tag}.{state.attempts}"
                try:
                    reply = await self._send(spec, kind, request, request_id, state)
                except ApiStatusError as exc:
                    if adaptive is not None and exc.status == 429 and classify(exc).verdict is Verdict.RETRY:
                        adaptive.throttled(started)
                    raise
                except BrokenAnswerError:
                    answered = True
                    raise
                answered = True
                if adaptive is not None:
                    adaptive.answered(started)
            finally:
                if adaptive is not None:
                    adaptive.release()
            await self._keep(spec, kind, request_id, reply, state)
        finally:
            # The estimate stays booked until the answer's usage replaces it (_bill), so that no moment
            # counts neither; an answer that says nothing of its usage counts as its estimate.
            if state.booked is not None:
                if answered:
                    self._budget.record(*state.booked)
                self._budget.settle(*state.booked)
                state.booked = None

    async def _keep(
        self, spec: TaskSpec, kind: TaskKind, request_id: str, reply: Reply, state: _TaskState
    ) -> None:
        """Bill an answer (at its usage, or at the estimate when it says none), then turn it into files
        and the task's answer. An answer that cannot be used was paid for all the same: its raw body is
        kept in answers/ and the task fails, never buying it again."""
        await self._bill(spec, kind, request_id, _usage_of(kind, reply.body), state)
        try:
            answer = kind.parse_answer(spec.fields, reply.body)
            images = answer.images
            if any(image.url is not None for image in images):
                images = await self._download(images)
            files: list[OutputFile] = []
            if images:
                files = await anyio.to_thread.run_sync(
                    decode_images, spec.id, images, kind, limiter=self._threads
                )
        except ApiError as exc:
            await self._keep_raw(spec, request_id, reply, state)
            if isinstance(exc, BrokenAnswerError):
                exc.retry = False  # it arrived whole: asking again would buy it twice
            raise
        except Exception as exc:
            await self._keep_raw(spec, request_id, reply, state)
            raise BrokenAnswerError(
                f"the answer could not be read ({type(exc).__name__}: {_short(exc)})",
                error_type="unreadable_answer",
            ) from exc
        state.files = (
            await anyio.to_thread.run_sync(self._save, files, limiter=self._threads) if files else []
        )
        state.answer = answer

    async def _keep_raw(self, spec: TaskSpec, request_id: str, reply: Reply, state: _TaskState) -> None:
        """answers/<task id>.<run>.<attempt>.<json|sse>: the body as it came (the key scrubbed)."""
        if not reply.raw:
            return
        name = request_id.replace("/", ".") + (".sse" if isinstance(reply.body, list) else ".json")
        state.answer_file = await anyio.to_thread.run_sync(
            self._out.save_answer, name, reply.raw, limiter=self._threads
        )

    async def _download(self, images: tuple[EncodedImage, ...]) -> tuple[EncodedImage, ...]:
        """Fetch the images an answer links to. A failed download is retried as a download, under the
        task's retry policy; the generation itself is never bought again."""
        fetched = []
        for index, image in enumerate(images):
            url = image.url
            if url is None:
                fetched.append(image)
                continue
            try:
                data = await call_with_retries(
                    self._settings.retry,
                    lambda url=url: self._client.download(url),  # type: ignore[misc]
                    sleep=self._sleep,
                    rng=self._rng,
                )
            except ApiError as exc:
                host = urlsplit(url).hostname or "?"
                raise BrokenAnswerError(
                    f"image {index + 1} could not be downloaded from {host}: {_describe(exc)}",
                    error_type="download_failed",
                ) from exc
            fetched.append(replace(image, data=data))
        return tuple(fetched)

    async def _send(
        self, spec: TaskSpec, kind: TaskKind, request: ApiRequest, request_id: str, state: _TaskState
    ) -> Reply:
        """One request, logged as sent before it leaves and as done when its fate is known."""
        log, health = self._log, self._health
        log.sent(request_id, spec.id)
        self._in_flight += 1
        state.server_request_id = None
        state.lost_to_outage = False
        try:
            reply = await self._client.send(spec.endpoint, request, request_id)
            state.server_request_id = reply.server_request_id or _answer_id(reply.body)
            if request.stream and not reply.ended and not _stream_complete(kind, spec, reply.body):
                raise BrokenAnswerError(
                    "the stream ended before every choice had finished",
                    usage=_usage_of(kind, reply.body),
                    retry=True,
                )
        except BrokenAnswerError as exc:
            log.done(
                request_id, "broken", status=exc.status, maybe_billed=exc.maybe_billed, error=exc.message
            )
            if exc.retry:  # garbled on the way: the service (or the path to it) is failing
                state.lost_to_outage = not health.failed(exc.message)
            else:  # a whole answer: the service is up
                health.succeeded()
            if exc.usage is not None:
                await self._bill(spec, kind, request_id, exc.usage, state)
            state.maybe_billed += exc.maybe_billed
            raise
        except ApiStatusError as exc:
            log.done(request_id, "error", status=exc.status, error=exc.message)
            if exc.status is not None and (exc.status >= 500 or exc.status == 408):
                state.lost_to_outage = not health.failed(str(exc))
            else:
                health.succeeded()  # the service is up; it refused this request
            raise
        except TransportError as exc:
            log.done(request_id, "failed", maybe_billed=exc.maybe_billed, error=exc.message)
            state.lost_to_outage = not health.failed(exc.message)
            state.maybe_billed += exc.maybe_billed
            raise
        except BaseException:  # cancelled (a second signal, or the grace period ran out) while in flight
            log.done(request_id, "cancelled", maybe_billed=True)
            health.abandoned()
            self.summary.maybe_billed += 1
            raise
        finally:
            self._in_flight -= 1
        log.done(request_id, "answered", status=reply.status)
        health.succeeded()
        self._durations.append(reply.seconds)
        return reply

    def _save(self, files: list[OutputFile]) -> list[str]:
        """Write an answer's images (a worker thread's work); ask for their thumbnails, for the gallery."""
        paths = self._out.save(files)
        if self._thumbnailer is not None:
            for item, path in zip(files, paths, strict=True):
                self._thumbnailer.submit(
                    self._out.root / path, self._out.root / THUMBS / thumbnail_name(item.name)
                )
        return paths

    async def _bill(
        self,
        spec: TaskSpec,
        kind: TaskKind,
        request_id: str,
        usage: Mapping[str, Any] | None,
        state: _TaskState,
    ) -> None:
        """Record a billed answer in the ledger, durably, before anything else is done with it. An answer
        that reports no usage is recorded at its estimate, marked `estimated`, so budgets count it."""
        counts = kind.token_counts(usage) if usage is not None else kind.estimate(spec.fields)
        cost = self._settings.prices.cost(spec.model, counts)
        line = UsageRecord(
            task_id=spec.id,
            request_id=request_id,
            server_request_id=state.server_request_id,
            kind=spec.kind,
            model=spec.model,
            endpoint=spec.endpoint,
            counts=counts,
            cost=cost,
            usage=usage,
            at=now(),
            estimated=usage is None,
        ).to_line()
        try:
            await self._out.append(self._out.usage, line)
        except OutputError:
            state.maybe_billed += 1  # billed, but the ledger could not record it (a full disk)
            raise
        if self._limits.paced:
            self._limits.pacer(spec.endpoint).correct(state.estimate, counts.total)
            state.estimate = counts.total  # corrected once
        self._budget.record(counts.total, cost)
        if state.booked is not None:  # the actual usage replaces the estimate, in one step
            self._budget.settle(*state.booked)
            state.booked = None
        state.billed = True
        if cost is None:
            state.unpriced = True
        else:
            state.cost += cost
        state.input_tokens += counts.input
        state.output_tokens += counts.output
        state.total_tokens += counts.total
        self._emit(Billed(spec.id, spec.model, counts.input, counts.output, counts.total, cost))

    async def _finish(
        self, spec: TaskSpec, state: _TaskState, started: float, error: ApiError | None = None
    ) -> None:
        """Write the task's result line: the moment it counts as finished."""
        answer = state.answer or Answer()
        prompt, params = self._registry[spec.kind].describe(spec.fields)
        record = ResultRecord(
            id=spec.id,
            kind=spec.kind,
            status="failed" if error else "succeeded",
            model=spec.model,
            custom_id=spec.custom_id,
            prompt=prompt if len(prompt) <= PROMPT_SHOWN else prompt[:PROMPT_SHOWN] + "...",
            params=params,
            # absolute: the gallery, built later from anywhere, finds them again
            inputs=tuple(str(info.path.absolute()) for info in spec.inputs.values()),
            files=tuple(state.files),
            text=answer.text,
            extra=answer.extra,
            images_missing=answer.images_missing,
            answer_file=state.answer_file,
            request_id=state.server_request_id,
            usage=TaskUsage(state.input_tokens, state.output_tokens, state.total_tokens).to_line()
            if state.billed
            else None,
            cost=None if state.unpriced or not state.billed else round(state.cost, 10),
            attempts=state.attempts,
            maybe_billed=state.maybe_billed + state.carried,
            error=None if error is None else error_record(error, state.attempts),
            meta=spec.meta or None,
            endpoint=spec.endpoint,
            seconds=round(time.monotonic() - started, 3),
            finished_at=now(),
        ).to_line()
        try:
            await self._out.append(self._out.results, record)
        except OutputError as exc:
            self.stop(str(exc), EXIT_IOERR)
            return
        self.summary.maybe_billed += state.maybe_billed
        self._emit(TaskFinished(record))


def error_record(error: ApiError, attempts: int) -> ErrorInfo:
    """`error` of a failed task's result line: type, status, message."""
    if isinstance(error, ApiStatusError):
        error_type = error.code or error.error_type or f"http_{error.status}"
    else:
        error_type = error.kind
    message = getattr(error, "message", str(error))
    if attempts > 1:
        message += f" (after {attempts} attempts)"
    return ErrorInfo(error_type, error.status, message)


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    return (
        str(getattr(error, "message", None) or error) if not isinstance(error, ApiStatusError) else str(error)
    )


def _usage_of(kind: TaskKind, body: Any) -> Mapping[str, Any] | None:
    """The usage an answer reports; None also when a hostile body makes the kind's reader fail."""
    try:
        return kind.usage_of(body)
    except Exception:
        return None


def _stream_complete(kind: TaskKind, spec: TaskSpec, chunks: Any) -> bool:
    try:
        return isinstance(chunks, list) and kind.stream_complete(spec.fields, chunks)
    except Exception:
        return False


def _answer_id(body: Any) -> str | None:
    """The answer's own id (chat's `chatcmpl-...`), for an answer sent without an x-request-id header."""
    if isinstance(body, list):
        body = next((chunk for chunk in body if isinstance(chunk, dict)), None)
    value = body.get("id") if isinstance(body, dict) else None
    return value[:200] if isinstance(value, str) else None


def _short(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _percentile(values: deque[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
