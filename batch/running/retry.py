"""Retry decisions, in one place: which errors are retried, which fail a task, which stop the run, and how
long to wait. The one retry loop of the project is built here, on tenacity.
"""

from __future__ import annotations

import email.utils
import enum
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_any,
    stop_before_delay,
)
from tenacity.stop import stop_base

from batch.defaults import DEFAULT_BACKOFF, DEFAULT_BACKOFF_MAX, DEFAULT_MAX_ATTEMPTS, DEFAULT_TASK_DEADLINE
from batch.errors import RETRY_STATUSES, ApiError, ApiStatusError, BrokenAnswerError, TransportError
from batch.exitcodes import EXIT_CONFIG, EXIT_NOPERM, EXIT_UNAVAILABLE


class Verdict(enum.Enum):
    RETRY = "retry"  # try the same request again after a wait
    FAIL = "fail"  # this task fails; the run goes on
    STOP = "stop"  # nothing more can succeed: stop dispatching


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    exit_code: int = 0  # for STOP
    reason: str = ""  # for STOP, a sentence for the user


def classify(error: BaseException) -> Decision:
    """What to do after `error`. Pure: depends only on the error."""
    if isinstance(error, ApiStatusError):
        status = error.status or 0
        codes = {error.code, error.error_type}
        if status in (401, 403):
            return Decision(
                Verdict.STOP, EXIT_NOPERM, f"the API refused the key (HTTP {status}): {error.message}"
            )
        if status == 404 and "model_not_found" not in codes:
            return Decision(
                Verdict.STOP, EXIT_CONFIG, f"the API has no such endpoint (HTTP 404): {error.message}"
            )
        if status == 429 and "insufficient_quota" in codes:
            return Decision(
                Verdict.STOP, EXIT_UNAVAILABLE, f"the account's quota is exhausted: {error.message}"
            )
        if status in RETRY_STATUSES or status >= 500:
            return Decision(Verdict.RETRY)
        return Decision(Verdict.FAIL)
    if isinstance(error, TransportError):
        return Decision(Verdict.RETRY)
    if isinstance(error, BrokenAnswerError):
        # Garbled on the way: ask again. Whole but unusable: it was paid for; asking again pays twice.
        return Decision(Verdict.RETRY if error.retry else Verdict.FAIL)
    return Decision(Verdict.FAIL)


def retryable(error: BaseException) -> bool:
    return classify(error).verdict is Verdict.RETRY


def rate_limited(error: BaseException | None) -> bool:
    """A 429 to be retried: the service took nothing and billed nothing, it only said "not now". It costs
    its task no attempt (a storm of them failed a night's tasks for good, six 429s each, in a minute),
    and a task whose retries end on one (its --task-deadline) is left pending, never failed. Not one that
    came after part of an answer (an error event in a stream, a usage beside it): that may be billed, and
    spends an attempt as any paid failure does (free, it was bought a thousand times in a second)."""
    return (
        isinstance(error, ApiStatusError)
        and error.status == 429
        and error.usage is None
        and not error.maybe_billed
        and retryable(error)
    )


def bought_nothing(error: BaseException | None) -> bool:
    """A failure that bought nothing for sure: an error status with no usage beside it, sent before any of
    an answer (not inside a stream), or a connection that could not be made (refused, no such host, no
    connection within --connect-timeout). A 5xx of these in a partial outage costs its task no attempt
    (ServiceHealth.failed); one that may be billed (a cut stream, a timeout mid-answer, a usage) spends one,
    or a night of them would buy the same answer over and over."""
    if isinstance(error, ApiStatusError):
        return error.usage is None and not error.maybe_billed
    if isinstance(error, TransportError):
        return not error.maybe_billed
    return False


