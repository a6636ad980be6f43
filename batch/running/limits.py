"""Staying under a provider's limits, per endpoint (a deployment is what providers limit).

RatePacer spaces requests so that no 60-second window holds more than `rpm` requests or `tpm` tokens
(GCRA: each request books the next free moment; nobody waits in a queue, each sleeps until its moment).
Tokens are booked from an estimate before sending and corrected by the usage that comes back.

AdaptiveLimit finds how many requests an endpoint takes at once (`--concurrency auto`) from the 429s it
answers: additive increase, decrease on refusal (AIMD, as TCP does), tuned for a hard limit.

EndpointLimits holds both per endpoint and, with `--redis`, the limits shared with the other runs on the
key (batch.running.shared), which apply on top of the local ones while Redis answers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from batch.running.shared import Lease, SharedConfig, SharedLimits

SAFETY = 0.99  # aim just under the limit: clocks and networks are not exact


@dataclass(frozen=True)
class Limits:
    """What the command line asked for. None is no limit; concurrency None is `auto`."""

    rpm: float | None = None
    tpm: float | None = None
    concurrency: int | None = 4
    max_concurrency: int = 256  # the ceiling of `auto`
    shared: SharedConfig | None = field(default=None, repr=False)  # --redis: limits shared by key


class RatePacer:
    """Requests-per-minute and tokens-per-minute pacing for one endpoint."""

    def __init__(
        self, rpm: float | None, tpm: float | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._request_gap = 60.0 / (rpm * SAFETY) if rpm else 0.0
        self._token_gap = 60.0 / (tpm * SAFETY) if tpm else 0.0
        self._clock = clock
        self._next_request = 0.0  # the earliest moment the next request may go
        self._tokens_free_at = 0.0  # the moment the tokens booked so far have been paid for

    def book(self, tokens: int) -> float:
        """Reserve a moment to send a request that will use about `tokens` tokens; returns the seconds
        to wait for it. Each request waits for the previous one's tokens to be paid for at the minute
        rate (GCRA without a burst), so any 60-second window holds at most the limit, give or take the
        last request."""
        now = self._clock()
        moment = max(now, self._next_request, self._tokens_free_at)
        self._next_request = moment + self._request_gap
        if self._token_gap:
            self._tokens_free_at = moment + tokens * self._token_gap
        return moment - now

    def correct(self, estimated: int, actual: int) -> None:
        """The answer used `actual` tokens where `estimated` were booked."""
        if self._token_gap:
            self._tokens_free_at += (actual - estimated) * self._token_gap

    async def wait(self, tokens: int) -> None:
        delay = self.book(tokens)
        if delay > 0:
            await anyio.sleep(delay)


class AdaptiveLimit:
    """How many requests may be in flight to one endpoint, found from the 429s it answers.

    - Slow start: +1 per answer while nothing is refused.
    - A refused probe (a limit above the last good one) steps back by one and doubles the rounds of answers
      to wait before the next probe (up to 16): sitting at a hard limit K costs about one 429 per 16·K
      answers.
    - Whatever the patience, a probe goes at least every PROBE_SECONDS (or five round trips, if longer), so
      that a capacity that grew is found within seconds.
    - Refusals at a level that used to work, repeated within a few round trips: the capacity fell; cut to
      3/4 and probe eagerly again.
    - A level refused before that now passes a whole round: the capacity grew; slow start again.
    """

    MAX_PATIENCE = 16.0
    PROBE_SECONDS = 1.0

    def __init__(
        self, start: int = 4, ceiling: int = 256, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = start
        self.ceiling = ceiling
        self.in_flight = 0
        self.waiting = 0
        self.cuts = 0
        self._slow_start = True
        self._patience = 1.0  # rounds of answers at the limit before the next probe upwards
        self._answers = 0
        self._good = 0  # the limit after the last cut: known to work
        self._refused: int | None = None  # the last limit the service refused
        self._clock = clock
        self._last_cut = -math.inf
        self._changed_at = clock()  # when the limit last moved
        self._round_trip = 1.0  # seconds, smoothed
        self._changed = anyio.Event()

    async def acquire(self) -> float:
        """Wait for room; returns the moment the request started (for `answered` and `throttled`)."""
        self.waiting += 1
        try:
            while self.in_flight >= self.limit:
                changed = self._changed
                await changed.wait()
        finally:
            self.waiting -= 1
        self.in_flight += 1
        return self._clock()

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def answered(self, started: float) -> None:
        """A request got an answer (call before `release`)."""
        self._round_trip = 0.8 * self._round_trip + 0.2 * max(0.0, self._clock() - started)
        if (self.in_flight < self.limit and not self.waiting) or self.limit >= self.ceiling:
            return  # the limit was not what held requests back
        if self._slow_start:
            self._grow()
            return
        self._answers += 1
        waited = self._clock() - self._changed_at >= max(self.PROBE_SECONDS, 5 * self._round_trip)
        if self._answers < self.limit * (1.0 if waited else self._patience):
            return
        self._answers = 0  # a whole round at this limit without a 429
        if self._refused is not None and self.limit >= self._refused:
            self._refused = None  # a level refused before passes now: the service takes more
            self._patience = 1.0
            self._slow_start = True
        self._grow()

    def throttled(self, started: float) -> None:
        """A request was refused with 429. Those sent before the last cut saw the old limit: one burst
        of refusals is one signal."""
        if started <= self._last_cut:
            return
        now = self._clock()
        self._refused = self.limit
        if self._slow_start or self.limit > self._good:  # slow start overshot, or a probe was refused
            if not self._slow_start:
                self._patience = min(self.MAX_PATIENCE, self._patience * 2)
            self.limit = max(1, self.limit - 1)
        elif now - self._last_cut < 3 * self._round_trip:  # refused again at a level that worked
            self.limit = max(1, int(self.limit * 0.75))
            self._patience = 1.0
        else:  # a lone refusal at a level that worked
            self.limit = max(1, self.limit - 1)
        self._slow_start = False
        self._good = self.limit
        self._answers = 0
        self._last_cut = self._changed_at = now
        self.cuts += 1

    def _grow(self) -> None:
        self.limit += 1
        self._changed_at = self._clock()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


@dataclass
class Slot:
    """A request's place among those in flight to its endpoint (see EndpointLimits.enter)."""

    endpoint: str
    started: float
    adaptive: AdaptiveLimit | None  # `auto`: the limit the answer teaches
    lease: Lease | None = None  # its lease in Redis, when the runs share the limit


