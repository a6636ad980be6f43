"""A run's settings and what it did: `RunSummary` counts the run's events as they are emitted (an observer
like the progress bar), so the attempt code never touches it."""

from __future__ import annotations

from dataclasses import dataclass, field

from batch.defaults import DEFAULT_OUTAGE_LIMIT
from batch.events import AttemptFailed, Billed, Event, TaskFinished
from batch.exitcodes import EXIT_FAILED, EXIT_OK
from batch.running.budget import BudgetLimits
from batch.running.limits import Limits
from batch.running.prices import PriceTable
from batch.running.retry import RetryPolicy


@dataclass(frozen=True)
class RunSettings:
    limits: Limits = field(default_factory=Limits)  # concurrency (or auto), rpm, tpm
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    prices: PriceTable = field(default_factory=PriceTable)
    budget: BudgetLimits = field(default_factory=BudgetLimits)  # --max-cost, --max-tokens (all of DIR)
    deadline: float | None = None  # unix time by which the run must have ended (--deadline, --max-duration)
    heartbeat: float = 0.0  # seconds between Heartbeat events (the periodic log line); 0: none
    thumbnails: bool = True  # a thumbnail of each saved image, for the gallery
    outage_limit: float = DEFAULT_OUTAGE_LIMIT  # seconds the service may fail before the run stops (69)


@dataclass
class RunSummary:
    """What a run did. `exit_code` follows the documented contract."""

    total: int = 0
    finished_before: int = 0
    failed_before: int = 0  # of finished_before: tasks whose result line says failed
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    billed_answers: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    maybe_billed: int = 0  # requests that may have been billed without a saved result
    # of maybe_billed, those whose usage so far is in the ledger (so in the cost, if maybe not in full)
    maybe_billed_counted: int = 0
    cost: float = 0.0  # US dollars, of the billed answers of this run with a price
    unpriced: int = 0  # billed answers whose model has no price
    interrupted: int = 0  # requests of earlier runs that were killed in flight (maybe billed)
    left_alone: int = 0  # pending tasks that --retry-failed does not run (it runs the failed ones only)
    stop_reason: str | None = None
    stop_code: int | None = None
    seconds: float = 0.0
    loop_lag_p99_ms: float = 0.0  # how late the event loop ran, 99th percentile (blocking work shows here)
    concurrency: dict[str, float] = field(default_factory=dict)  # what --concurrency auto settled on
    last_error: str = ""  # the reason of the latest attempt that failed and was retried

    @property
    def not_run(self) -> int:
        return max(0, self.total - self.finished_before - self.left_alone - self.succeeded - self.failed)

    @property
    def exit_code(self) -> int:
        if self.stop_code is not None:
            return self.stop_code
        return EXIT_FAILED if self.failed or self.failed_before else EXIT_OK

    def observe(self, event: Event) -> None:
        """Count an event of the run: billed answers, finished tasks, retries."""
        if isinstance(event, Billed):
            if event.cost is None:
                self.unpriced += 1
            else:
                self.cost += event.cost
            self.billed_answers += 1
            self.input_tokens += event.input_tokens
            self.output_tokens += event.output_tokens
            self.total_tokens += event.total_tokens
        elif isinstance(event, TaskFinished):
            if event.succeeded:
                self.succeeded += 1
            else:
                self.failed += 1
        elif isinstance(event, AttemptFailed):
            self.retries += 1
            self.last_error = event.error