def failing_service(error: BaseException | None) -> bool:
    """A retryable failure that says the service failed, not the request, and bought nothing: a 5xx or a
    408 with no usage, or a connection that failed unbilled. A task whose retries end on one that spent
    no attempt (the service failing more than it answered, or down) is left pending, not failed."""
    if isinstance(error, ApiStatusError):
        status = error.status or 0
        if not (status >= 500 or status == 408):
            return False
    elif not isinstance(error, TransportError):
        return False
    return bought_nothing(error) and retryable(error)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on retrying one task: attempts *and* time, with full-jitter exponential backoff.

    A sane `Retry-After` (at most `retry_after_max` seconds) is honoured, never as less than the backoff
    (`Retry-After: 0` on every 429 spent a task's six attempts in under a second); an absurd one (negative,
    garbage, hours) is ignored in favour of the backoff.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    deadline: float = DEFAULT_TASK_DEADLINE  # seconds from a task's first attempt; no retry starts after it
    backoff_base: float = DEFAULT_BACKOFF
    backoff_max: float = DEFAULT_BACKOFF_MAX
    retry_after_max: float = 300.0

    def wait(self, attempt: int, error: BaseException | None, rng: random.Random) -> float:
        """Seconds to wait after the `attempt`-th attempt failed with `error`."""
        retry_after = error.retry_after if isinstance(error, ApiError) else None
        # the exponent capped: 429s spend no attempt, and 2 ** 1024 is past a float (OverflowError)
        ceiling = min(self.backoff_max, self.backoff_base * 2.0 ** min(max(0, attempt - 1), 64))
        backoff = rng.uniform(0, ceiling)
        if retry_after is not None and 0 <= retry_after <= self.retry_after_max:
            return max(retry_after + rng.uniform(0, min(1.0, retry_after * 0.1)), backoff)
        return backoff


