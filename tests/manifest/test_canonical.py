"""The canonical string of a task (what `request_sha256` and the ids made for tasks are digests of): byte for
byte the standard library's encoding of {"kind", "endpoint", "fields"}, however it is made, and refused as
that encoding refuses."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

import pytest

from batch.manifest import tasks

REFERENCE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

FIELDS: list[dict[Any, Any]] = [
    {},
    {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "Summarise item 0."}]},
    {"prompt": 'quotes " and \\ backslashes, tabs\t, newlines\n, \x00 \x1f \x7f controls'},
    {"prompt": "é 漢字 emoji 🦊, \u2028 \u2029, Ω"},
    {"n": 3, "big": 2**70, "neg": -(2**64), "zero": 0, "bool": True, "off": False, "none": None},
    {"temperature": 0.7, "tiny": 1e-7, "huge": 1e16, "third": 1 / 3, "neg": -0.0, "whole": 2.0},
    {"zeta": 1, "alpha": {"b": [1, {"d": 2, "c": 3}], "a": ()}, "Mid": [[], {}], "_": "x"},
    {10: "an int key", 2: "another", 1.5: "a float key"},  # sorted as numbers, written as strings
    {"nested": [[[[{"deep": ["list", ("tuple", 1)]}]]]]},
]


@pytest.mark.parametrize("fields", FIELDS)
@pytest.mark.parametrize("endpoint", ["ep", "", 'e"p\\', "ép"])
@pytest.mark.parametrize("kind", ["chat", "generate"])
def test_the_same_bytes_as_the_standard_encoding(kind: str, endpoint: str, fields: dict[Any, Any]) -> None:
    expected = REFERENCE.encode({"kind": kind, "endpoint": endpoint, "fields": fields})
    assert tasks.canonical(kind, endpoint, fields, {}) == expected


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"temperature": math.nan}, ValueError),
        ({"temperature": math.inf}, ValueError),
        ({"when": datetime.date(2024, 1, 1)}, TypeError),
        ({"raw": b"bytes"}, TypeError),
        ({"tags": {"a", "b"}}, TypeError),
        ({1: "x", "a": "y"}, TypeError),  # keys that do not sort together
    ],
)
def test_refused_as_the_standard_encoding_refuses(fields: dict[Any, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        REFERENCE.encode({"kind": "chat", "endpoint": "ep", "fields": fields})
    with pytest.raises(error):
        tasks.canonical("chat", "ep", fields, {})


def test_a_refused_value_leaves_nothing_behind_for_the_next() -> None:
    """The C encoder's circular check keeps the containers it is inside of until it leaves them: an encoding
    refused halfway must not leave them there, to be taken for a loop when met again (the dispatch walk
    encodes the same fields as the check walk)."""
    refused = {"ok": [1], "when": datetime.date(2024, 1, 1)}
    for _ in range(2):
        with pytest.raises(TypeError):
            tasks.canonical("chat", "ep", refused, {})
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(ValueError, match="Circular"):
        tasks.canonical("chat", "ep", {"messages": looped}, {})
    shared = ["one list twice is no loop"]
    fields = {"a": shared, "b": shared}
    expected = REFERENCE.encode({"kind": "chat", "endpoint": "ep", "fields": fields})
    assert tasks.canonical("chat", "ep", fields, {}) == expected


def test_a_mapping_that_is_not_a_dict_is_encoded_as_its_items() -> None:
    from types import MappingProxyType

    fields = MappingProxyType({"b": 1, "a": [2]})
    assert (
        tasks.canonical("chat", "ep", fields, {})
        == '{"endpoint":"ep","fields":{"a":[2],"b":1},"kind":"chat"}'
    )


def test_without_the_c_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where json has no C accelerator, the encoder's own method: the same bytes."""
    monkeypatch.setattr(tasks, "_make_encoder", None)
    for fields in FIELDS:
        expected = REFERENCE.encode({"kind": "chat", "endpoint": "ep", "fields": fields})
        assert tasks.canonical("chat", "ep", fields, {}) == expected
    with pytest.raises(ValueError):
        tasks.canonical("chat", "ep", {"t": math.nan}, {})
