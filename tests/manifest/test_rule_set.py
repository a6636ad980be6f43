"""A kind's rules as a RuleSet: the same issues, in the same order, as the same rules as a plain tuple,
whichever fields a task has and however often the same names come back with other values."""

from __future__ import annotations

from typing import Any

import pytest

from batch.manifest.fields import Boolean, IntRange, RuleSet, Text, check_rules

PLAIN = (
    Text("prompt", required=True, non_empty=True),
    IntRange("n", low=1, high=10),
    Text("model", required=True),
    Boolean("stream"),
)

TASKS: list[dict[str, Any]] = [
    {"prompt": "a fox", "model": "m"},
    {"prompt": "", "model": 3},  # the same names, both values wrong
    {"model": "m", "prompt": "a fox", "n": 0},
    {"n": 11, "stream": "yes"},  # both required ones missing, two values wrong
    {},
    {"prompt": "a fox", "model": "m", "seed": 1, "n": 2},  # a field no rule names
    {"model": "m", "n": "two"},
]


@pytest.mark.parametrize("allow_unknown", [True, False])
def test_the_same_issues_as_the_rules_as_a_tuple(allow_unknown: bool) -> None:
    rules = RuleSet(PLAIN)
    assert tuple(rules) == PLAIN
    for _ in range(2):  # the second time from what was remembered of each set of names
        for fields in TASKS:
            expected = check_rules(fields, PLAIN, allow_unknown=allow_unknown)
            assert check_rules(fields, rules, allow_unknown=allow_unknown) == expected, fields
    assert check_rules(TASKS[1], rules) == check_rules(TASKS[1], PLAIN) != []


def test_past_what_it_keeps_it_works_each_one_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RuleSet, "KEEP", 2)
    rules = RuleSet(PLAIN)
    for fields in TASKS * 2:
        assert check_rules(fields, rules, allow_unknown=True) == check_rules(
            fields, PLAIN, allow_unknown=True
        )
    assert len(rules._met) == 2
