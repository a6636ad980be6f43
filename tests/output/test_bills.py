"""output.bills: each task's bill summed from the ledger's lines, compactly, as `export` reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch.output.bills import Bill, TaskBills, task_bills

pytestmark = pytest.mark.timeout(30)


def test_a_tasks_answers_are_summed_and_an_answer_without_a_price_leaves_its_cost_unknown() -> None:
    bills = TaskBills()
    for task_id, tokens, cost in (("a", 10, 0.5), ("b", 3, None), ("a", 5, 0.25), ("b", 4, 1.0)):
        bills.add(task_id, tokens, cost)
    assert bills.of("a") == Bill(2, 15, 0.75)
    assert bills.of("b") == Bill(2, 7, None)  # not 1.0: one of its answers has no price
    assert bills.of("never") == Bill(0, 0, 0.0)
    bills.add("a", 1, 0.25)  # added after a lookup: sorted in again
    assert bills.of("a") == Bill(3, 16, 1.0)


def test_the_ledgers_of_each_folder_are_read_and_a_figure_past_any_number_does_not_break_the_export(
    tmp_path: Path,
) -> None:
    """A sharded DIR's tasks are each in one shard's ledger; a line edited by hand may hold anything."""
    lines = {
        "one": [{"task_id": "a", "total_tokens": 7, "cost": 0.5}, {"task_id": "a", "total_tokens": 2**70}],
        "two": [{"task_id": "b", "total_tokens": 3, "cost": 0.125}],
    }
    for folder, ledger in lines.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "usage.jsonl").write_text("".join(json.dumps(line) + "\n" for line in ledger))
    bills = task_bills([tmp_path / "one", tmp_path / "two"])
    assert bills.of("b") == Bill(1, 3, 0.125)
    assert bills.of("a").answers == 2 and bills.of("a").cost is None  # the second line has no cost
