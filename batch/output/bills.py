"""What the ledger billed for each task, over every answer it holds of that task: all its runs, the
answers of lines set aside by --retry-failed and --rerun-changed, a killed run's answers, a stream's usage
so far. A result line's `cost` is only what the run that wrote it paid; this is what the task cost.

Held compactly for `export` (32 bytes a ledger line, a million answers in some 30 MB, not a dict's
~200): the task ids' digests in 256 buckets of sorted arrays, beside their summed tokens and cost.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from batch.output.store import USAGE, read_lines
from batch.running.idset import digest
from batch.running.records import UsageRecord

_BUCKETS = 256


@dataclass(frozen=True)
class Bill:
    """A task's answers in the ledger, their tokens, and their cost (None: an answer of it has none, its
    model having no price)."""

    answers: int
    tokens: int | None  # None: past any number (a ledger edited by hand)
    cost: float | None


class TaskBills:
    """Add each ledger line, then ask by task id."""

    def __init__(self) -> None:
        self._keys = [array("Q") for _ in range(_BUCKETS)]
        self._answers = [array("Q") for _ in range(_BUCKETS)]
        # floats, exact to 2**53 tokens: a figure past 2**63 in a ledger edited by hand does not overflow
        self._tokens = [array("d") for _ in range(_BUCKETS)]
        self._costs = [array("d") for _ in range(_BUCKETS)]  # NaN: an answer with no price
        self._unsorted: set[int] = set()

    def add(self, task_id: str, tokens: int, cost: float | None) -> None:
        """One ledger line of `task_id`: its tokens and cost (None: no price)."""
        key = digest(task_id)
        bucket = key >> 56
        self._keys[bucket].append(key)
        self._answers[bucket].append(1)
        self._tokens[bucket].append(tokens)
        self._costs[bucket].append(math.nan if cost is None else cost)
        self._unsorted.add(bucket)

    def _sort(self) -> None:
        """Each bucket added to, sorted by digest, the lines of one task summed into one entry."""
        for bucket in self._unsorted:
            keys, answers, tokens, costs = array("Q"), array("Q"), array("d"), array("d")
            columns = (self._keys, self._answers, self._tokens, self._costs)
            rows = zip(*(column[bucket] for column in columns), strict=True)
            for key, count, spent, cost in sorted(rows):
                if keys and keys[-1] == key:
                    answers[-1] += count
                    tokens[-1] += spent
                    costs[-1] += cost  # NaN stays NaN: one answer without a price leaves the sum unknown
                    continue
                keys.append(key)
                answers.append(count)
                tokens.append(spent)
                costs.append(cost)
            self._keys[bucket], self._answers[bucket] = keys, answers
            self._tokens[bucket], self._costs[bucket] = tokens, costs
        self._unsorted.clear()

    def of(self, task_id: str) -> Bill:
        """What the ledger billed for `task_id` (0 answers: nothing)."""
        if self._unsorted:
            self._sort()
        key = digest(task_id)
        bucket = key >> 56
        keys = self._keys[bucket]
        at = bisect_left(keys, key)
        if at == len(keys) or keys[at] != key:
            return Bill(0, 0, 0.0)
        cost, tokens = self._costs[bucket][at], self._tokens[bucket][at]
        return Bill(
            self._answers[bucket][at],
            int(tokens) if math.isfinite(tokens) else None,
            None if math.isnan(cost) else round(cost, 10),
        )


def task_bills(roots: Iterable[Path]) -> TaskBills:
    """The bills of the tasks of the run directories `roots` (DIR, or each shard of a sharded DIR), from
    their ledgers."""
    found = TaskBills()
    for root in roots:
        for line in read_lines(root / USAGE):
            usage = UsageRecord.from_line(line)
            found.add(usage.task_id, usage.repriced_counts.total, usage.cost)
    return found
