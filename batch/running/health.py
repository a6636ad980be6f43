"""The run-wide retry budget: a circuit breaker over the service as a whole.

Per-task retries cannot tell a flaky answer from a service that is down. If the API goes down at 3 am,
every task would spend its attempts in minutes and be recorded as failed, while the run hammers the
service. Instead, after `threshold` transient failures in a row (5xx, timeouts, broken connections, broken
answers) across all tasks, the circuit opens: tasks wait at the gate without spending attempts, and one
probe at a time (after 0.25 s, 0.5 s, 1 s ... up to 30 s) asks whether the service is back. The first
answer closes the circuit and everything resumes. Until the failures in a row are too many for a service
that answers one request in five, the probes go PROBE_FIRST apart instead, taken from the outage's later
ones: never more before the limit than the doubling alone sends (probes.py). Attempts that fail during
an outage are not charged to their tasks. If the outage outlasts `outage_limit`, the run stops (exit 69)
with every unfinished task still pending, for a later run; a probe sent before then is waited for first
(it may be paid; its --timeout and PROBE_GRACE at most): its answer closes the circuit instead. A failed
probe's Retry-After (a 503's "come back in 30 s") puts the next probe off that long.

A service that fails most requests but answers some (a partial outage: 80% answered 503) is not down.
Five 503s in a row are common at 80%: the circuit opened and closed again and again, its probes one at a
time up to 30 s apart, and the night crawled (24 of 40 tasks done in 300 s). So the failures in a row that
open the circuit are as many as it takes to be an outage at the rate the service answered of late (its
last WINDOW outcomes): `threshold` for a service that answered everything, 42 at one answer in five, the
whole window (no answer in it) at worst. The first answer closes the circuit and all tasks go again, each at
its own backoff. Meanwhile a failure that bought nothing (a 5xx with no usage, a connection refused) spends
no attempt while the service fails more than it answers: six 503s met by chance failed tasks for good.
--task-deadline bounds them; a failure that may have been billed (a cut stream, an error beside a usage)
still spends one. The outage limit counts from the first of the failures in a row that opened the circuit:
an outage found late is not waited out longer for it.

A 429 is an answer (the service is up, and paces this caller), not an outage's failure: it closes the
circuit like any answer. But a service that answers nothing but 429 for `outage_limit` stops the run the
same way: a gateway that throttles for good, each 429 with `Retry-After: 300` obeyed, held a run for days
and failed every task after its attempts, the outage limit never reached.

One endpoint (deployment) that answers nothing but 429 for `outage_limit` while another endpoint answers
(a chat model's quota spent for the day, the image model fine), or while another of the run's endpoints
has not been heard from yet (its tasks queued behind the throttled ones' workers), is given up alone:
its tasks are left pending and the run goes on with the others'. A 429 costs no attempt, so each of its
tasks would otherwise hold a worker until its --task-deadline, and once every worker held one the run
stopped with the other endpoints' tasks never sent (every night alike, where its tasks came first).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Collection

import anyio
import anyio.lowlevel

from batch.running.probes import PROBE_FIRST, next_wait, probes_within, quick_probes

log = logging.getLogger(__name__)

PROBE_GRACE = 5.0  # seconds past a sent probe's --timeout before the limit gives up on it all the same
WINDOW = 200  # the recent outcomes (answers, failures) that say how often the service answers
OUTAGE_ODDS = 1e-4  # failures in a row this unlikely at the service's recent rate of answers: an outage
LIMPING = 0.2  # fewer failures in a row than make an outage at this rate of answers do not tell it from one
RETRY_AFTER_MAX = 300.0  # a failed probe's Retry-After beyond this is ignored, as a task's retry ignores it


class ServiceHealth:
    def __init__(
        self,
        threshold: int,
        outage_limit: float,
        on_outage: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        probe_timeout: float = math.inf,
        endpoints: Collection[str] = (),
    ) -> None:
        """`probe_timeout`: how long a request may take (--timeout): a probe sent at the outage limit is
        waited for that long, and PROBE_GRACE more, at most. `endpoints`: those the run's tasks go to."""
        self.threshold = max(1, threshold)
        self.outage_limit = outage_limit
        self.probe_timeout = probe_timeout
        self._on_outage = on_outage
        self._clock = clock
        self._in_a_row = 0
        self._failing_since: float | None = None  # the first of the failures in a row
        self._outage_after = self.threshold  # the failures in a row that open it, set as they begin
        self._recent = Outcomes(max(WINDOW, 4 * self.threshold))
        self._opened_at: float | None = None  # when the failures in a row began, once they opened it
        self._next_probe = 0.0
        self._probe_wait = PROBE_FIRST
        self._probes = 0  # probes let through so far: the last one's number
        self._probes_before = 0  # those of the outages before this one
        self._budget = 0  # the probes this outage may send before its limit (the doubling schedule's)
        self._quick = 0  # of them, those that may go PROBE_FIRST apart after the first
        # the failures in a row that tell a dead service from one that answers one request in five
        self._conclusive = max(self.threshold, in_a_row_unlikely_at(LIMPING, self._recent.capacity))
        self._probe = 0  # the number of the probe in flight; 0: none
        self._probe_sent: float | None = None  # when it was sent; None: it waits to be (a pacer, a slot)
        self._released = False
        self._throttled_since: float | None = None  # the first 429 since the last answer that was not one
        # the same, endpoint by endpoint; the endpoints that answered otherwise; those given up (left alone)
        self._endpoint_throttled: dict[str, float] = {}
        self._endpoints_answered: set[str] = set()
        self._given_up: set[str] = set()
        self._endpoints = frozenset(endpoints)
        self._changed = anyio.Event()
        self.last_error = ""
        self.outages = 0  # times the circuit opened

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    async def admit(self) -> int:
        """Return when an attempt may be sent: at once while the service is healthy; during an outage,
        when this caller is the next probe or the service is back. Returns the probe's number when this
        caller is one (0 when not): its attempt says `sending` as it sends, passes the number with its
        failure, and hands it to `ended` however it ends."""
        while self._opened_at is not None and not self._released:
            now = self._clock()
            if now - self._opened_at >= self.outage_limit:
                waiting = self._probe_deadline(now)
                if waiting is None:
                    self._give_up(now)
                    return 0
                await self._wait(waiting - now)  # a probe sent: its answer decides
                continue
            limit = self._opened_at + self.outage_limit
            if self._probe:  # until its answer (a change) or the limit: the next probe's time is no cue
                await self._wait(limit - now)
                continue
            if now >= self._next_probe:
                self._probes += 1
                self._probe, self._probe_sent = self._probes, None
                return self._probe
            await self._wait(min(self._next_probe, limit) - now)
        return 0

    def sending(self, probe: int) -> None:
        """The attempt of probe number `probe` sends its request now (it is no longer waiting for a slot
        or a pacer): from now on, the outage limit waits for its answer."""
        if probe and probe == self._probe:
            self._probe_sent = self._clock()

    async def watch(self) -> None:
        """Give up at the outage limit even when no attempt asks: tasks asleep in their retry's backoff
        (up to --backoff-max) ask only when they wake, and the run overshot --outage-limit by that much
        (a 10 s limit stopped after 22 s). A probe sent before the limit is waited for (its --timeout
        and PROBE_GRACE at most): its answer means the service is back, and the run goes on; its
        failure gives up. A probe still waiting to be sent is not: the run stops, and it is never sent.
        Runs beside the work until the run cancels it."""
        while not self._released:
            now = self._clock()
            self._give_up_endpoints(now)  # first: an endpoint given up alone does not stop the run
            throttled_until = self._throttled_until()
            if now >= throttled_until:  # nothing but 429 since then: as an outage, the run stops
                self._give_up_throttled(now)
                return
            next_check = min(throttled_until, self._endpoint_due())
            if self._opened_at is None:
                if next_check == math.inf:
                    await self._changed.wait()
                else:
                    await self._wait(next_check - now)
                continue
            limit = self._opened_at + self.outage_limit
            waiting = self._probe_deadline(now)
            if now < limit:
                await self._wait(min(limit, next_check) - now)
            elif waiting is not None:
                await self._wait(min(waiting, next_check) - now)
            else:
                self._give_up(now)
                return

    def succeeded(self, endpoint: str | None = None) -> None:
        """The service answered (any answer that is not a transient failure, nor a 429); `endpoint`: the
        endpoint that answered, whose count of 429s starts again (and which is no longer given up)."""
        self._recent.append(True)
        self._throttled_since = None
        if endpoint is not None:
            self._endpoint_throttled.pop(endpoint, None)
            self._given_up.discard(endpoint)
            if endpoint not in self._endpoints_answered:
                self._endpoints_answered.add(endpoint)
                self._wake()  # another endpoint answers: one that throttles for good may be given up
        self._answered()

    def throttled(self, error: str, endpoint: str = "") -> None:
        """A 429 (rate limited, to be retried) from `endpoint`: the service answers, so an outage's count
        of failures ends as with any answer; but once it has answered nothing else for `outage_limit`, the
        run stops as in an outage (this 429, or `watch` while every task waits out a Retry-After). An
        endpoint that has answered nothing else for that long, while another answers, is given up alone."""
        now = self._clock()
        self._answered()
        self.last_error = error
        if endpoint in self._given_up:
            return  # sent before it was given up: it counts no more against the run
        self._endpoint_throttled.setdefault(endpoint, now)
        if self._give_up_endpoints(now) and endpoint in self._given_up:
            return
        if self._throttled_since is None:
            self._throttled_since = now
            self._wake()  # the watch counts from now
        elif now >= self._throttled_until():
            self._give_up_throttled(now)

    @property
    def endpoints_given_up(self) -> list[str]:
        return sorted(self._given_up)

    def given_up(self, endpoint: str) -> bool:
        """Whether `endpoint` has answered nothing but 429 for `outage_limit` while another endpoint
        answered: its tasks are left pending, and nothing more is sent to it in this run."""
        return endpoint in self._given_up

    async def pause(self, endpoint: str, seconds: float) -> None:
        """A task's wait before its next attempt to `endpoint`: cut short when the run stops, or when the
        endpoint is given up (its tasks are then left pending, not held until the end of their waits)."""
        until = self._clock() + seconds
        await anyio.lowlevel.checkpoint()  # a wait of 0 lets the others run too, as a sleep(0) does
        while not self._released and endpoint not in self._given_up:
            left = until - self._clock()
            if left <= 0:
                return
            await self._wait(left)

    def _give_up_endpoints(self, now: float) -> bool:
        """Give up each endpoint that has answered nothing but 429 for `outage_limit`, where another
        endpoint (not given up) has answered in this run: the run goes on with that one. Where none has,
        nothing says that the others work, and the run-wide rule stops the run. Returns whether any was."""
        gave_up = False
        for endpoint, since in list(self._endpoint_throttled.items()):
            if now - since < self.outage_limit or not self._another_may_answer(endpoint):
                continue
            del self._endpoint_throttled[endpoint]
            self._given_up.add(endpoint)
            gave_up = True
            log.warning(
                "endpoint %s has answered nothing but HTTP 429 (rate limited) for %.0f s (last: %s): its "
                "tasks are left pending for the next run, and the run goes on with the other endpoints'",
                endpoint,
                now - since,
                self.last_error,
            )
        if gave_up:
            self._throttled_since = None  # the run goes on without them: their 429s count no more
            self._wake()
        return gave_up

    def _endpoint_due(self) -> float:
        """When the next endpoint may be given up (inf: none can be, no other endpoint having answered)."""
        due = [
            since + self.outage_limit
            for endpoint, since in self._endpoint_throttled.items()
            if self._another_may_answer(endpoint)
        ]
        return min(due, default=math.inf)

    def _another_may_answer(self, endpoint: str) -> bool:
        """Whether an endpoint other than `endpoint`, not given up, has answered in this run, or is one of
        the run's that has not been heard from (neither answered nor throttled): its tasks may be waiting
        for the workers that `endpoint`'s tasks hold, retrying their 429s."""
        others = self._endpoints_answered | (self._endpoints - self._endpoint_throttled.keys())
        return bool(others - self._given_up - {endpoint})

    def _answered(self) -> None:
        self._in_a_row = 0
        self._failing_since = None
        if self._opened_at is not None:
            log.warning(
                "the service answers again, after %.0f s of failures", self._clock() - self._opened_at
            )
            self._opened_at = None
            self._probe, self._probe_sent = 0, None
            self._probe_wait = PROBE_FIRST
            self._wake()

    @property
    def failing_more(self) -> bool:
        """Whether the service has failed more than it answered, of its last outcomes (`threshold` of them
        at least: one 502, the run's first answer, says nothing yet of the service as a whole)."""
        recent = self._recent
        return recent.size >= self.threshold and recent.failures > recent.answers

    def _outage_in_a_row(self) -> int:
        """The failures in a row that make an outage: so many that the service, answering as often as it
        did of late (before them), would fail them all less than once in 1/OUTAGE_ODDS; `threshold` at
        least, and no more than the window: a window without an answer is an outage whatever came before."""
        recent = self._recent
        rate = recent.answers / recent.size if recent.size else 0.0
        if rate in (0.0, 1.0):
            return self.threshold
        return max(self.threshold, in_a_row_unlikely_at(rate, recent.capacity))

    def failed(
        self, error: str, probe: int = 0, *, billed: bool = True, retry_after: float | None = None
    ) -> bool:
        """A transient failure: 5xx, timeout, broken connection, broken answer; `probe`: the number of the
        probe that failed (admit's), 0 for another request (one sent before the circuit opened); `billed`:
        whether it may have been billed (False: it bought nothing for sure: a 5xx with no usage, a
        connection refused); `retry_after`: the seconds its Retry-After asks for. Returns whether it counts
        against its task's attempts: not when it opened the circuit or came during an outage, which is the
        service's fault, not the task's; nor, when it bought nothing, while the service fails more than it
        answers (a partial outage)."""
        self._in_a_row += 1
        self.last_error = error
        now = self._clock()
        if self._failing_since is None:  # at the rate of answers before these failures: theirs would chase it
            self._failing_since = now
            self._outage_after = self._outage_in_a_row()
        self._recent.append(False)
        if self._opened_at is None:
            if self._in_a_row < self._outage_after:  # a bad run of a service that answers still: no outage
                return billed or not self.failing_more
            self._opened_at = self._failing_since
            self._next_probe = now + self._told_to_wait(PROBE_FIRST, retry_after)
            self._probes_before = self._probes
            self._budget = probes_within(self._opened_at + self.outage_limit - now)
            self._quick = quick_probes(self._opened_at + self.outage_limit - now)
            self.outages += 1
            log.warning(
                "the service is failing (%d failed attempts in a row; last: %s): tasks wait without spending "
                "attempts while one probe at a time asks whether it is back (for up to %s s)",
                self._in_a_row,
                error,
                f"{self.outage_limit:g}",
            )
            self._wake()
            return False
        if probe and probe == self._probe:
            self._probe, self._probe_sent = 0, None
            self._next_probe = now + self._told_to_wait(self._after_a_failed_probe(now), retry_after)
            self._wake()
        if now - self._opened_at >= self.outage_limit and self._probe_deadline(now) is None:
            self._give_up(now)
        return False

    def _after_a_failed_probe(self, now: float) -> float:
        """The wait before the next probe. While the failures in a row are too few to tell a dead service
        from one that answers one request in five (a run that began in a partial outage), PROBE_FIRST,
        for the outage's quick probes; then doubling, each wait twice the last, within the budget: the
        probes the doubling schedule alone would send before the limit (probes.py)."""
        sent = self._probes - self._probes_before
        if self._in_a_row < self._conclusive and sent <= self._quick:
            return PROBE_FIRST
        left = self._opened_at + self.outage_limit - now if self._opened_at is not None else 0.0
        self._probe_wait = next_wait(left, self._budget - sent, self._probe_wait * 2)
        return self._probe_wait

    @staticmethod
    def _told_to_wait(wait: float, retry_after: float | None) -> float:
        """The wait before the next probe: `wait`, or the failure's Retry-After when that is longer (and
        sane: a negative or absurd one is ignored, as a task's retry ignores it)."""
        if retry_after is not None and 0 <= retry_after <= RETRY_AFTER_MAX:
            return max(wait, retry_after)
        return wait

    def ended(self, probe: int) -> None:
        """The attempt of probe number `probe` is over. One that ended before its answer said anything
        either way (cancelled, the run stopping, its input unreadable, its `sent` line not written) lets
        another probe go, and the limit give up: it would otherwise wait for that answer in vain."""
        if probe and probe == self._probe:
            self._probe, self._probe_sent = 0, None
            self._wake()

    def release(self) -> None:
        """The run is stopping: let every waiter through (the runner then sends nothing)."""
        self._released = True
        self._wake()

    def _probe_deadline(self, now: float) -> float | None:
        """Until when the outage limit waits for the probe in flight: None when there is none, it has not
        been sent, or its time (--timeout, and PROBE_GRACE) is over."""
        if not self._probe or self._probe_sent is None:
            return None
        deadline = self._probe_sent + self.probe_timeout + PROBE_GRACE
        return deadline if now < deadline else None

    async def _wait(self, seconds: float) -> None:
        """Until the state changes, or `seconds` (and a millisecond) pass."""
        changed = self._changed
        with anyio.move_on_after(max(0.0, seconds) + 0.001):
            await changed.wait()

    def _throttled_until(self) -> float:
        """When a service that has answered nothing but 429 has done so for too long (inf: it has not)."""
        since = self._throttled_since
        return math.inf if since is None else since + self.outage_limit

    def _give_up_throttled(self, now: float) -> None:
        if self._released:
            return
        assert self._throttled_since is not None
        self.release()
        self._on_outage(
            f"the service has answered nothing but HTTP 429 (rate limited) for "
            f"{now - self._throttled_since:.0f} s (last: {self.last_error})"
        )

    def _give_up(self, now: float) -> None:
        assert self._opened_at is not None
        self.release()
        self._on_outage(
            f"the service has been failing for {now - self._opened_at:.0f} s "
            f"({self._in_a_row} failed attempts in a row; last: {self.last_error})"
        )

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


def in_a_row_unlikely_at(rate: float, most: int) -> int:
    """The failures in a row that a service answering `rate` of its requests fails less than once in
    1/OUTAGE_ODDS; `most` at most."""
    return min(most, math.ceil(math.log(OUTAGE_ODDS) / math.log1p(-rate)))


class Outcomes:
    """The last `capacity` outcomes of requests, answered or failed, with their counts."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._last: deque[bool] = deque(maxlen=capacity)
        self.answers = 0

    @property
    def size(self) -> int:
        return len(self._last)

    @property
    def failures(self) -> int:
        return len(self._last) - self.answers

    def append(self, answered: bool) -> None:
        if len(self._last) == self.capacity:
            self.answers -= self._last[0]
        self._last.append(answered)
        self.answers += answered
