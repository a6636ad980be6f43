"""`worker`: take shards off every queue `submit` filled and run them, one at a time, until told to stop, or
(`burst`) until no queue holds a shard that is queued or taken.

What each end of a shard does to its message:
* its tasks all ran (succeeded or failed): acked;
* a graceful stop (SIGTERM, SIGINT): the requests in flight finish, then the message is requeued at once;
* the worker dies (kill -9, a lost machine): its heartbeat stops, and after the heartbeat timeout another
  worker's poll requeues the message (Dramatiq's maintenance); the shard resumes from its directory;
* the shard's directory is held by a live run (a worker thought dead): requeued, and this worker goes on;
* anything else that stops a run (the key refused, the service down, the manifest changed, a full disk):
  requeued, and the worker exits with that run's code, for its operator to see.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from batch.cluster.queue import QueueError, ShardQueue, Taken
from batch.cluster.shard import ShardRunner
from batch.errors import BatchError, DirLockedError
from batch.exitcodes import EXIT_FAILED, EXIT_OK, EXIT_TEMPFAIL

log = logging.getLogger("batch.cluster.worker")


@dataclass(frozen=True)
class WorkerSettings:
    burst: bool = False  # exit once no queue holds a shard, queued or taken


class ShardWorker:
    def __init__(self, queue: ShardQueue, runner: ShardRunner, settings: WorkerSettings) -> None:
        self.queue = queue
        self.runner = runner
        self.settings = settings
        self._stopping = threading.Event()
        self.shards_done = 0

    def stop(self) -> None:
        """Finish the shard in hand gracefully (its message is requeued), then return. Signal-safe."""
        self._stopping.set()
        self.runner.stop()

    def run(self) -> int:
        """Work until stopped (exit 75), or in burst mode until there is nothing left (exit 0)."""
        while not self._stopping.is_set():
            names = self.queue.names()
            taken = self._take(names)
            if taken is not None:
                code = self._work(taken)
                if code is not None:
                    return code
            elif self.settings.burst and all(self.queue.size(name) == 0 for name in names):
                log.info("no shard is left to run: %d run by this worker", self.shards_done)
                return EXIT_OK
            elif not names:
                self._stopping.wait(self.queue.settings.poll)
        return EXIT_TEMPFAIL

    def _take(self, names: list[str]) -> Taken | None:
        for name in names:
            if self._stopping.is_set():
                return None
            taken = self.queue.take(name)
            if taken is not None:
                if self._stopping.is_set():  # a signal came while it was being fetched
                    self.queue.requeue(taken)
                    return None
                return taken
        return None

    def _work(self, taken: Taken) -> int | None:
        """Run a shard and settle its message; an exit code when the worker must stop."""
        shard = taken.shard
        log.info("shard %d of %s: positions %d to %d", shard.index, shard.out, shard.start, shard.end - 1)
        beating = _Heartbeat(self.queue, taken, self.runner.abandon)
        beating.start()
        try:
            summary = self.runner.run(shard)
        except BatchError as exc:
            if beating.lost:  # whatever ended it, the shard is another worker's now
                log.warning("shard %d ended (%s); it is another worker's now", shard.index, exc)
                return None
            self.queue.requeue(taken)
            if isinstance(exc, DirLockedError):
                log.warning("shard %d: %s; it goes back on the queue", shard.index, exc)
                self._stopping.wait(self.queue.settings.poll)
                return None
            log.error("shard %d stopped: %s; it goes back on the queue", shard.index, exc)
            return exc.exit_code
        except BaseException:
            self.queue.requeue(taken)  # nothing, if another worker has it
            raise
        finally:
            beating.stop()
        if beating.lost:  # neither acked nor requeued here: its message is the other worker's
            log.info(
                "shard %d: %d tasks saved here; the worker that took it over sends the rest",
                shard.index,
                summary.succeeded + summary.failed,
            )
            return None
        if summary.stop_code is None:
            self.queue.ack(taken)
            self.shards_done += 1
            failed = f", {summary.failed} failed" if summary.failed or summary.failed_before else ""
            log.info("shard %d done: %d tasks%s", shard.index, summary.total, failed)
            return None
        self.queue.requeue(taken)
        log.warning("shard %d stopped (%s); it goes back on the queue", shard.index, summary.stop_reason)
        return summary.stop_code if summary.stop_code not in (EXIT_OK, EXIT_FAILED) else EXIT_TEMPFAIL


class _Heartbeat:
    """Beats for the worker while a shard runs (Dramatiq beats only when it fetches), and looks, each
    time, whether the shard is still this worker's: a worker silent past its heartbeat timeout (its
    machine suspended, a long pause, Redis out of its reach) is taken for dead, and its shard given to
    another. On a store no lock stops both from running it, each paying for every task left, so the
    first to learn it, this one, stops (`abandon`: its requests in flight finish and are saved)."""

    def __init__(self, queue: ShardQueue, taken: Taken, abandon: Callable[[str], None]) -> None:
        self._queue = queue
        self._taken = taken
        self._abandon = abandon
        self._interval = max(0.05, queue.settings.heartbeat_timeout / 4)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="maas-batch-heartbeat", daemon=True)
        self.lost = False  # the shard was given to another worker

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(self._interval):
            try:
                self._queue.beat(self._taken.queue)
                lost = self._queue.lost(self._taken)
            except QueueError as exc:  # the shard goes on: its results are on disk, not in Redis
                log.warning("%s", exc)
                continue
            if lost:
                self.lost = True
                timeout = self._queue.settings.heartbeat_timeout
                reason = (
                    f"shard {self._taken.shard.index} was given to another worker (this one was silent "
                    f"for more than its heartbeat timeout, {timeout:g} s)"
                )
                log.warning("%s: it stops here, its requests in flight finish", reason)
                self._abandon(reason)
                return