NO_WAIT = RetryPolicy(backoff_base=0.0, backoff_max=0.0, retry_after_max=-1.0)
"""For tests: retry at once, ignoring Retry-After."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None if absent or garbage.
    Negative and huge values come back as they are; the policy decides whether to honour them."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            if when is None or when.tzinfo is None:
                return None
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError, OSError):
            return None  # a date no calendar holds (hour 99999999999): garbage, like any other
    return seconds if math.isfinite(seconds) else None


class stop_after_counted_attempts(stop_base):
    """Stop once `limit` attempts have counted. An attempt whose failure `free` excuses (one the circuit
    breaker put down to an outage: the service's fault, not the task's) does not count. `before`: the
    attempts already made before the loop began (the fast first one), `excused_before` of them excused."""

    def __init__(
        self,
        limit: int,
        free: Callable[[BaseException], bool] | None = None,
        before: int = 0,
        excused_before: int = 0,
    ) -> None:
        self.limit = limit
        self.free = free
        self.before = before
        self.excused_before = excused_before
        self._excused = excused_before

    def counts(self, error: BaseException | None) -> bool:
        return not (self.free is not None and error is not None and self.free(error))

    def __call__(self, retry_state: RetryCallState) -> bool:
        if retry_state.attempt_number == 1:  # a new call of the loop: count afresh
            self._excused = self.excused_before
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if not self.counts(error):
            self._excused += 1
        return self.before + retry_state.attempt_number - self._excused >= self.limit


class SharedRetries:
    """One retry budget for several calls: the links of one answer, fetched side by side. They share
    `retries` retries among them all (each call's first try is its own), and no retry starts later than
    `deadline` seconds after the budget was made. A budget of its own for each link held a task
    for hours: 16 links that hang until --timeout, each tried --max-attempts times, one after another."""

    def __init__(self, retries: int, deadline: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.left = max(0, retries)
        self.until = clock() + deadline
        self._clock = clock

    def remaining(self) -> float:
        """Seconds left before no retry may start."""
        return self.until - self._clock()

    def take(self) -> bool:
        """Whether one more retry may go; it is counted if so."""
        if self.left <= 0 or self.remaining() <= 0:
            return False
        self.left -= 1
        return True


class stop_when_shared_spent(stop_base):
    """Stop once a SharedRetries budget has no retry left (a retry that goes is taken from it). Put last in
    a stop_any: it is asked only when no other reason stops the loop, so that it counts only retries made."""

    def __init__(self, shared: SharedRetries) -> None:
        self.shared = shared

    def __call__(self, retry_state: RetryCallState) -> bool:
        return not self.shared.take()


@dataclass(frozen=True)
class RetryNotice:
    """An attempt failed and another follows after `wait` seconds (for the runner's events)."""

    attempt: int
    error: BaseException | None
    wait: float


T = TypeVar("T")


def retrying(
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[None]],
    on_retry: Callable[[RetryNotice], None] | None = None,
    rng: random.Random | None = None,
    lost_to_outage: Callable[[BaseException], bool] | None = None,
    before: int = 0,
    excused_before: int = 0,
    deadline: float | None = None,
    shared: SharedRetries | None = None,
) -> AsyncRetrying:
    """The tenacity loop for one task, the only place attempts are counted. `sleep` lets the runner cut a
    wait short when the run stops; `lost_to_outage` says whether an attempt's failure costs the task no
    attempt (the service's outage, or its 429: its own stop predicate); the deadline bounds them all.
    `before`, `excused_before` and `deadline` continue a task whose first attempt ran before the loop;
    `shared`: a budget of retries this loop shares with others (the links of one answer)."""
    generator = rng or random.Random()

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        return policy.wait(before + state.attempt_number, error, generator)

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None:
            error = state.outcome.exception() if state.outcome else None
            on_retry(RetryNotice(before + state.attempt_number, error, state.upcoming_sleep))

    stops: list[stop_base] = [
        stop_after_counted_attempts(policy.max_attempts, lost_to_outage, before, excused_before),
        stop_before_delay(policy.deadline if deadline is None else deadline),
    ]
    if shared is not None:
        stops.append(stop_when_shared_spent(shared))  # last: asked only for a retry that would go
    return AsyncRetrying(
        stop=stop_any(*stops),
        wait=wait,
        retry=retry_if_exception(retryable),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


async def call_with_retries(
    policy: RetryPolicy,
    attempt: Callable[[], Awaitable[T]],
    *,
    sleep: Callable[[float], Awaitable[None]],
    on_retry: Callable[[RetryNotice], None] | None = None,
    rng: random.Random | None = None,
    lost_to_outage: Callable[[BaseException], bool] | None = None,
    shared: SharedRetries | None = None,
) -> T:
    """`attempt()` under the policy, and under `shared`, a budget of retries it shares with other calls.
    The first attempt runs before the loop is built: most tasks succeed at once, and building and entering
    tenacity's loop costs about 0.1 ms a task (`python bench/run.py chat`: 1.95 CPU-s per 1,000 tasks with
    the loop around every task, 1.60 without). From the first retryable failure on, the loop of `retrying`
    takes over, counting that attempt with the same stop predicate and waiting as it would."""
    generator = rng or random.Random()
    started = time.monotonic()
    try:
        return await attempt()
    except Exception as error:
        if not retryable(error):
            raise
        first = error
    excused = 0 if lost_to_outage is None or not lost_to_outage(first) else 1
    if 1 - excused >= policy.max_attempts:
        raise first
    wait = policy.wait(1, first, generator)
    remaining = policy.deadline - (time.monotonic() - started)
    if shared is not None:
        remaining = min(remaining, shared.remaining())
    if wait >= remaining or (shared is not None and not shared.take()):
        raise first
    if on_retry is not None:
        on_retry(RetryNotice(1, first, wait))
    await sleep(wait)
    loop = retrying(
        policy,
        sleep=sleep,
        on_retry=on_retry,
        rng=generator,
        lost_to_outage=lost_to_outage,
        before=1,
        excused_before=excused,
        deadline=remaining - wait,
        shared=shared,
    )

    async def again() -> T:  # a coroutine function: tenacity calls, and never awaits, anything else
        return await attempt()

    return await loop(again)