class EndpointLimits:
    """The pacer and (for `auto`) the adaptive limit of each endpoint, made on first use; with `shared`,
    the limits shared through Redis on top of them."""

    def __init__(
        self,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedLimits | None = None,
    ) -> None:
        self.limits = limits
        self.shared = shared
        self._clock = clock
        self._pacers: dict[str, RatePacer] = {}
        self._adaptive: dict[str, AdaptiveLimit] = {}

    @property
    def sharing(self) -> bool:
        return self.shared is not None and not self.shared.down

    async def enter(self, endpoint: str) -> Slot:
        """Wait for room for one more request in flight: a lease shared by all runs on the key, or
        (without Redis, or with `auto` once it is gone) this run's adaptive limit."""
        adaptive = self.adaptive(endpoint)
        if self.shared is not None and self.sharing:
            limit = self.limits.concurrency or (adaptive.limit if adaptive is not None else 1)
            lease = await self.shared.acquire(endpoint, limit, is_auto=adaptive is not None)
            if lease.member is not None:
                return Slot(endpoint, self._clock(), adaptive, lease)
        started = await adaptive.acquire() if adaptive is not None else self._clock()
        return Slot(endpoint, started, adaptive)

    async def answered(self, slot: Slot) -> None:
        """The request got an answer: `auto` may grow (and the runs sharing it learn it)."""
        if slot.adaptive is None:
            return
        if slot.lease is None:
            slot.adaptive.answered(slot.started)
            return
        await self._learn(slot, lambda adaptive: adaptive.answered(slot.started))

    async def throttled(self, slot: Slot, retry_after: float | None) -> None:
        """The request was refused with 429: `auto` steps back; a Retry-After pauses every run."""
        if self.shared is not None and retry_after is not None and 0 < retry_after <= 300:
            await self.shared.cool_down(slot.endpoint, retry_after)
        if slot.adaptive is None:
            return
        if slot.lease is None:
            slot.adaptive.throttled(slot.started)
            return
        await self._learn(slot, lambda adaptive: adaptive.throttled(slot.started))

    async def _learn(self, slot: Slot, signal: Callable[[AdaptiveLimit], None]) -> None:
        """Apply an answer to the shared `auto` limit: start from the value all runs share, move it as
        the local algorithm says, and publish the move."""
        adaptive, lease = slot.adaptive, slot.lease
        assert adaptive is not None and lease is not None and self.shared is not None
        adaptive.limit = lease.limit
        adaptive.in_flight, adaptive.waiting = lease.in_flight, int(lease.waited)
        signal(adaptive)
        adaptive.in_flight = adaptive.waiting = 0  # this run's local count is not used while shared
        if adaptive.limit != lease.limit:
            await self.shared.learnt(slot.endpoint, adaptive.limit)

    async def leave(self, slot: Slot) -> None:
        if slot.lease is not None and self.shared is not None:
            await self.shared.release(slot.endpoint, slot.lease)
        elif slot.adaptive is not None:
            slot.adaptive.release()

    async def pace(self, endpoint: str, tokens: int, sleep: Callable[[float], Awaitable[None]]) -> None:
        """--rpm / --tpm: this run's own spacing, then the budget shared with the other runs."""
        await sleep(self.pacer(endpoint).book(tokens))
        if self.shared is not None and self.sharing:
            await self.shared.pace(endpoint, tokens)

    def correct(self, endpoint: str, estimated: int, actual: int) -> None:
        """The answer used `actual` tokens where `estimated` were booked."""
        self.pacer(endpoint).correct(estimated, actual)
        if self.shared is not None and self.sharing:
            self.shared.correct(endpoint, estimated, actual)

    async def cooled(self, endpoint: str) -> None:
        """Wait out a cool-down another run (or this one) was asked for by a 429."""
        if self.shared is not None and self.sharing:
            await self.shared.cooled(endpoint)

    @property
    def paced(self) -> bool:
        return bool(self.limits.rpm or self.limits.tpm)

    def pacer(self, endpoint: str) -> RatePacer:
        pacer = self._pacers.get(endpoint)
        if pacer is None:
            pacer = self._pacers[endpoint] = RatePacer(self.limits.rpm, self.limits.tpm, self._clock)
        return pacer

    def adaptive(self, endpoint: str) -> AdaptiveLimit | None:
        if self.limits.concurrency is not None:
            return None
        limit = self._adaptive.get(endpoint)
        if limit is None:
            limit = self._adaptive[endpoint] = AdaptiveLimit(
                ceiling=self.limits.max_concurrency, clock=self._clock
            )
        return limit

    def snapshot(self) -> dict[str, float]:
        """The concurrency each adaptive endpoint settled on (for the summary)."""
        return {endpoint: round(limit.limit, 1) for endpoint, limit in self._adaptive.items()}
