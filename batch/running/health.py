"""The run-wide retry budget: a circuit breaker over the service as a whole.

Per-task retries cannot tell a flaky answer from a service that is down. If the API goes down at 3 am,
every task would spend its attempts in minutes and be recorded as failed, while the run hammers the
service. Instead, after `threshold` transient failures in a row (5xx, timeouts, broken connections, broken
answers) across all tasks, the circuit opens: tasks wait at the gate without spending attempts, and one
probe at a time (after 0.25 s, 0.5 s, 1 s ... up to 30 s) asks whether the service is back. The first
answer closes the circuit and everything resumes. Attempts that fail during an outage are not charged to
their tasks. If the outage outlasts `outage_limit`, the run stops
(exit 69) with every unfinished task still pending, for a later run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio

log = logging.getLogger(__name__)

PROBE_FIRST = 0.25
PROBE_MAX = 30.0


class ServiceHealth:
    def __init__(
        self,
        threshold: int,
        outage_limit: float,
        on_outage: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = max(1, threshold)
        self.outage_limit = outage_limit
        self._on_outage = on_outage
        self._clock = clock
        self._in_a_row = 0
        self._opened_at: float | None = None
        self._next_probe = 0.0
        self._probe_wait = PROBE_FIRST
        self._probing = False
        self._released = False
        self._changed = anyio.Event()
        self.last_error = ""
        self.outages = 0  # times the circuit opened

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    async def admit(self) -> None:
        """Return when an attempt may be sent: at once while the service is healthy; during an outage,
        when this caller is the next probe or the service is back."""
        while self._opened_at is not None and not self._released:
            now = self._clock()
            if now - self._opened_at >= self.outage_limit:
                self._give_up(now)
                return
            if not self._probing and now >= self._next_probe:
                self._probing = True
                return
            changed = self._changed
            deadline = min(self._next_probe, self._opened_at + self.outage_limit)
            with anyio.move_on_after(max(0.0, deadline - now) + 0.001):
                await changed.wait()

    async def watch(self) -> None:
        """Give up at the outage limit even when no attempt asks: tasks asleep in their retry's backoff
        (up to --backoff-max) ask only when they wake, and the run overshot --outage-limit by that much
        (a 10 s limit stopped after 22 s). Runs beside the work until the run cancels it."""
        while not self._released:
            changed = self._changed
            if self._opened_at is None:
                await changed.wait()
                continue
            now = self._clock()
            if now - self._opened_at >= self.outage_limit:
                self._give_up(now)
                return
            with anyio.move_on_after(self._opened_at + self.outage_limit - now + 0.001):
                await changed.wait()

    def succeeded(self) -> None:
        """The service answered (any answer that is not a transient failure)."""
        self._in_a_row = 0
        if self._opened_at is not None:
            log.warning(
                "the service answers again, after %.0f s of failures", self._clock() - self._opened_at
            )
            self._opened_at = None
            self._probing = False
            self._probe_wait = PROBE_FIRST
            self._wake()

    def failed(self, error: str) -> bool:
        """A transient failure: 5xx, timeout, broken connection, broken answer. Returns whether it counts
        against its task's attempts: not when it opened the circuit or came during an outage, which is
        the service's fault, not the task's."""
        self._in_a_row += 1
        self.last_error = error
        now = self._clock()
        if self._opened_at is None:
            if self._in_a_row < self.threshold:
                return True
            self._opened_at = now
            self._next_probe = now + PROBE_FIRST
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
        if self._probing:
            self._probing = False
            self._probe_wait = min(PROBE_MAX, self._probe_wait * 2)
            self._next_probe = now + self._probe_wait
            self._wake()
        if now - self._opened_at >= self.outage_limit:
            self._give_up(now)
        return False

    def abandoned(self) -> None:
        """An admitted attempt ended without an answer either way (cancelled): let another probe go."""
        if self._probing:
            self._probing = False
            self._wake()

    def release(self) -> None:
        """The run is stopping: let every waiter through (the runner then sends nothing)."""
        self._released = True
        self._wake()

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
