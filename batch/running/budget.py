"""Spending limits for a run: --max-cost (dollars) and --max-tokens, over everything DIR's ledger holds.

A budget is for the output directory, not for one run: a run stopped by it (exit 3) is resumed by a later
run with a higher budget. Before each request, what was spent plus the estimates of the requests in flight
plus this request's estimate must fit; otherwise dispatch stops, the requests in flight finish, and their
actual usage replaces their estimates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batch.output.store import read_lines
from batch.running.prices import PriceTable, money
from batch.running.records import UsageRecord


@dataclass(frozen=True)
class BudgetLimits:
    max_cost: float | None = None  # US dollars
    max_tokens: int | None = None

    @property
    def any(self) -> bool:
        return self.max_cost is not None or self.max_tokens is not None


@dataclass
class Spent:
    tokens: int = 0
    cost: float = 0.0
    unpriced: int = 0  # billed answers whose model has no price


def ledger_spent(path: Path, prices: PriceTable) -> Spent:
    """What usage.jsonl says was spent, priced with today's table (so a price change is honoured)."""
    spent = Spent()
    for line in read_lines(path):
        record = UsageRecord.from_line(line)
        spent.tokens += record.counts.total
        cost = prices.cost(record.model, record.repriced_counts)
        if cost is None:
            spent.unpriced += 1
        else:
            spent.cost += cost
    return spent


class Budget:
    """Books estimates for requests in flight and answers for requests done, against the limits."""

    def __init__(self, limits: BudgetLimits, spent: Spent) -> None:
        self.limits = limits
        self.spent = spent
        self._tokens_in_flight = 0
        self._cost_in_flight = 0.0

    def admit(self, tokens: int, cost: float | None) -> str | None:
        """Book a request's estimate, or say why it would pass the budget (and book nothing)."""
        limits = self.limits
        if limits.max_tokens is not None and (
            self.spent.tokens + self._tokens_in_flight + tokens > limits.max_tokens
        ):
            return (
                f"the token budget of {limits.max_tokens:,} would be passed ({self.spent.tokens:,} used, "
                f"{self._tokens_in_flight + tokens:,} more in flight or next)"
            )
        if limits.max_cost is not None and (
            self.spent.cost + self._cost_in_flight + (cost or 0.0) > limits.max_cost
        ):
            return (
                f"the budget of {money(limits.max_cost)} would be passed ({money(self.spent.cost)} spent, "
                f"{money(self._cost_in_flight + (cost or 0.0))} more in flight or next)"
            )
        self._tokens_in_flight += tokens
        self._cost_in_flight += cost or 0.0
        return None

    def settle(self, booked_tokens: int, booked_cost: float | None) -> None:
        """A request is done: its estimate leaves the in-flight sum (`record` adds what it really cost)."""
        self._tokens_in_flight -= booked_tokens
        self._cost_in_flight -= booked_cost or 0.0

    def record(self, tokens: int, cost: float | None) -> None:
        self.spent.tokens += tokens
        if cost is None:
            self.spent.unpriced += 1
        else:
            self.spent.cost += cost
