"""How late the event loop runs: a task that asks to wake every 10 ms and records how much later it did.
Blocking work on the loop (a big base64 decode, an fsync) shows up here as lag. Kept as a histogram of
1 ms buckets, so memory stays constant however long the run."""

from __future__ import annotations

import time

import anyio

INTERVAL = 0.01
BUCKETS = 2000  # 1 ms each; anything later lands in the last


class LoopLag:
    def __init__(self) -> None:
        self._counts = [0] * BUCKETS
        self.samples = 0
        self.worst = 0.0

    async def watch(self) -> None:
        """Run beside the work; cancel it at the end."""
        while True:
            before = time.monotonic()
            await anyio.sleep(INTERVAL)
            self.record(max(0.0, time.monotonic() - before - INTERVAL))

    def record(self, lag: float) -> None:
        self._counts[min(BUCKETS - 1, int(lag * 1000))] += 1
        self.samples += 1
        self.worst = max(self.worst, lag)

    def percentile(self, fraction: float) -> float:
        """Seconds of lag that `fraction` of the samples stayed within (bucket resolution: 1 ms)."""
        if not self.samples:
            return 0.0
        wanted = fraction * self.samples
        seen = 0
        for bucket, count in enumerate(self._counts):
            seen += count
            if seen >= wanted:
                return (bucket + 1) / 1000
        return self.worst
