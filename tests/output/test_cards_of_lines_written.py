"""A card made as its line is written (output.cards.Cards) is made from the line's own record where that
record reads back from the written bytes as itself (store.reads_back), and from the line's own fields
(line_card), not from a ResultRecord: the same card, byte for byte, as the page makes from the bytes."""

from __future__ import annotations

import datetime
import enum
import json
import math
import random
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from batch import codec
from batch.output import store
from batch.output.cards import Cards, _finish, entry_card, line_card, page_json
from batch.output.scope import Entry
from batch.output.store import encode_line, parse_record, reads_back
from batch.running.records import ResultRecord
from batch.simulator import ANSWER_SHAPES, SimConfig, simulator_in_thread
from tests.conftest import FAST, KEY, Outcome, env_for

CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"sku": "A1"}'}}
LINES: list[dict[str, Any]] = [
    {
        "id": "two-choices",
        "kind": "chat",
        "status": "succeeded",
        "model": "gemini-2.5-flash",
        "custom_id": "row-7",
        "prompt": "label it <b>café</b> 🐈",
        "params": {"n": 2, "temperature": 0.7, "response_format": {"type": "json_object"}, "stop": ["x"]},
        "files": [],
        "text": None,
        "texts": [None, "a lamp"],
        "finish_reason": "tool_calls",
        "tool_calls": [CALL],
        "tool_calls_per_choice": [[CALL], []],
        "reasoning": "the user wants a label",
        "request_id": "req-abc",
        "answer_file": "answers/two-choices.json",
        "usage": {"input_tokens": 21, "output_tokens": 1065, "total_tokens": 1086},
        "cost": 0.0027,
        "attempts": 1,
        "maybe_billed": 1,
        "meta": {"row": 7},
        "endpoint": "ep",
        "seconds": 1.25,
        "finished_at": "2026-11-22T23:00:02.000+00:00",
        "request_sha256": "2e9cd1950b05e4a1",
    },
    {
        "id": "short",
        "kind": "generate",
        "status": "succeeded",
        "model": "gpt-image-1",
        "inputs": ["/abs/in.png", "rel.png"],
        "files": ["images/short~1.png", "/etc/passwd", "../up.png", "https://x/y.png", "c:x.png"],
        "images_missing": 1,
        "usage": {"input_tokens": 5, "output_tokens": 544, "total_tokens": 549},
        "cost": 0.02,
        "attempts": 1,
    },
    {
        "id": "refused",
        "kind": "generate",
        "status": "failed",
        "model": None,
        "files": [],
        "usage": None,
        "error": {"type": "moderation_blocked", "status": 400, "message": "rejected " * 400},
        "attempts": 6,
    },
    # lines edited by hand, as the page reads them
    {
        "id": "e",
        "kind": {"toString": 1},
        "cost": "cheap",
        "usage": {"total_tokens": "many", "input_tokens": 7},
    },
    {"id": "f", "status": None, "usage": {"total_tokens": True}, "attempts": "3", "seconds": float("nan")},
    {"id": "g", "usage": {"total_tokens": 2**70}, "cost": 2**70, "attempts": 2.9, "error": {}},
    {"id": "h", "usage": [], "params": [1], "files": "images/a.png", "inputs": 7, "text": 5, "prompt": 0},
    {"id": "i", "usage": {"total_tokens": 1.5}, "error": "boom", "model": ["m"], "finished_at": 1},
    {
        "id": "j",
        "params": {str(n): "v" * (n * 20) for n in range(60)},
        "text": "t" * 30_000,
        "prompt": "p" * 3000,
    },
    {"id": "k", "params": {"a": None, "b": True, "c": 1.0, "d": [{"deep": [1]}], "<script>": "</script>"}},
    {"id": "l", "error": {"type": None, "message": None}, "status": "failed", "cost": float("inf")},
]


def record_card(line: Mapping[str, Any]) -> bytes:
    """The card the page makes of a line read back: its record's, with no thumbnail made."""
    return page_json(_finish(entry_card(Entry(ResultRecord.from_line(line), None)), set()))


@pytest.mark.parametrize("line", LINES, ids=[str(line["id"]) for line in LINES])
def test_a_lines_card_from_its_own_fields_is_its_records_card(line: dict[str, Any]) -> None:
    assert page_json(line_card(line)) == record_card(line)
    read_back = parse_record(json.dumps(line).encode())
    assert read_back is not None and page_json(line_card(read_back)) == record_card(read_back)


def same(read: Any, written: Any) -> bool:
    """Equal, of the same types, dict keys in the same order."""
    if type(read) is not type(written):
        return False
    if isinstance(written, dict):
        return list(read) == list(written) and all(same(read[key], written[key]) for key in written)
    if isinstance(written, list):
        return len(read) == len(written) and all(same(a, b) for a, b in zip(read, written, strict=True))
    return bool(read == written)


class Text(str):
    pass


class Level(enum.IntEnum):
    HIGH = 1


def nested(depth: int) -> dict[str, Any]:
    """A dict `depth` levels deep, of dicts and lists in turn."""
    value: Any = {}
    for level in reversed(range(depth - 1)):
        value = [value] if level % 2 else {"a": value}
    assert isinstance(value, dict)
    return value


