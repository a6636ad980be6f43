"""Observers of a run: a tqdm progress bar for a terminal, plain log lines for everything else (cron, CI,
a pipeline). Both only listen to events; the engine does not know they exist.
"""

from __future__ import annotations

import logging
import time
from typing import IO, TYPE_CHECKING, Any

from batch.events import AttemptFailed, Billed, Event, Heartbeat, RunStarted, RunStopping, TaskFinished
from batch.running.prices import money

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger("batch.run")

POSTFIX_EVERY = 0.1  # seconds: the bar's figures are formatted at most this often (tqdm redraws as often)


class ProgressBar:
    """A tqdm bar over the tasks to run now, with failures, retries and tokens beside it."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._bar: tqdm[Any] | None = None
        self._failed = 0
        self._retries = 0
        self._tokens = 0
        self._cost = 0.0
        self._last_error = ""
        self._postfix_at = 0.0  # time.monotonic() of the last postfix

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            from tqdm import tqdm  # loaded for a terminal only: LogLines, in this module too, needs none

            self._bar = tqdm(
                total=event.pending, file=self._stream, unit="task", dynamic_ncols=True, desc="maas-batch"
            )
        elif self._bar is None:
            return
        elif isinstance(event, TaskFinished):
            if not event.succeeded:
                self._failed += 1
                self._bar.write(
                    f"failed {event.task_id}: {event.record['error']['message']}", file=self._stream
                )
            self._bar.update(1)
            # formatting the figures costs more than the rest of a task's bar: not more than tqdm shows them
            if not event.succeeded or time.monotonic() - self._postfix_at >= POSTFIX_EVERY:
                self._postfix()
        elif isinstance(event, AttemptFailed):
            self._retries += 1
            self._last_error = event.error
            self._postfix()
        elif isinstance(event, Billed):
            self._tokens += event.total_tokens
            self._cost += event.cost or 0.0
        elif isinstance(event, RunStopping):
            self._bar.write(f"stopping: {event.reason}", file=self._stream)

    def _postfix(self) -> None:
        assert self._bar is not None
        shown: dict[str, object] = {
            "failed": self._failed,
            "retries": self._retries,
            "tokens": f"{self._tokens:,}",
            "cost": money(self._cost),
        }
        if self._last_error:
            shown["last"] = _short(self._last_error)
        self._bar.set_postfix(shown, refresh=False)
        self._postfix_at = time.monotonic()

    def close(self) -> None:
        if self._bar is not None:
            self._postfix()  # the last figures, for the bar's last drawing
            self._bar.close()


class LogLines:
    """Log lines for a log file, cron's mail, a pipeline's stderr: a status line on each Heartbeat (every
    --log-every seconds), a line per failure and per stop; a line per task and retry at debug level."""

    def __init__(self) -> None:
        self._done = 0
        self._pending = 0
        self._failures_seen: set[str] = set()  # sorts of failure already warned of (dns, HTTP 503...)

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._pending = event.pending
            log.info(
                "%s tasks: %s already finished, %s to run",
                f"{event.total:,}",
                f"{event.finished_before:,}",
                f"{event.pending:,}",
            )
        elif isinstance(event, Heartbeat):
            eta = "" if event.eta_seconds is None else f", ETA {_duration(event.eta_seconds)}"
            unpriced = f" (+{event.unpriced} unpriced)" if event.unpriced else ""
            last = f"; last error: {event.last_error}" if event.last_error else ""
            log.info(
                "done %s/%s, failed %s, in flight %s, retries %s, %.1f/s%s, %s tokens, %s%s%s",
                f"{event.done:,}",
                f"{self._pending:,}",
                f"{event.failed:,}",
                event.in_flight,
                event.retries,
                event.per_second,
                eta,
                f"{event.tokens:,}",
                money(event.cost),
                unpriced,
                last,
            )
        elif isinstance(event, TaskFinished):
            self._done += 1
            record = event.record
            if event.succeeded:
                if not log.isEnabledFor(logging.DEBUG):  # -v: the line of every task is not built for nothing
                    return
                tokens = (record.get("usage") or {}).get("total_tokens", 0)
                log.debug(
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
            if event.failure not in self._failures_seen:  # the first of its sort: say why, at once
                self._failures_seen.add(event.failure)
                log.warning(
                    "first %s failure: %s (task %s; retrying in %.1f s; -v shows every retry)",
                    event.failure,
                    event.error,
                    event.task_id,
                    event.wait,
                )
                return
            log.debug(
                "retrying %s in %.1f s after attempt %d: %s",
                event.task_id,
                event.wait,
                event.attempt,
                event.error,
            )
        elif isinstance(event, RunStopping):
            log.warning("stopping: %s", event.reason)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
