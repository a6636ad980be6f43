"""What the simulator saw and billed: the ground truth a test or a benchmark compares a client's ledger with.

The server's event loop writes, tests and benchmarks read (possibly from another thread), so every access
goes through one lock. Totals are exact; the per-request list keeps only the latest records.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

DEFAULT_MAX_RECORDS = 100_000
RPM_WINDOW_SECONDS = 60.0
# Status recorded for a request whose client went away before it was answered (nginx's convention).
CLIENT_CLOSED_STATUS = 499


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server handled it."""

    time: float  # unix time of arrival
    method: str
    kind: str  # generate | edit | chat | other
    endpoint: str | None
    request_id: str | None  # the X-Client-Request-Id header
    task_id: str | None  # request_id up to its last "/", when it has one
    status: int  # status sent; 499 when the client disconnected first
    fault: str | None
    billed_tokens: int  # 0 unless the provider would have charged for it
    elapsed: float  # seconds from arrival to the end of handling
    x_request_id: str | None = None  # the x-request-id header the answer carried
    answer_id: str | None = None  # the `id` of a chat answer's body
    shapes: tuple[str, ...] = ()  # the answer shapes (config.ANSWER_SHAPES) this answer was written in

    def as_dict(self) -> dict[str, object]:
        """The record as plain JSON-ready data."""
        return {**asdict(self), "shapes": list(self.shapes)}


@dataclass(frozen=True)
class DownloadRecord:
    """One GET of an image file served for the `url` answer shapes (never billed)."""

    time: float  # unix time of arrival
    path: str
    host: str  # the Host header: which origin the client fetched from
    status: int
    authorized: bool  # whether the request carried an Authorization header (an API key leaving its origin)

    def as_dict(self) -> dict[str, object]:
        """The record as plain JSON-ready data."""
        return asdict(self)


def task_id_of(request_id: str | None) -> str | None:
    """The client's task id: its request ids read `<task_id>/<attempt or anything>`."""
    if request_id is None or "/" not in request_id:
        return None
    return request_id.rsplit("/", 1)[0]