READ_BACK = [
    *LINES[:3],
    {"a": [1, -0.0, 1e300, 5e-324, 2**64, -(2**80), True, None, "", '\u2028\x00"\\ é 🐈']},
    {"floats": [random.Random(7).uniform(-1e6, 1e6) for _ in range(200)]},
    {"ints": [0, 2**63 - 1, 2**63, 10**40]},
    {"order": {"z": 1, "a": 2, "m": {"y": [], "b": {}}}},
    nested(200),
]
NOT_READ_BACK = {
    "a tuple": {"a": (1, 2)},
    "a key not a string": {"params": {1: "x"}},
    "a date": {"at": datetime.date(2026, 12, 1)},
    "a string of a subclass": {"a": Text("x")},
    "an int of a subclass": {"a": Level.HIGH},
    "a dict of a subclass": {"a": OrderedDict(b=1)},
    "a mapping not a dict": OrderedDict(a=1),
    "a set": {"a": {1}},
    "nested too deep": nested(201),
}


@pytest.mark.parametrize("line", READ_BACK, ids=range(len(READ_BACK)))
def test_a_line_of_jsons_own_values_reads_back_as_itself(line: dict[str, Any]) -> None:
    assert reads_back(line)
    raw = encode_line(line)
    assert same(codec.loads(raw), line) and parse_record(raw) is not None
    assert all(same(codec.loads(json.dumps(x).encode()), x) for x in line.get("floats", []))


@pytest.mark.parametrize("line", NOT_READ_BACK.values(), ids=NOT_READ_BACK.keys())
def test_a_line_of_other_values_is_read_from_its_bytes(line: dict[str, Any]) -> None:
    assert not reads_back(line)
    try:
        raw = encode_line(line)
    except (TypeError, ValueError):
        return  # not written at all
    read = parse_record(raw)
    assert read is None or not same(read, line)


@pytest.mark.parametrize(
    "line",
    [
        {"id": "nan", "cost": math.nan},
        {"id": "surrogate", "text": "cut \ud83d"},
        {"id": "key", "text": "the key sk-test-canary-4f1c9e echoed"},
    ],
    ids=["a number written as text", "a surrogate written as ?", "the key taken out"],
)
def test_the_journal_gives_its_view_no_record_its_bytes_are_not_of(
    line: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "_SECRETS", [])
    store.never_write(KEY)
    journal = store.Journal(tmp_path / "results.jsonl", fsync=False)
    journal.open()
    told: list[tuple[int, bytes, Any]] = []
    journal.tap = lambda *seen: told.append(seen)
    journal.write({"id": "plain", "text": "é"})
    journal.write(line)
    journal.write_bytes(encode_line({"id": "bytes"}))
    journal.close()
    assert [(offset, written) for offset, _, written in told] == [
        (0, {"id": "plain", "text": "é"}),
        (told[1][0], None),
        (told[2][0], None),
    ]


CHAT = "{kind: chat, model: gemini-2.5-flash"
TOOLS = "tools: [{type: function, function: {name: label}}, {type: function, function: {name: rate}}]"
FUNCTIONS = "functions: [{name: label, parameters: {type: object, properties: {label: {type: string}}}}]"
TASKS = [
    f"{CHAT}, id: plain, prompt: 'a café <b>, 🐈', temperature: 0.7, max_tokens: 50}}",
    f"{CHAT}, id: two, prompt: two, n: 2, stop: [x, y], response_format: {{type: json_object}}}}",
    f"{CHAT}, id: streamed, prompt: streamed, stream: true}}",
    f"{CHAT}, id: tools, prompt: tabby cat, {TOOLS}}}",
    f"{CHAT}, id: tools-streamed, prompt: tabby cat, stream: true, {TOOLS}}}",
    f"{CHAT}, id: functions, prompt: tabby cat, {FUNCTIONS}}}",
    "{kind: chat, id: drawn, model: gemini-2.5-flash-image, prompt: draw a dog}",
    "{kind: generate, id: picture, model: gpt-image-1, prompt: a cat, n: 2}",
]


@pytest.mark.parametrize("shape", ANSWER_SHAPES)
def test_every_answer_shape_has_the_same_card_from_its_record_as_from_its_bytes(
    shape: str,
    cli: Callable[..., Outcome],
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """For each line a run writes: where its record reads back, it reads back as itself, and its card
    made from it is the card made from the bytes; the run's page is `maas-batch gallery`'s."""
    seen: list[tuple[bytes, Mapping[str, Any] | None]] = []
    real = Cards.add

    def add(self: Cards, offset: int, raw: bytes, written: Mapping[str, Any] | None = None) -> None:
        seen.append((raw, written))
        real(self, offset, raw, written)

    monkeypatch.setattr(Cards, "add", add)
    manifest = write("tasks:\n" + "".join(f"  - {task}\n" for task in TASKS))
    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY, answers=frozenset({shape}), seed=5)) as sim:
        outcome = cli("run", manifest, "--out", out, *FAST, env=env_for(sim))
    assert outcome.code in (0, 1), outcome.err
    assert len(seen) == len(TASKS)
    from_records = 0
    for raw, written in seen:
        read = parse_record(raw)
        assert read is not None
        if written is not None and reads_back(written):
            from_records += 1
            assert same(read, written)
            assert page_json(line_card(written)) == page_json(line_card(read)) == record_card(read)
    assert from_records >= len(TASKS) - 1  # the line that names the key, if any, aside
    after_run = re.sub(r'"built": ?"[^"]*"', "", (out / "index.html").read_text(encoding="utf-8"))
    assert cli("gallery", out).code == 0
    assert re.sub(r'"built": ?"[^"]*"', "", (out / "index.html").read_text(encoding="utf-8")) == after_run
