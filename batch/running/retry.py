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
from batch.errors import ApiError, ApiStatusError, BrokenAnswerError, TransportError
from batch.exitcodes import EXIT_CONFIG, EXIT_NOPERM, EXIT_UNAVAILABLE

RETRY_STATUSES = frozenset({408, 409, 429})


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


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on retrying one task: attempts *and* time, with full-jitter exponential backoff.

    A sane `Retry-After` (at most `retry_after_max` seconds) is honoured; an absurd one (negative, garbage,
    hours) is ignored in favour of the backoff.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    deadline: float = DEFAULT_TASK_DEADLINE  # seconds from a task's first attempt; no retry starts after it
    backoff_base: float = DEFAULT_BACKOFF
    backoff_max: float = DEFAULT_BACKOFF_MAX
    retry_after_max: float = 300.0

    def wait(self, attempt: int, error: BaseException | None, rng: random.Random) -> float:
        """Seconds to wait after the `attempt`-th attempt failed with `error`."""
        retry_after = error.retry_after if isinstance(error, ApiError) else None
        if retry_after is not None and 0 <= retry_after <= self.retry_after_max:
            return retry_after + rng.uniform(0, min(1.0, retry_after * 0.1))
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** max(0, attempt - 1))
        return rng.uniform(0, ceiling)


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
    breaker put down to an outage: the service's fault, not the task's) does not count."""

    def __init__(self, limit: int, free: Callable[[BaseException], bool] | None = None) -> None:
        self.limit = limit
        self.free = free
        self._excused = 0

    def __call__(self, retry_state: RetryCallState) -> bool:
        if retry_state.attempt_number == 1:  # a new call of the loop: count afresh
            self._excused = 0
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if self.free is not None and error is not None and self.free(error):
            self._excused += 1
        return retry_state.attempt_number - self._excused >= self.limit


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
) -> AsyncRetrying:
    """The tenacity loop for one task, the only place attempts are counted. `sleep` lets the runner cut a
    wait short when the run stops; `lost_to_outage` says whether an attempt's failure was the service's
    outage, which costs the task no attempt (its own stop predicate); the deadline bounds them all."""
    generator = rng or random.Random()

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        return policy.wait(state.attempt_number, error, generator)

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None:
            error = state.outcome.exception() if state.outcome else None
            on_retry(RetryNotice(state.attempt_number, error, state.upcoming_sleep))

    return AsyncRetrying(
        stop=stop_any(
            stop_after_counted_attempts(policy.max_attempts, lost_to_outage),
            stop_before_delay(policy.deadline),
        ),
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
) -> T:
    """`attempt()` under the policy, in the one tenacity loop of `retrying`."""
    loop = retrying(policy, sleep=sleep, on_retry=on_retry, rng=rng, lost_to_outage=lost_to_outage)

    async def once() -> T:  # a coroutine function: tenacity calls, and never awaits, anything else
        return await attempt()

    return await loop(once)