class SimState:
    """Counters, limits and request records of one simulator; thread-safe."""

    def __init__(
        self,
        *,
        max_records: int = DEFAULT_MAX_RECORDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._clock = clock
        self._records: deque[RequestRecord] = deque(maxlen=max_records)
        self._downloads: deque[DownloadRecord] = deque(maxlen=max_records)
        self._downloads_total = 0
        self._requests_total = 0
        self._billed_total_tokens = 0
        self._billed_requests = 0
        self._status_counts: Counter[int] = Counter()
        self._fault_counts: Counter[str] = Counter()
        self._inflight = 0
        self._max_inflight_seen = 0
        self._max_inflight: int | None = None
        self._rpm_windows: dict[str, deque[float]] = {}
        self._tpm_windows: dict[str, deque[tuple[float, int]]] = {}
        self._tpm_sums: dict[str, int] = {}
        self._faulted_tasks: set[str] = set()
        self._wakers: list[Callable[[], None]] = []

    # --- limits, called by the server -------------------------------------------------------------

    def set_max_inflight(self, limit: int | None) -> None:
        """Change the concurrency limit while the server runs (None: unlimited)."""
        if limit is not None and limit < 0:
            raise ValueError(f"max_inflight must be >= 0 or None, got {limit!r}")
        with self._lock:
            self._max_inflight = limit
            self._notify()

    def try_enter(self) -> bool:
        """Admit one request under the concurrency limit; False means answer 429 now."""
        with self._lock:
            if self._max_inflight is not None and self._inflight >= self._max_inflight:
                return False
            self._inflight += 1
            self._max_inflight_seen = max(self._max_inflight_seen, self._inflight)
            self._notify()
            return True

    def leave(self) -> None:
        """A request admitted by `try_enter` is done."""
        with self._lock:
            self._inflight -= 1
            self._notify()

    def rpm_admit(self, key_id: str, rpm: int, seconds: float = RPM_WINDOW_SECONDS) -> float | None:
        """Count a request in its key's sliding window of `seconds` (a minute: --rpm; a second: --rps);
        if full, return seconds until a slot frees."""
        with self._lock:
            now = self._clock()
            window = self._rpm_windows.setdefault(f"{seconds:g}s {key_id}", deque())
            while window and window[0] <= now - seconds:
                window.popleft()
            if len(window) >= rpm:
                return max(window[0] + seconds - now, 0.0)
            window.append(now)
            return None

    def tpm_admit(self, key_id: str, tpm: int) -> float | None:
        """If the key's billed tokens in the sliding minute reached `tpm`, seconds until some expire."""
        with self._lock:
            now = self._clock()
            window = self._tpm_windows.setdefault(key_id, deque())
            total = self._tpm_sums.get(key_id, 0)
            while window and window[0][0] <= now - RPM_WINDOW_SECONDS:
                total -= window.popleft()[1]
            self._tpm_sums[key_id] = total
            if total >= tpm:
                return max(window[0][0] + RPM_WINDOW_SECONDS - now, 0.0)
            return None

    def tpm_record(self, key_id: str, tokens: int) -> None:
        """Count billed tokens towards the key's minute (for the tpm limit)."""
        with self._lock:
            self._tpm_windows.setdefault(key_id, deque()).append((self._clock(), tokens))
            self._tpm_sums[key_id] = self._tpm_sums.get(key_id, 0) + tokens

    def claim_fault(self, task_id: str) -> bool:
        """For fault_once_per_task: True the first time a task asks, False afterwards."""
        with self._lock:
            if task_id in self._faulted_tasks:
                return False
            self._faulted_tasks.add(task_id)
            return True

    # --- accounting -------------------------------------------------------------------------------

    def bill(self, tokens: int) -> None:
        """Charge one answer, at the moment it is about to be written."""
        with self._lock:
            self._billed_total_tokens += tokens
            self._billed_requests += 1
            self._notify()

    def record(self, record: RequestRecord) -> None:
        """Keep the record of a finished request."""
        with self._lock:
            self._records.append(record)
            self._requests_total += 1
            self._status_counts[record.status] += 1
            if record.fault is not None:
                self._fault_counts[record.fault] += 1
            self._notify()

    def record_download(self, record: DownloadRecord) -> None:
        """Keep the record of a file download."""
        with self._lock:
            self._downloads.append(record)
            self._downloads_total += 1
            self._notify()

    # --- reading ----------------------------------------------------------------------------------

    @property
    def billed_total_tokens(self) -> int:
        with self._lock:
            return self._billed_total_tokens

    @property
    def billed_requests(self) -> int:
        with self._lock:
            return self._billed_requests

    @property
    def requests_total(self) -> int:
        with self._lock:
            return self._requests_total

    @property
    def inflight(self) -> int:
        with self._lock:
            return self._inflight

    @property
    def max_inflight_seen(self) -> int:
        with self._lock:
            return self._max_inflight_seen

    @property
    def max_inflight(self) -> int | None:
        with self._lock:
            return self._max_inflight

    @property
    def records(self) -> list[RequestRecord]:
        """A copy of the kept records, oldest first."""
        with self._lock:
            return list(self._records)

    @property
    def downloads(self) -> list[DownloadRecord]:
        """A copy of the kept download records, oldest first."""
        with self._lock:
            return list(self._downloads)

    @property
    def downloads_total(self) -> int:
        with self._lock:
            return self._downloads_total

    def status_counts(self) -> dict[int, int]:
        with self._lock:
            return dict(self._status_counts)

    def fault_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._fault_counts)

    def snapshot(self, *, include_records: bool = True) -> dict[str, object]:
        """Totals (and the kept records and downloads) as JSON-ready data; what `GET /_sim/stats` answers."""
        with self._lock:
            snap: dict[str, object] = {
                "requests_total": self._requests_total,
                "billed_total_tokens": self._billed_total_tokens,
                "billed_requests": self._billed_requests,
                "status_counts": {str(status): n for status, n in sorted(self._status_counts.items())},
                "fault_counts": dict(sorted(self._fault_counts.items())),
                "inflight": self._inflight,
                "max_inflight_seen": self._max_inflight_seen,
                "max_inflight": self._max_inflight,
                "records_kept": len(self._records),
                "downloads_total": self._downloads_total,
            }
            if include_records:
                snap["records"] = [record.as_dict() for record in self._records]
                snap["downloads"] = [download.as_dict() for download in self._downloads]
            return snap

    # --- waiting without sleeping -----------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.notify_all()
        for wake in self._wakers:
            wake()

    def wait_for_sync(self, predicate: Callable[[SimState], bool], within: float = 5.0) -> None:
        """Block until `predicate(state)` holds; raises TimeoutError. For code outside the server's loop."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self), within):
                raise TimeoutError("simulator state did not reach the expected condition")

    async def wait_for(self, predicate: Callable[[SimState], bool], within: float = 5.0) -> None:
        """Wait, on any event loop, until `predicate(state)` holds; raises TimeoutError."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()

        def wake() -> None:
            # Called under the lock, possibly from the server's thread.
            with contextlib.suppress(RuntimeError):  # the waiter's loop has closed
                loop.call_soon_threadsafe(event.set)

        with self._lock:
            self._wakers.append(wake)
        try:
            async with asyncio.timeout(within):
                while not predicate(self):
                    await event.wait()
                    event.clear()
        finally:
            with self._lock:
                self._wakers.remove(wake)


def retry_after_seconds(wait: float) -> int:
    """Retry-After for a full rate window: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait))
