"""One task's life: its attempts under the retry policy (gates, send, bill), its answer kept as files, and
its result line written last.

A task whose run was stopped (a signal, a refused key, an exhausted quota) is not recorded at all: it is
still pending, and the next run does it. Only tasks with a definite outcome get a result line.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from typing import Any, NoReturn
from urllib.parse import urlsplit

import anyio

from batch import codec
from batch.defaults import DOWNLOADS_AT_ONCE
from batch.errors import ApiError, ApiStatusError, BrokenAnswerError, OutputError, TransportError
from batch.events import AttemptFailed, TaskFinished, TaskStarted
from batch.exitcodes import EXIT_BUDGET, EXIT_CONFIG, EXIT_DATAERR, EXIT_IOERR
from batch.kind import Answer, ApiRequest, EncodedImage, TaskKind
from batch.manifest.inputs import InputChanged, checked_reader, read_file
from batch.manifest.tasks import TaskSpec
from batch.output.runlog import UNSENT, KeptAnswer, finished_from, keep_to_finish
from batch.output.store import ANSWERS, OutputFile
from batch.running.answers import (
    answer_id,
    describe,
    error_record,
    failure_kind,
    short,
    stream_complete,
    usage_of,
)
from batch.running.bodies import Scrubber, running_usage
from batch.running.bookkeeping import bill, ledger_entry, result_line
from batch.running.client import Reply
from batch.running.context import AttemptContext, EndpointGivenUp, Stopped, TaskState
from batch.running.imaging import decode_images
from batch.running.retry import (
    RetryNotice,
    SharedRetries,
    Verdict,
    bought_nothing,
    call_with_retries,
    classify,
    failing_service,
    rate_limited,
)

logger = logging.getLogger(__name__)

# images an answer may link for download (`data[i].url`, `message.images[i]`): the API makes at most 10 at a
# time. An answer that links more (a gateway's fault, or a hostile one's: thousands of links, each up to
# --max-answer-mb) is kept in answers/ with every link, and its task fails; none is fetched.
MAX_DOWNLOADS = 16
# images of one answer, inline or linked (the API makes at most 10): 20,000 inline 1x1 pictures in a 2 MB
# answer wrote 20,000 files, and the answer cap allows some 650,000
MAX_IMAGES = 64
# an answer up to this size is carried with its ledger line in answers/.carried.jsonl (RunLog.keeping: one
# write, no fsync, no file of its own), and a bigger one kept in answers/ (a file, fsync'd), each until its
# task's line is written: a chat answer of text is a few kilobytes, an image's base64 some megabytes
CARRIED_MAX = 64 * 1024


def _count_kept(state: TaskState, kept: KeptAnswer) -> None:
    """A task's figures from what a killed run paid for and kept: its ledger line's, already counted."""
    state.billed = True
    state.input_tokens += kept.input_tokens
    state.output_tokens += kept.output_tokens
    state.total_tokens += kept.total_tokens
    if kept.cost is None:
        state.unpriced = True
    else:
        state.cost += kept.cost


class TaskAttempts:
    """Runs one task at a time per caller: attempts, billing, files, the result line. The tallies the
    Runner reads (requests in flight, recent durations, maybe-billed requests) are kept here."""

    def __init__(self, context: AttemptContext) -> None:
        self._ctx = context
        self.in_flight = 0
        self.durations: deque[float] = deque(maxlen=256)  # recent requests' seconds, for the deadline
        self.maybe_billed = 0  # this run's requests that may have been billed without a saved result
        self.maybe_billed_counted = 0  # of them, those whose usage so far is in the ledger (and its cost)
        self.reached = False  # the API has answered this run (any HTTP answer): its address is right
        # tasks left pending, rate limited: still answered 429 at their --task-deadline (rate_limited), and
        # those whose endpoint was given up (ServiceHealth.given_up); and those still answered a 5xx that
        # bought nothing and spent no attempt (the service failing more than it answered) at their deadline
        self.left_at_deadline = 0
        self.left_given_up = 0
        self.left_failing = 0
        # answers/.to-finish.jsonl is read and written whole: by one task at a time, or a change is lost
        self._to_finish = anyio.Lock()

    async def run_task(self, spec: TaskSpec) -> None:
        """Attempt a task until it succeeds, fails or the run stops; a fault of ours fails this task only."""
        ctx = self._ctx
        kind = ctx.registry[spec.kind]
        state = TaskState(carried=ctx.interrupted.get(spec.id, 0))
        started = time.monotonic()
        if ctx.health.given_up(spec.endpoint) and spec.id not in ctx.kept:
            self.left_given_up += 1  # nothing more goes to that endpoint in this run: pending
            return
        ctx.emit(TaskStarted(spec.id, spec.kind))
        kept = ctx.kept.get(spec.id)
        if kept is not None and kept.request_sha256 != spec.request:
            kept = None  # an answer to the request the task had then, not now: sent anew
        try:
            if kept is not None:  # paid in a killed run, whose answer is kept: finished from it, not bought
                await self._replay(spec, kind, kept, state)
            else:
                await call_with_retries(
                    ctx.settings.retry,
                    lambda: self._attempt(spec, kind, state),
                    # cut short when the run stops, or when the endpoint is given up (EndpointGivenUp)
                    sleep=lambda seconds: ctx.health.pause(spec.endpoint, seconds),
                    on_retry=lambda notice: self._on_retry(spec, notice),
                    rng=ctx.rng,
                    # an outage's failure, or a 429, costs no attempt: --task-deadline bounds them
                    lost_to_outage=lambda error: state.lost_to_outage or rate_limited(error),
                )
        except Stopped:
            self._tally(state)
            return
        except EndpointGivenUp:  # its endpoint answers nothing but 429: pending, for the next run
            self._tally(state)
            self.left_given_up += 1
            return
        except OutputError as exc:
            self._tally(state)
            ctx.stop(str(exc), EXIT_IOERR)
            return
        except ApiError as exc:
            decision = classify(exc)
            if decision.verdict is Verdict.STOP:
                self._tally(state)
                ctx.stop(decision.reason, decision.exit_code)
                return
            if rate_limited(exc):  # its retries ended on "not now" (its deadline): pending, not failed
                self._tally(state)
                self.left_at_deadline += 1
                logger.warning(
                    "task %s: still answered 429 (rate limited) at its --task-deadline, after %d request(s): "
                    "left pending for the next run (%s)",
                    spec.id,
                    state.attempts,
                    describe(exc),
                )
                return
            if state.lost_to_outage and failing_service(exc):  # the service's fault to the end: pending
                self.maybe_billed += state.maybe_billed
                self.left_failing += 1
                logger.warning(
                    "task %s: still failing at its --task-deadline, after %d request(s), while the service "
                    "failed more than it answered: left pending for the next run (%s)",
                    spec.id,
                    state.attempts,
                    describe(exc),
                )
                return
            await self._finish(spec, state, started, error=exc)
            return
        except Exception as exc:  # a fault of ours with this one task: it fails, the night goes on
            logger.exception("task %s: unexpected %s", spec.id, type(exc).__name__)
            failure = BrokenAnswerError(f"{type(exc).__name__}: {short(exc)}", error_type="internal_error")
            await self._finish(spec, state, started, error=failure)
            return
        except BaseException:
            if state.cut_while_kept:  # cancelled after its answer was bought: kept, not bought again
                with anyio.CancelScope(shield=True):
                    if not await self._leave_to_finish(spec, state, replayed=kept is not None):
                        failure = BrokenAnswerError(
                            "the run was stopped while its answer's images were fetched or saved; the "
                            "answer, with its links, is kept in answers/ (retry-failed buys it again)",
                            error_type="interrupted",
                        )
                        await self._finish(spec, state, started, error=failure)
            raise
        await self._finish(spec, state, started)

    def _tally(self, state: TaskState) -> None:
        """A task's maybe-billed requests, done with, in the run's count."""
        self.maybe_billed += state.maybe_billed
        self.maybe_billed_counted += state.maybe_billed_counted

    async def _leave_to_finish(self, spec: TaskSpec, state: TaskState, *, replayed: bool) -> bool:
        """A run stopped (a second signal, the grace over) while a paid answer's images were fetched or
        saved: its answer, kept in answers/, is listed for the next run to finish the task from, as a
        killed run's is (runlog.recover), and the task left pending. False where it cannot be: a stream's
        answer (kept as its events, not read again as JSON), a list that could not be written, or a run on
        a store (the list and an answer no line names stay in the staging folder, which the store never
        sees: the task fails, its line naming the answer, and both go up)."""
        if replayed:  # finishing from a killed run's answer: listed until the task's line is written
            return True
        if self._ctx.on_store:
            return False
        billed, answer_file, answered = state.last_billed, state.answer_file, state.answered
        if billed is None or answer_file is None or answered is None or not answer_file.endswith(".json"):
            return False
        request_id, input_tokens, output_tokens, total_tokens, cost = billed
        if request_id != answered[0]:
            return False
        entry = KeptAnswer(
            spec.id,
            request_id,
            answer_file,
            state.server_request_id,
            input_tokens,
            output_tokens,
            total_tokens,
            cost,
            spec.request,
        )
        try:
            async with self._to_finish:
                await anyio.to_thread.run_sync(
                    keep_to_finish, self._ctx.out.root, entry, limiter=self._ctx.threads
                )
        except (OutputError, OSError) as exc:
            logger.warning("task %s: its kept answer could not be listed to finish: %s", spec.id, short(exc))
            return False
        self._ctx.log.done(
            request_id,
            "interrupted",
            status=answered[1],
            error=f"its answer was recorded in usage.jsonl and kept in {answer_file}: the next run finishes "
            "its task from it",
        )
        state.answered = None
        return True

    async def _replay(self, spec: TaskSpec, kind: TaskKind, kept: KeptAnswer, state: TaskState) -> None:
        """Finish a task from the answer a killed run paid for and kept (its images were being fetched):
        its figures are the ledger's line, already counted; nothing is sent, booked or billed again. A paid
        failure's (`kept.failed`): the task fails as the killed run's would have, its raw body kept."""
        ctx = self._ctx
        if kept.failed is not None or kept.answer_file is None:
            self._replay_failure(spec, kept, state)
        path = ctx.out.root / kept.answer_file
        try:
            raw = await anyio.to_thread.run_sync(path.read_bytes, limiter=ctx.threads)
            # parsed off the loop, as an answer of its size is (bodies.decode_json)
            body = await anyio.to_thread.run_sync(codec.loads_answer, raw, limiter=ctx.threads)
        except (OSError, ValueError, RecursionError) as exc:
            raise BrokenAnswerError(
                f"the answer a killed run kept ({kept.answer_file}) cannot be read again: {short(exc)}",
                error_type="unreadable_answer",
            ) from exc
        logger.info("task %s: finished from the answer a killed run paid for, kept in %s", spec.id, path.name)
        state.attempts += 1
        state.server_request_id = kept.server_request_id
        state.answer_file = kept.answer_file
        _count_kept(state, kept)
        reply = Reply(200, body, 0.0, kept.server_request_id, raw)
        await self._use(spec, kind, kept.request_id, reply, state)  # forgotten once its line is written

    def _replay_failure(self, spec: TaskSpec, kept: KeptAnswer, state: TaskState) -> NoReturn:
        """End a task failed from the failure a killed run recorded (_kept_failure): its error again, its
        figures the ledger's line (none where it reported no usage), its raw body where the kill let it be
        kept; nothing is sent."""
        failed = kept.failed or {}
        logger.info("task %s: ended from the failure a killed run paid for and recorded", spec.id)
        state.attempts += 1
        state.server_request_id = kept.server_request_id
        state.answer_file = kept.answer_file
        state.maybe_billed += failed.get("maybe_billed") is True  # its killed request's (recover)
        if failed.get("billed") is True:
            _count_kept(state, kept)
        status = failed.get("status")
        raise BrokenAnswerError(
            str(failed.get("message")),
            status=status if type(status) is int else None,
            maybe_billed=False,  # counted above, once
            error_type=str(failed.get("type")),
        )

    def _on_retry(self, spec: TaskSpec, notice: RetryNotice) -> None:
        error = notice.error
        if self._ctx.stopping():
            return  # no retry will be sent
        self._ctx.emit(
            AttemptFailed(spec.id, notice.attempt, describe(error), notice.wait, failure_kind(error))
        )

    async def _attempt(self, spec: TaskSpec, kind: TaskKind, state: TaskState) -> None:
        ctx = self._ctx
        # during an outage, wait here without spending an attempt (or go as the probe)
        state.probe = await ctx.health.admit()
        try:
            await self._admitted(spec, kind, state)
        finally:
            ctx.health.ended(state.probe)

    async def _admitted(self, spec: TaskSpec, kind: TaskKind, state: TaskState) -> None:
        """The attempt, once the service's health let it go."""
        ctx = self._ctx
        if ctx.stopping():
            raise Stopped
        if ctx.health.given_up(spec.endpoint):
            raise EndpointGivenUp
        if spec.inputs:
            read = checked_reader(spec.inputs.values())
            try:
                request = await anyio.to_thread.run_sync(
                    kind.build_request, spec.fields, read, limiter=ctx.threads
                )
            except InputChanged as changed:  # as a manifest changed during the run: nothing unchecked is sent
                ctx.stop(
                    f"an input file changed during the run: {changed.path} is not the file task {spec.id} "
                    "was checked with",
                    EXIT_DATAERR,
                )
                raise Stopped from None
        else:
            request = kind.build_request(spec.fields, read_file)
        slot = await ctx.limits.enter(spec.endpoint)
        answered = False  # a 2xx came back: billed, whether or not it says how much
        try:
            try:
                await ctx.limits.cooled(spec.endpoint)  # a 429 of another run on the key pauses this one
                await self._book(spec, kind, state)  # last: once paced, the request goes at once
                if ctx.stopping():
                    raise Stopped
                state.attempts += 1
                request_id = f"{spec.id}/{ctx.run_tag}.{state.attempts}"
                try:
                    reply = await self._send(spec, kind, request, request_id, state)
                except ApiStatusError as exc:
                    if exc.status == 429 and classify(exc).verdict is Verdict.RETRY:
                        await ctx.limits.throttled(slot, exc.retry_after)
                    # an error inside a stream after some of it came: billed, or maybe (the budget counts it)
                    answered = exc.maybe_billed or exc.usage is not None
                    raise
                except BrokenAnswerError:
                    answered = True
                    raise
                answered = True
                await ctx.limits.answered(slot)
            finally:
                await ctx.limits.leave(slot)
            await self._keep(spec, kind, request_id, reply, state)
        finally:
            # The estimate stays booked until the answer's usage replaces it (_bill), so that no moment
            # counts neither; an answer that says nothing of its usage counts as its estimate.
            if state.booked is not None:
                if answered:
                    ctx.budget.record(*state.booked)
                ctx.budget.settle(*state.booked)
                state.booked = None

    async def _book(self, spec: TaskSpec, kind: TaskKind, state: TaskState) -> None:
        """Pace the attempt (rpm, tpm) and book its estimate with the budget; a refusal stops the run."""
        ctx = self._ctx
        if not (ctx.limits.paced or ctx.budget.limits.any):
            return
        estimate = kind.estimate(spec.fields)
        state.estimate = estimate.total
        if ctx.limits.paced:
            await ctx.limits.pace(spec.endpoint, state.estimate, ctx.sleep)
        if ctx.budget.limits.any and not ctx.stopping():
            booked = (estimate.total, ctx.settings.prices.cost(spec.model, estimate))
            refused = ctx.budget.admit(*booked)
            if refused is None:
                state.booked = booked
            else:
                ctx.stop(f"budget reached: {refused}", EXIT_BUDGET)

    async def _send(
        self, spec: TaskSpec, kind: TaskKind, request: ApiRequest, request_id: str, state: TaskState
    ) -> Reply:
        """One request, logged as sent before it leaves and as done when its fate is known."""
        ctx = self._ctx
        ctx.log.sent(request_id, spec.id)
        try:
            await ctx.log.published()  # an output on a store: the `sent` line is there before it leaves
        except OutputError:
            ctx.log.done(request_id, UNSENT)
            raise
        if state.probe:  # the outage's probe: the limit waits for it once it leaves, and for no other
            if ctx.stopping():  # the limit passed while its `sent` line went to the store
                ctx.log.done(request_id, UNSENT)
                raise Stopped
            ctx.health.sending(state.probe)  # no wait from here to the request
        self.in_flight += 1
        state.server_request_id = None
        state.lost_to_outage = False
        try:
            reply = await ctx.client.send(spec.endpoint, request, request_id)
            self.reached = True
            state.server_request_id = reply.server_request_id or answer_id(reply.body)
            streamed = isinstance(reply.body, list) and not reply.ended
            if streamed and not stream_complete(kind, spec, reply.body, reply.trouble):
                self._unfinished(kind, request, reply)
        except (BrokenAnswerError, ApiStatusError, TransportError) as exc:
            await self._failed(spec, kind, request_id, exc, state)
            raise
        except BaseException:  # cancelled (a second signal, or the grace period ran out) while in flight
            ctx.log.done(request_id, "cancelled", maybe_billed=True)  # a probe's: _attempt ends it
            self.maybe_billed += 1
            raise
        finally:
            self.in_flight -= 1
        state.answered = (
            request_id,
            reply.status,
            reply.seconds,
        )  # logged done once the task's result line is written
        ctx.health.succeeded(spec.endpoint)
        self.durations.append(reply.seconds)
        return reply

    def _unfinished(self, kind: TaskKind, request: ApiRequest, reply: Reply) -> NoReturn:
        """Raise what a stream that ended before every choice (or image) finished is. Asked for, it was cut:
        sent again. Not asked for (sent as events all the same), it was read to its end: whole as it came,
        kept and not bought again, unless an error event in it says to (a 429 or 5xx)."""
        trouble = reply.trouble  # an error event, say: the error it is, its usage billed
        if trouble is not None and not request.stream and isinstance(trouble, BrokenAnswerError):
            trouble.retry = False
        if trouble is None and not request.stream:
            trouble = BrokenAnswerError(
                "the answer came as server-sent events, which the request did not ask for, and holds "
                "fewer finished answers than asked (the events are kept)",
                usage=usage_of(kind, reply.body),
                error_type="unreadable_answer",
                raw=reply.raw,
            )
        elif trouble is None:
            trouble = BrokenAnswerError(
                "the stream ended before every choice had finished",
                usage=usage_of(kind, reply.body),
                retry=True,
            )
        if getattr(trouble, "usage", None) is not None and running_usage(reply.body):
            # a usage on a chunk of a choice that never finished is the count so far (a gateway's usage on
            # every chunk), whether the stream was cut or ended by an error event: the answer may have cost
            # more. In the ledger, and maybe billed
            trouble.maybe_billed = True
        raise trouble

    async def _failed(
        self,
        spec: TaskSpec,
        kind: TaskKind,
        request_id: str,
        exc: BrokenAnswerError | ApiStatusError | TransportError,
        state: TaskState,
    ) -> None:
        """A request that failed: its log line, what it says of the service's health, what it may cost."""
        log, health = self._ctx.log, self._ctx.health
        if isinstance(exc, TransportError) and exc.unreached and not self.reached:
            # The very first requests cannot resolve the host or connect at all: a wrong MAAS_BASE_URL or
            # no network, not an outage that began; waiting out --outage-limit would only hide it.
            self._ctx.stop(f"cannot reach the API at {self._ctx.client.address}: {exc.message}", EXIT_CONFIG)
        elif not isinstance(exc, TransportError):
            self.reached = True
        if isinstance(exc, BrokenAnswerError):
            if not exc.retry and (exc.usage is not None or exc.raw):  # paid, its task failed: kept
                await self._kept_failure(spec, kind, request_id, exc, state, "broken", ".body")
                health.succeeded(spec.endpoint)  # a whole answer: the service is up
                return
            log.done(
                request_id, "broken", status=exc.status, maybe_billed=exc.maybe_billed, error=exc.message
            )
            if exc.retry:  # garbled on the way: the service (or the path to it) is failing
                state.lost_to_outage = not health.failed(exc.message, state.probe)
            else:  # a whole answer: the service is up
                health.succeeded(spec.endpoint)
            if exc.usage is not None:
                await bill(self._ctx, spec, kind, request_id, exc.usage, state)
                state.maybe_billed_counted += exc.maybe_billed  # a usage so far: in the ledger
            state.maybe_billed += exc.maybe_billed  # before the save below, which a full disk may fail
            if not exc.retry and exc.raw:  # it arrived, and is not bought again: kept as it came
                name = request_id.replace("/", ".") + ".body"
                state.answer_file = await anyio.to_thread.run_sync(
                    self._ctx.out.save_answer, name, exc.raw, limiter=self._ctx.threads
                )
        elif isinstance(exc, ApiStatusError):
            state.server_request_id = exc.server_request_id or state.server_request_id  # the last said
            if (exc.usage is not None or exc.raw) and classify(exc).verdict is Verdict.FAIL:
                await self._kept_failure(spec, kind, request_id, exc, state, "error", ".sse")
                health.succeeded(spec.endpoint)  # the service is up; it refused this request
                return
            log.done(request_id, "error", status=exc.status, error=exc.message, maybe_billed=exc.maybe_billed)
            if exc.status is not None and (exc.status >= 500 or exc.status == 408):
                billed = not bought_nothing(exc)  # a usage, or inside a stream: spends an attempt as ever
                counts = health.failed(str(exc), state.probe, billed=billed, retry_after=exc.retry_after)
                state.lost_to_outage = not counts
            elif exc.status == 429 and classify(exc).verdict is Verdict.RETRY:
                # up, but nothing else for --outage-limit stops the run (or, while another endpoint
                # answers, leaves this one's tasks pending)
                health.throttled(str(exc), spec.endpoint)
            else:
                health.succeeded(spec.endpoint)  # the service is up; it refused this request
            # an error sent inside a stream, or beside a usage: what came before it was billed
            if exc.usage is not None:
                await bill(self._ctx, spec, kind, request_id, exc.usage, state)
                state.maybe_billed_counted += exc.maybe_billed
            state.maybe_billed += exc.maybe_billed
            if exc.raw and classify(exc).verdict is not Verdict.RETRY:  # not asked again: kept as it came
                name = request_id.replace("/", ".") + ".sse"
                state.answer_file = await anyio.to_thread.run_sync(
                    self._ctx.out.save_answer, name, exc.raw, limiter=self._ctx.threads
                )
        else:
            log.done(request_id, "failed", maybe_billed=exc.maybe_billed, error=exc.message)
            state.lost_to_outage = not health.failed(exc.message, state.probe, billed=exc.maybe_billed)
            state.maybe_billed += exc.maybe_billed

    async def _kept_failure(
        self,
        spec: TaskSpec,
        kind: TaskKind,
        request_id: str,
        exc: BrokenAnswerError | ApiStatusError,
        state: TaskState,
        outcome: str,
        suffix: str,
    ) -> None:
        """A paid failure that is not asked again (a whole answer that cannot be used, an error beside a
        usage): its task fails. What its result line will say is carried first (RunLog.failing),
        then its raw body (answers/<request>.body|.sse) and its ledger line, its `done` line after its
        task's line: a kill anywhere before that line leaves the next run to end the task failed from the
        record, its ledger line booked once (recover), where it sent the task again and paid twice. (Killed
        before its raw body is saved, the task ends without it.)"""
        ctx = self._ctx
        name = request_id.replace("/", ".") + suffix
        entry = ledger_entry(ctx, spec, kind, request_id, exc.usage, state) if exc.usage is not None else None
        failed = {
            "type": error_record(exc, 1).type,
            "status": exc.status,
            "message": exc.message,
            "maybe_billed": exc.maybe_billed,
            "answer_file": f"{ANSWERS}/{name}" if exc.raw else None,
            "server_request_id": state.server_request_id,
            "request_sha256": spec.request,
        }
        seconds = ctx.log.failing(request_id, spec.id, failed, None if entry is None else entry.encoded)
        done = {
            "status": exc.status,
            "maybe_billed": exc.maybe_billed,
            "error": exc.message,
            "seconds": seconds,
        }
        state.failed_done = (request_id, outcome, done)
        state.maybe_billed += exc.maybe_billed  # before the save below, which a full disk may fail
        try:
            if exc.raw:  # it arrived, and is not bought again: kept as it came
                state.answer_file = await anyio.to_thread.run_sync(
                    ctx.out.save_answer, name, exc.raw, limiter=ctx.threads
                )
        finally:  # kept or not (a full disk), it was paid: in the ledger, whole
            if entry is not None:
                with anyio.CancelScope(shield=True):
                    await bill(ctx, spec, kind, request_id, exc.usage, state, entry)
                state.maybe_billed_counted += exc.maybe_billed  # a usage so far: in the ledger

    async def _keep(
        self, spec: TaskSpec, kind: TaskKind, request_id: str, reply: Reply, state: TaskState
    ) -> None:
        """Keep an answer and bill it (at its usage, or at the estimate when it says none), then turn it
        into files and the task's answer. An answer that cannot be used was paid for all the same: its raw
        body is kept in answers/ and the task fails, never buying it again."""
        usage = usage_of(kind, reply.body)
        try:
            answer: Answer | None = kind.parse_answer(spec.fields, reply.body)
        except Exception:
            answer = None  # read again by _use, which fails the task and keeps the answer, once billed
        links = answer is not None and answer.images and any(image.url is not None for image in answer.images)
        carried = None
        if not links or not isinstance(reply.body, dict):  # a stream's events (.sse) are not read as JSON
            carried = _carried(reply, self._ctx.client.scrub)
        if carried is None and isinstance(reply.body, dict) and reply.raw:
            await self._keep_first(spec, kind, request_id, reply, usage, state)
            if not links:  # kept for a kill's window only: its task's line names it if it is not usable
                state.window_file, state.answer_file = state.answer_file, None
        else:
            entry = ledger_entry(self._ctx, spec, kind, request_id, usage, state)
            try:
                self._ctx.log.keeping(request_id, spec.id, entry.encoded, carried)
            finally:  # kept or not (a full disk), the answer was paid: in the ledger, whole
                await bill(self._ctx, spec, kind, request_id, usage, state, entry)
        await self._use(spec, kind, request_id, reply, state, answer)

    async def _keep_first(
        self,
        spec: TaskSpec,
        kind: TaskKind,
        request_id: str,
        reply: Reply,
        usage: Mapping[str, Any] | None,
        state: TaskState,
    ) -> None:
        """An answer whose images are to be fetched, kept in answers/ (durably) before its ledger line is
        written, the run log saying first what that line is: a kill between the two leaves the answer for
        the next run to finish the task from, its ledger line booked then from the run log
        (runlog.recover), where a ledger line written first left an answer to buy again."""
        ctx = self._ctx
        entry = ledger_entry(ctx, spec, kind, request_id, usage, state)
        try:
            ctx.log.keeping(request_id, spec.id, entry.encoded)
            await self._keep_raw(spec, request_id, reply, state)
        finally:  # kept or not (a full disk), the answer was paid: in the ledger, whole
            with anyio.CancelScope(shield=True):
                await bill(ctx, spec, kind, request_id, usage, state, entry)

    async def _use(
        self,
        spec: TaskSpec,
        kind: TaskKind,
        request_id: str,
        reply: Reply,
        state: TaskState,
        parsed: Answer | None = None,
    ) -> None:
        """A billed answer made into files and the task's answer (see _keep); `parsed`: read already."""
        threads = self._ctx.threads
        try:
            answer = parsed if parsed is not None else kind.parse_answer(spec.fields, reply.body)
            images = answer.images
            # the images asked for (those sent, and those missing): a task of n > 1 names its images
            # <id>~<k>, k their place in the answer, however many of them came
            count, places = len(images) + answer.images_missing, None
            links = sum(image.url is not None for image in images)
            if links > MAX_DOWNLOADS:
                raise BrokenAnswerError(
                    f"the answer links {links:,} images to download, more than {MAX_DOWNLOADS}: none was "
                    "fetched (the answer, with every link, is kept)",
                    error_type="too_many_images",
                )
            if len(images) > MAX_IMAGES:
                raise BrokenAnswerError(
                    f"the answer holds {len(images):,} images, more than {MAX_IMAGES}: none was saved "
                    "(the answer is kept)",
                    error_type="too_many_images",
                )
            if links:
                if state.answer_file is None:
                    # the answer, with its links, kept first: a run killed while they are fetched leaves
                    # it for the next run to finish the task from (runlog.recover), not to buy it again
                    await self._keep_raw(spec, request_id, reply, state)
                # a chat answer's text is its answer too: its lost pictures alone do not fail the task
                images, places, lost = await self._download(images, has_text=answer.text is not None)
                if lost:  # the images fetched are kept; the answer, with the links, too (kept above)
                    extra = {**answer.extra, "images_not_downloaded": lost}
                    answer = replace(answer, extra=extra, images_missing=answer.images_missing + len(lost))
            files: list[OutputFile] = []
            if images:
                unusable: list[str] = []
                decode = partial(
                    decode_images, spec.id, images, kind, places=places, count=count, unusable=unusable
                )
                files = await anyio.to_thread.run_sync(decode, limiter=threads)
                if unusable:  # the usable images are saved; the answer, as it came, kept beside them
                    if state.answer_file is None:
                        await self._keep_raw(spec, request_id, reply, state)
                    extra = {**answer.extra, "images_not_usable": unusable}
                    answer = replace(
                        answer, extra=extra, images_missing=answer.images_missing + len(unusable)
                    )
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled: the answer kept, its task failed (run_task)
                state.cut_while_kept = True
                with anyio.CancelScope(shield=True):
                    if state.answer_file is None:
                        await self._keep_raw(spec, request_id, reply, state)
                raise
            if state.answer_file is None:
                await self._keep_raw(spec, request_id, reply, state)
            if isinstance(exc, ApiError):
                if isinstance(exc, BrokenAnswerError):
                    exc.retry = False  # it arrived whole: asking again would buy it twice
                raise
            raise BrokenAnswerError(
                f"the answer could not be read ({type(exc).__name__}: {short(exc)})",
                error_type="unreadable_answer",
            ) from exc
        try:
            state.files = await anyio.to_thread.run_sync(self._save, files, limiter=threads) if files else []
        except BaseException as exc:
            if not isinstance(exc, Exception):
                state.cut_while_kept = True
                with anyio.CancelScope(shield=True):
                    await self._keep_raw(spec, request_id, reply, state)
            raise
        state.answer = answer

    async def _keep_raw(self, spec: TaskSpec, request_id: str, reply: Reply, state: TaskState) -> None:
        """answers/<task id>.<run>.<attempt>.<json|sse>: the body as it came (the key scrubbed)."""
        if state.window_file is not None:  # there already: now its task's line names it
            state.answer_file = state.window_file
            return
        if not reply.raw:
            return
        name = request_id.replace("/", ".") + (".sse" if isinstance(reply.body, list) else ".json")
        state.answer_file = await anyio.to_thread.run_sync(
            self._ctx.out.save_answer, name, reply.raw, limiter=self._ctx.threads
        )

    async def _download(
        self, images: tuple[EncodedImage, ...], *, has_text: bool = False
    ) -> tuple[tuple[EncodedImage, ...], tuple[int, ...], list[str]]:
        """Fetch the images an answer links to, DOWNLOADS_AT_ONCE at a time. A failed download is retried as
        a download, never by buying the generation again. Each link is tried once, however long the others
        took (it was paid for); their retries share one task's budget (SharedRetries: --max-attempts - 1
        among them, none starting later than --task-deadline after the first download), so that links that
        hang cost the task what one request's retries may, not that times their number. Returns the images
        at hand, their places in the answer (their names' numbers), and why each of the others could not be
        fetched: one lost link no longer throws away the images that came (the task fails only when none
        did, and the answer has no text either)."""
        ctx = self._ctx
        policy = ctx.settings.retry
        shared = SharedRetries(policy.max_attempts - 1, policy.deadline)
        slots = anyio.CapacityLimiter(DOWNLOADS_AT_ONCE)
        data: dict[int, bytes] = {}
        lost: dict[int, str] = {}
        faults: list[Exception] = []

        async def one(index: int, url: str) -> None:
            failed: list[ApiError] = []

            async def fetch() -> bytes:
                async with slots:  # held while a request is out, not through a retry's wait
                    if failed and shared.remaining() <= 0:  # a retry that waited for a slot past the deadline
                        raise failed[-1]  # its last error stands (the budget lets no retry go now)
                    try:
                        return await ctx.client.download(url)
                    except ApiError as exc:
                        failed.append(exc)
                        raise

            try:
                data[index] = await call_with_retries(
                    policy, fetch, sleep=ctx.sleep, rng=ctx.rng, shared=shared
                )
            except ApiError as exc:
                lost[index] = f"image {index + 1} could not be downloaded from {_host(url)}: {describe(exc)}"
            except Exception as exc:  # a fault of ours: raised as itself once the others are done
                faults.append(exc)

        async with anyio.create_task_group() as group:
            for index, image in enumerate(images):
                if image.url is not None:
                    group.start_soon(one, index, image.url)
        if faults:
            raise faults[0]
        places = [index for index, image in enumerate(images) if image.url is None or index in data]
        fetched = [images[i] if images[i].url is None else replace(images[i], data=data[i]) for i in places]
        reasons = [lost[index] for index in sorted(lost)]
        if reasons and not fetched and not has_text:
            raise BrokenAnswerError("; ".join(reasons), error_type="download_failed")
        return tuple(fetched), tuple(places), reasons

    def _save(self, files: list[OutputFile]) -> list[str]:
        """Write an answer's images (a worker thread's work). Their thumbnails are the gallery's: it
        observes TaskFinished."""
        return self._ctx.out.save(files)

    async def _finish(
        self, spec: TaskSpec, state: TaskState, started: float, error: ApiError | None = None
    ) -> None:
        """Write the task's result line: the moment it counts as finished."""
        record = result_line(self._ctx, spec, state, started, error)
        try:
            await self._ctx.out.append(self._ctx.out.results, record)
        except OutputError as exc:
            self._ctx.stop(str(exc), EXIT_IOERR)
            return
        if state.window_file is not None and state.window_file != state.answer_file:
            # kept for a kill's window, now closed: the answer is in the task's files
            with contextlib.suppress(OSError):
                await anyio.to_thread.run_sync(
                    (self._ctx.out.root / state.window_file).unlink, limiter=self._ctx.threads
                )
        if state.answered is not None:
            request_id, status, seconds = state.answered
            self._ctx.log.done(request_id, "answered", status=status, seconds=seconds)
            state.answered = None
        elif state.failed_done is not None:
            request_id, outcome, done = state.failed_done
            self._ctx.log.done(request_id, outcome, **done)
            state.failed_done = None
        if spec.id in self._ctx.kept:  # finished from a killed run's answer: the next run need not
            # a stale entry is never used: its task has a line
            with contextlib.suppress(OutputError, OSError):
                async with self._to_finish:
                    await anyio.to_thread.run_sync(finished_from, self._ctx.out.root, {spec.id})
        self._tally(state)
        self._ctx.emit(TaskFinished(record))


def _carried(reply: Reply, scrub: Scrubber) -> bytes | None:
    """A paid answer as answers/.carried.jsonl carries it (JSON, see RunLog.keeping): a stream's chunks
    (its events are not read again as JSON from answers/), or a body up to CARRIED_MAX; None for a
    bigger body (kept in answers/ instead), or one no JSON writer can write. Without the key, nor a
    piece of it: a stream's chunks may split it (a journal's writes take out only the key whole)."""
    if isinstance(reply.body, dict) and len(reply.raw) > CARRIED_MAX:
        return None
    try:
        data = codec.dumps(reply.body)
    except (TypeError, ValueError, RecursionError):
        return None
    text = data.decode()
    clean = scrub.text(text)
    if clean == text:  # the usual case
        return data
    data = clean.encode()
    try:  # a piece of the key taken out: still JSON, or not carried (not kept: asked again after a kill)
        codec.loads(data)
    except (ValueError, RecursionError):
        return None
    return data


def _host(url: str) -> str:
    """The host an image URL names, for a message ("?" where it names none a parser can read)."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"
