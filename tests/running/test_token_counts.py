"""A usage's figures read as counts (batch.kind): the usual figures, plain ints, are told at once; every
other value reads as the checks read it before that shortcut (the reference below)."""

from __future__ import annotations

import enum
import itertools
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import pytest

from batch.kind import MAX_COUNT, count_of, counts_readable, usage_counts


class Figure(enum.IntEnum):
    TEN = 10


def reference_count_of(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT else 0


def reference_readable(usage: Mapping[Any, Any]) -> bool:
    return all(
        value is None or (reference_count_of(value) == value and not isinstance(value, bool))
        for key, value in usage.items()
        if isinstance(key, str) and key.endswith("_tokens")
    )


VALUES = [0, 7, MAX_COUNT, MAX_COUNT + 1, -1, 2**70, True, False, Figure.TEN, 0.0, 10.0, 1.5, "12", None, [3]]
KEYS = ["prompt_tokens", "total_tokens", "details", 3, "prompt_tokens_details"]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_figure_reads_as_a_count_as_before(value: Any) -> None:
    assert count_of(value) == reference_count_of(value)
    assert type(count_of(value)) is type(reference_count_of(value))


def test_a_usage_is_readable_as_before_whatever_its_figures_and_keys() -> None:
    for first, second in itertools.product(itertools.product(KEYS, VALUES), repeat=2):
        usage = dict([first, second])
        assert counts_readable(usage) is reference_readable(usage), usage
        assert counts_readable(OrderedDict(usage)) is reference_readable(usage), usage


@pytest.mark.parametrize(
    "details", [None, {"cached_tokens": 4}, OrderedDict(cached_tokens=4), [("cached_tokens", 4)], "x"]
)
def test_the_details_of_a_usage_are_read_from_any_mapping(details: Any) -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": details}
    usage["completion_tokens_details"] = {"reasoning_tokens": 5} if details is None else details
    counts = usage_counts(usage, "prompt_tokens", "completion_tokens")
    mapping = isinstance(details, Mapping)
    assert counts.cached_input == (4 if mapping else 0)
    assert counts.reasoning == (5 if details is None else 0)
