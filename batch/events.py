"""What a run reports as it goes: frozen events handed to observers (progress bar, log lines, a library
caller's callback). The engine runs the same with no observer at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from batch.frozen import quick_init


@dataclass(frozen=True)
class RunStarted:
    total: int  # tasks in the manifest
    finished_before: int  # already in results.jsonl: skipped
    pending: int  # to run now
    orphaned: int = 0  # lines of results.jsonl of no task of the manifest as it is now
    changed: int = 0  # finished tasks whose result lines name another request than the manifest's now


@quick_init
@dataclass(frozen=True)
class TaskStarted:
    task_id: str
    kind: str


@quick_init
@dataclass(frozen=True)
class AttemptFailed:
    """An attempt failed and the task will be retried after `wait` seconds."""

    task_id: str
    attempt: int
    error: str
    wait: float
    failure: str = (
        ""  # its sort: dns, refused, tls, timeout, HTTP 503... (batch.running.answers.failure_kind)
    )


@quick_init
@dataclass(frozen=True)
class Billed:
    """A billed answer was recorded in the ledger."""

    task_id: str
    model: str | None
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost: float | None = None  # US dollars; None when the model has no price


@quick_init
@dataclass(frozen=True)
class TaskFinished:
    """A task's result line was written: `record` is that line."""

    record: Mapping[str, Any]

    @property
    def task_id(self) -> str:
        return str(self.record["id"])

    @property
    def succeeded(self) -> bool:
        return bool(self.record["status"] == "succeeded")


@dataclass(frozen=True)
class RunStopping:
    """Dispatch stopped before the manifest was done; in-flight tasks are finishing."""

    reason: str
    exit_code: int


@dataclass(frozen=True)
class Heartbeat:
    """Where the run stands, every few seconds (--log-every): for the periodic log line."""

    done: int  # tasks finished in this run
    failed: int
    left: int
    in_flight: int  # requests in flight now
    retries: int
    per_second: float
    eta_seconds: float | None
    tokens: int
    cost: float
    unpriced: int
    last_error: str = ""  # the latest failed attempt's reason, while retries go on


Event = RunStarted | TaskStarted | AttemptFailed | Billed | TaskFinished | RunStopping | Heartbeat
Observer = Callable[[Event], None]
