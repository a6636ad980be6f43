"""What a task's attempts share (the run's collaborators, built once by the Runner) and what one task keeps
while it runs."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from batch.events import Event
from batch.kind import Answer, Registry
from batch.output.runlog import KeptAnswer, RunLog
from batch.output.store import OutputDir
from batch.running.budget import Budget
from batch.running.client import ApiClient
from batch.running.health import ServiceHealth
from batch.running.limits import EndpointLimits
from batch.running.summary import RunSettings


@dataclass(frozen=True)
class AttemptContext:
    """What every task's attempts share: the run's collaborators, built once by the Runner."""

    registry: Registry
    client: ApiClient
    out: OutputDir
    log: RunLog
    settings: RunSettings
    limits: EndpointLimits
    budget: Budget
    health: ServiceHealth
    emit: Callable[[Event], None]
    stop: Callable[[str, int], None]  # stop dispatching: a reason and the exit code
    stopping: Callable[[], bool]
    sleep: Callable[[float], Awaitable[None]]  # a wait that the run's stop cuts short
    threads: anyio.CapacityLimiter  # the run's own threads for blocking work
    run_tag: str
    rng: random.Random
    interrupted: Mapping[str, int]  # task id -> requests of killed runs, maybe billed
    # task id -> the answer a killed run paid for and kept, to finish the task from (runlog.recover)
    kept: Mapping[str, KeptAnswer] = field(default_factory=dict)
    on_store: bool = False  # DIR is a store's staging folder (RunStart.on_store)


@dataclass
class TaskState:
    attempts: int = 0
    probe: int = 0  # the attempt in flight is the outage's probe of this number (ServiceHealth.admit); 0: not
    lost_to_outage: bool = False  # the last attempt's failure was the service's outage: it costs none
    maybe_billed: int = 0  # this run's requests that may have been billed without a result
    maybe_billed_counted: int = 0  # of them, those whose usage so far went into the ledger
    carried: int = 0  # such requests of earlier runs that were killed
    estimate: int = 0  # tokens booked with the pacer for the attempt in flight
    cost: float = 0.0
    unpriced: bool = False  # a billed answer of this task had no price
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    billed: bool = False
    booked: tuple[int, float | None] | None = None  # the budget's estimate for the attempt in flight
    answer: Answer | None = None
    files: list[str] = field(default_factory=list)
    answer_file: str | None = None  # DIR/answers/... : the raw body of a paid answer that was not usable
    # DIR/answers/... : a big answer kept there only until its task's line is written (TaskAttempts._keep)
    window_file: str | None = None
    server_request_id: str | None = None  # the server's id of the answer kept (x-request-id, or its id)
    # (request id, HTTP status, seconds) of the answer kept: its `done` line waits for the task's result
    # line, so that a run killed in between leaves the request counted as maybe billed (not saved)
    answered: tuple[str, int, float] | None = None
    # (request id, outcome, its other fields) of a paid failure not asked again (TaskAttempts._kept_failure):
    # its `done` line waits for the task's result line too, so that a kill in between leaves the next run
    # to end the task from its record, not to send it again
    failed_done: tuple[str, str, dict[str, Any]] | None = None
    # a whole answer, billed, whose images or files were being made when the run cut it short
    # (cancelled): kept for the next run to finish its task from, not a resume's request (that would buy
    # it again)
    cut_while_kept: bool = False
    # the last answer billed: its request id, input, output and total tokens, and cost (its ledger line)
    last_billed: tuple[str, int, int, int, float | None] | None = None


class Stopped(Exception):
    """The run stopped before this attempt could be sent."""


class EndpointGivenUp(Exception):
    """The task's endpoint has answered nothing but 429 for --outage-limit while another endpoint answered
    (ServiceHealth.given_up): the task is left pending, for the next run."""
