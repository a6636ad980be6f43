"""Observers of a run: a tqdm progress bar for a terminal, plain log lines for everything else (cron, CI,
a pipeline). Both only listen to events; the engine does not know they exist.
"""

from __future__ import annotations

import logging
from typing import IO, Any

from tqdm import tqdm

from batch.events import AttemptFailed, Billed, Event, RunStarted, RunStopping, TaskFinished

log = logging.getLogger("batch.run")


class ProgressBar:
    """A tqdm bar over the tasks to run now, with failures, retries and tokens beside it."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._bar: tqdm[Any] | None = None
        self._failed = 0
        self._retries = 0
        self._tokens = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._bar = tqdm(
                total=event.pending, file=self._stream, unit="task", dynamic_ncols=True, desc="maas-batch"
            )
        elif self._bar is None:
            return
        elif isinstance(event, TaskFinished):
            if not event.succeeded:
                self._failed += 1
                self._bar.write(f"failed {event.task_id}: {event.record['error']['message']}")
            self._bar.update(1)
            self._postfix()
        elif isinstance(event, AttemptFailed):
            self._retries += 1
            self._postfix()
        elif isinstance(event, Billed):
            self._tokens += event.total_tokens
        elif isinstance(event, RunStopping):
            self._bar.write(f"stopping: {event.reason}")

    def _postfix(self) -> None:
        assert self._bar is not None
        self._bar.set_postfix(
            failed=self._failed, retries=self._retries, tokens=f"{self._tokens:,}", refresh=False
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class LogLines:
    """One log line per finished task, retry and stop: for a log file or a pipeline's stderr."""

    def __init__(self) -> None:
        self._done = 0
        self._pending = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._pending = event.pending
            log.info(
                "%d tasks: %d already finished, %d to run", event.total, event.finished_before, event.pending
            )
        elif isinstance(event, TaskFinished):
            self._done += 1
            record = event.record
            if event.succeeded:
                tokens = (record.get("usage") or {}).get("total_tokens", 0)
                log.info(
                    "[%d/%d] %s %s succeeded (%s tokens, %d attempt%s)",
                    self._done,
                    self._pending,
                    record["kind"],
                    record["id"],
                    f"{tokens:,}",
                    record["attempts"],
                    "" if record["attempts"] == 1 else "s",
                )
            else:
                log.warning(
                    "[%d/%d] %s %s failed: %s",
                    self._done,
                    self._pending,
                    record["kind"],
                    record["id"],
                    record["error"]["message"],
                )
        elif isinstance(event, AttemptFailed):
            log.info(
                "retrying %s in %.1f s after attempt %d: %s",
                event.task_id,
                event.wait,
                event.attempt,
                event.error,
            )
        elif isinstance(event, RunStopping):
            log.warning("stopping: %s", event.reason)
