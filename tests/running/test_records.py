"""The line formats of DIR (batch.running.records): real lines read back and written again unchanged,
key for key and in order; the fast scan of results.jsonl agrees with from_line. No server, no disk."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType, SimpleNamespace

import pytest

from batch.errors import BrokenAnswerError
from batch.kind import Answer
from batch.manifest.tasks import TaskSpec
from batch.running import bookkeeping, records
from batch.running.context import TaskState
from batch.running.prices import PriceTable
from batch.running.records import AttemptRecord, ErrorInfo, ResultRecord, UsageRecord, finished_entry
from jobs import registry

RESULT_LINES = [
    # a chat answer with the kind's own fields, a custom id, meta and a request id
    '{"id": "row-3", "kind": "chat", "status": "succeeded", "model": "gemini-2.5-flash", "custom_id": "c-3", '
    '"prompt": "hi", "params": {"temperature": 0.2}, "files": [], "text": "hello", "finish_reason": "stop", '
    '"texts": ["hello", "hey"], "request_id": "chatcmpl-9", "usage": {"input_tokens": 3, "output_tokens": 5, '
    '"total_tokens": 8}, "cost": 1.2e-05, "attempts": 1, "meta": {"row": 3}, "endpoint": "/chat/completions", '
    '"seconds": 0.21, "finished_at": "2025-01-02T03:04:05.678+00:00"}',
    # an image edit with inputs, several files and a missing image
    '{"id": "fox", "kind": "edit", "status": "succeeded", "model": "gpt-image-1", "prompt": "a fox", '
    '"params": {"size": "1024x1024", "n": 3}, "inputs": ["/data/in/fox.png"], "files": ["images/fox~1.png", '
    '"images/fox~2.png"], "images_missing": 1, "usage": {"input_tokens": 300, "output_tokens": 4000, '
    '"total_tokens": 4300}, "cost": 0.1712, "attempts": 2, "endpoint": "/images/edits", "seconds": 9.5, '
    '"finished_at": "2025-01-02T03:04:05.678+00:00"}',
    # a paid answer that could not be used: failed, kept in answers/, maybe billed twice before
    '{"id": "owl", "kind": "generate", "status": "failed", "model": "gpt-image-1", "prompt": "an owl", '
    '"params": {}, "files": [], "answer_file": "answers/owl.1a2b3c.1.json", "usage": {"input_tokens": 10, '
    '"output_tokens": 0, "total_tokens": 10}, "cost": null, "attempts": 3, "maybe_billed": 2, "error": '
    '{"type": "unreadable_answer", "status": null, "message": "the answer could not be read (after 3 attempts)"}, '
    '"endpoint": "/images/generations", "seconds": 1.0, "finished_at": "2025-01-02T03:04:05.678+00:00"}',
    # refused before anything was billed
    '{"id": "x", "kind": "generate", "status": "failed", "model": "m", "prompt": "p", "params": {}, "files": [], '
    '"usage": null, "cost": null, "attempts": 1, "error": {"type": "invalid_request_error", "status": 400, '
    '"message": "bad size"}, "endpoint": "/images/generations", "seconds": 0.01, "finished_at": "t"}',
]

USAGE_LINES = [
    '{"task_id": "fox", "request_id": "fox/1a2b3c.1", "server_request_id": "req_1", "kind": "edit", '
    '"model": "gpt-image-1", "endpoint": "/images/edits", "input_tokens": 300, "output_tokens": 4000, '
    '"total_tokens": 4300, "image_input_tokens": 250, "cached_input_tokens": 0, "reasoning_tokens": 0, '
    '"cost": 0.1712, "usage": {"input_tokens": 300, "output_tokens": 4000, "total_tokens": 4300}, '
    '"at": "2025-01-02T03:04:05.678+00:00"}',
    '{"task_id": "owl", "request_id": "owl/1a2b3c.2", "server_request_id": null, "kind": "chat", "model": "m", '
    '"endpoint": "/chat/completions", "input_tokens": 7, "output_tokens": 100, "total_tokens": 107, '
    '"image_input_tokens": 0, "cached_input_tokens": 2, "reasoning_tokens": 40, "cost": null, "usage": null, '
    '"at": "2025-01-02T03:04:05.678+00:00", "estimated": true}',
]

ATTEMPT_LINES = [
    '{"event": "sent", "request_id": "fox/1a2b3c.1", "task_id": "fox", "t": 1735787045.678}',
    '{"event": "done", "request_id": "fox/1a2b3c.1", "outcome": "answered", "status": 200, "seconds": 1.2}',
    '{"event": "done", "request_id": "owl/1a2b3c.1", "outcome": "failed", "maybe_billed": true, '
    '"error": "the connection broke", "seconds": 30.0}',
    '{"event": "done", "request_id": "owl/9z.1", "task_id": "owl", "outcome": "interrupted", "maybe_billed": true}',
]


def _keys_and_values(text: str) -> list[tuple[str, object]]:
    return list(json.loads(text).items())  # ordered: the order of the keys is part of the format


@pytest.mark.parametrize("text", RESULT_LINES)
def test_a_result_line_reads_back_and_writes_again_unchanged(text: str) -> None:
    record = ResultRecord.from_line(json.loads(text))
    assert list(record.to_line().items()) == _keys_and_values(text)
    assert record.failed == (json.loads(text)["status"] == "failed")


@pytest.mark.parametrize(
    "text", [*RESULT_LINES, '{"id": 7}', "{}", '{"id": "x", "usage": [1], "files": "a"}']
)
def test_a_result_line_read_back_is_the_record_its_constructor_makes(text: str) -> None:
    """from_line builds its record without the dataclass's __init__ (7 us of a line's reading): every
    field must be there, as the constructor would set it, and the record stays frozen."""
    record = ResultRecord.from_line(json.loads(text))
    names = [field.name for field in dataclasses.fields(ResultRecord)]
    assert sorted(vars(record)) == sorted(names)  # none missing, none misspelt
    again = ResultRecord(**{name: getattr(record, name) for name in names})
    assert again == record and repr(again) == repr(record) and hash(again.error) == hash(record.error)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.status = "failed"  # type: ignore[misc]


@pytest.mark.parametrize("text", USAGE_LINES)
def test_a_ledger_line_reads_back_and_writes_again_unchanged(text: str) -> None:
    assert list(UsageRecord.from_line(json.loads(text)).to_line().items()) == _keys_and_values(text)


@pytest.mark.parametrize("text", ATTEMPT_LINES)
def test_an_attempt_line_reads_back_and_writes_again_unchanged(text: str) -> None:
    assert list(AttemptRecord.from_line(json.loads(text)).to_line().items()) == _keys_and_values(text)


def test_a_result_line_keeps_the_kinds_fields_where_they_were() -> None:
    record = ResultRecord.from_line(json.loads(RESULT_LINES[0]))
    assert dict(record.extra) == {"finish_reason": "stop", "texts": ["hello", "hey"]}
    assert record.usage == {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}
    assert record.meta == {"row": 3} and record.custom_id == "c-3"


def test_odd_hand_written_lines_read_as_the_readers_always_read_them() -> None:
    record = ResultRecord.from_line(
        {"status": "failed", "id": "hand-written", "attempts": None, "error": "x"}
    )
    assert (record.id, record.failed, record.attempts, record.error, record.files) == (
        "hand-written",
        True,
        0,
        None,
        (),
    )
    usage = UsageRecord.from_line({"task_id": "a", "total_tokens": "12", "cost": True})
    assert (usage.counts.total, usage.counts.input, usage.cost, usage.estimated) == (12, 0, None, False)


@pytest.mark.parametrize(
    "raw",
    [line.encode() + b"\n" for line in RESULT_LINES]
    + [
        b'{"status": "failed", "id": "hand-written"}\n',
        b'{"id": "row-3", "kind": "chat", "status": "succeeded", "meta": {"status": "failed"}}\n',
        b'{"id": "row-4", "kind": "chat", "status": "failed", "meta": {"status": "succeeded"}}\n',
        b'{"id": "caf\xc3\xa9", "kind": "chat", "status": "failed"}\n',
        # edited by hand: the id as an escape, or with an escaped quote; the scan must not read them raw
        b'{"id": "\\u0061", "kind": "chat", "status": "succeeded"}\n',
        b'{"id": "a\\"b", "kind": "chat", "status": "failed"}\n',
    ],
)
def test_the_fast_scan_agrees_with_from_line(raw: bytes) -> None:
    record = ResultRecord.from_line(json.loads(raw))
    assert finished_entry(raw) == (record.id, record.failed)


def test_the_fast_scan_skips_what_is_not_a_result() -> None:
    assert finished_entry(b"garbage\n") is None
    assert finished_entry(b'{"id": "a\xff", "kind": "chat", "status": "succeeded"}\n') is None  # not UTF-8
    assert finished_entry(b'{"id": 7, "status": "failed"}\n') is None
    assert finished_entry(b"[1, 2]\n") is None


def test_a_line_is_priced_again_as_the_run_priced_it_cached_input_apart() -> None:
    from batch.running.prices import Price

    line = {
        "task_id": "t",
        "request_id": "t/a.1",
        "kind": "chat",
        "model": "m",
        "endpoint": "ep",
        "input_tokens": 2000,
        "output_tokens": 100,
        "total_tokens": 2100,
        "image_input_tokens": 0,
        "cached_input_tokens": 1500,
        "reasoning_tokens": 0,
        "cost": 0.001875,  # 500 x $1 + 1,500 cached x $0.25 + 100 x $10, per million
        "usage": None,
        "at": "x",
    }
    price = Price(text_input=1.0, image_input=1.0, output=10.0, cached_input=0.25)
    assert price.cost(UsageRecord.from_line(line).repriced_counts) == pytest.approx(line["cost"])


def test_a_result_line_read_keeps_every_field_and_reads_the_choices() -> None:
    line = json.loads(RESULT_LINES[0]) | {"a_field_added_later": [1], "reasoning": "because"}
    record = ResultRecord.from_line(line)
    assert record.raw == line, "a reader that passes the line on whole has all of it"
    assert (record.texts, record.finish_reasons, record.reasoning) == (["hello", "hey"], ["stop"], "because")
    assert record.tool_calls_per_choice == []
    older = ResultRecord.from_line({"id": "a", "text": "x", "tool_calls": [[{"id": "c"}], []]})
    assert (older.texts, older.finish_reasons, older.tool_calls_per_choice) == (
        ["x"],
        [None],
        [[{"id": "c"}], []],
    )
    newer = ResultRecord.from_line({"id": "b", "tool_calls": [{"id": "c"}], "reasoning": 3})
    assert (newer.tool_calls_per_choice, newer.reasoning) == ([[{"id": "c"}]], None)


def test_a_runs_start_and_end_lines_read_back_unchanged() -> None:
    from batch.running.records import RunRecord, attempt_log_line

    start = '{"event": "start", "at": "2025-01-02T03:04:05.678+00:00", "pid": 7, "manifest": "m.yaml", "tasks": 3}'
    end = '{"event": "end", "at": "t", "interrupted": true, "maybe_billed": 2}'
    for text in (start, end):
        record = attempt_log_line(json.loads(text))
        assert isinstance(record, RunRecord) and list(record.to_line().items()) == _keys_and_values(text)
    assert isinstance(attempt_log_line(json.loads(ATTEMPT_LINES[0])), AttemptRecord)
    assert attempt_log_line({"event": "odd"}) is None


def test_now_is_an_iso_stamp_in_utc_to_the_millisecond_as_datetime_writes_it() -> None:
    from datetime import UTC, datetime, timedelta

    from batch.running.records import now

    before = datetime.now(UTC)
    stamps = [now() for _ in range(2000)]
    after = datetime.now(UTC)
    for stamp in (stamps[0], stamps[-1]):
        assert len(stamp) == len("2025-01-02T03:04:05.678+00:00") and stamp.endswith("+00:00")
        parsed = datetime.fromisoformat(stamp)
        assert before - timedelta(milliseconds=1) <= parsed <= after
        assert parsed.isoformat(timespec="milliseconds") == stamp
    assert stamps == sorted(stamps)


def test_a_lines_usage_keeps_its_numbers_only_and_is_a_copy() -> None:
    """A count that is not a number (a bool, a string, an infinity) is dropped; the usual usage, all
    counts, is taken whole but not shared with the line it came from."""
    mixed = {"input_tokens": 3, "flag": True, "cost": 0.5, "note": "n", "far": float("inf"), 7: 2}
    assert ResultRecord.from_line({"id": "x", "usage": mixed}).usage == {
        "input_tokens": 3,
        "cost": 0.5,
        "7": 2,
    }
    assert ResultRecord.from_line({"id": "x", "usage": {"input_tokens": 3, "flag": True}}).usage == {
        "input_tokens": 3
    }
    usual = {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}
    line = {"id": "x", "usage": usual}
    record = ResultRecord.from_line(line)
    assert record.usage == usual and record.usage is not usual


@pytest.mark.parametrize("failed", [False, True])
def test_a_tasks_result_line_is_the_one_its_records_constructor_makes(
    failed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bookkeeping.result_line builds its record without the dataclass's __init__ (7 us a task): every
    field must be there, as the constructor would set it, and the line the same."""
    made: list[tuple[type, dict[str, object]]] = []

    def spy(cls: type, fields: dict[str, object]) -> object:
        made.append((cls, dict(fields)))
        return records.made(cls, fields)

    monkeypatch.setattr(bookkeeping, "made", spy)
    spec = TaskSpec(
        "row-3",
        "chat",
        "ep-chat",
        {"model": "gemini-2.5-flash", "prompt": "hi", "temperature": 0.2},
        "tasks.jsonl",
        4,
        "line 4",
        meta={"row": 3},
        custom_id="c-3",
        request="0123456789abcdef",
    )
    state = TaskState(attempts=2, maybe_billed=1, carried=1, cost=0.25, input_tokens=3, output_tokens=5)
    state.total_tokens, state.billed, state.server_request_id = 8, True, "chatcmpl-9"
    state.answer = Answer(text="hello", extra={"finish_reason": "stop"})
    context = SimpleNamespace(registry=registry())
    error = BrokenAnswerError("no choices", error_type="no_choices") if failed else None
    line = bookkeeping.result_line(context, spec, state, 0.0, error)  # type: ignore[arg-type]
    [(cls, fields)] = made
    assert cls is ResultRecord
    names = [field.name for field in dataclasses.fields(ResultRecord)]
    assert sorted(fields) == sorted(names)  # none missing, none misspelt
    built = ResultRecord(**fields)  # type: ignore[arg-type]
    assert line == built.to_line() and list(line) == list(built.to_line())
    assert line["status"] == ("failed" if failed else "succeeded") and line["maybe_billed"] == 2
    assert json.dumps(line["usage"]) == '{"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}'


@pytest.mark.parametrize("usage", [{"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}, None])
def test_a_ledger_line_is_the_one_its_records_constructor_makes(
    usage: dict[str, int] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bookkeeping.ledger_entry builds its record without the dataclass's __init__, as result_line does:
    every field must be there, as the constructor would set it, and the line the same."""
    made: list[tuple[type, dict[str, object]]] = []

    def spy(cls: type, fields: dict[str, object]) -> object:
        made.append((cls, dict(fields)))
        return records.made(cls, fields)

    monkeypatch.setattr(bookkeeping, "made", spy)
    spec = TaskSpec(
        "a", "chat", "ep-chat", {"model": "gemini-2.5-flash", "prompt": "hi"}, "t.jsonl", 1, "line 1"
    )
    state = TaskState(server_request_id="chatcmpl-9")
    context = SimpleNamespace(settings=SimpleNamespace(prices=PriceTable()))
    kind = registry()["chat"]
    entry = bookkeeping.ledger_entry(context, spec, kind, "a/1a2b3c.1", usage, state)  # type: ignore[arg-type]
    [(cls, fields)] = made
    assert cls is UsageRecord
    names = [field.name for field in dataclasses.fields(UsageRecord)]
    assert sorted(fields) == sorted(names)  # none missing, none misspelt
    built = UsageRecord(**fields)  # type: ignore[arg-type]
    assert entry.line == built.to_line() and list(entry.line) == list(built.to_line())
    assert entry.line.get("estimated", False) is (usage is None)


def _plain_int(value: object) -> int:
    """records._int as it read every value before its fast path for the usual count."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if _plain_number(value) is not None else 0
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str):
        try:
            return _plain_int(int(value.strip()))
        except ValueError:
            return 0
    return 0


def _plain_number(value: object) -> float | None:
    """records.number as it read every value before its fast path for a float."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return value if math.isfinite(value) else None
    except OverflowError:
        return None


ODD_VALUES = [
    *(0, 7, -3, 2**63 - 1, 2**63, -(2**63), 10**400, True, False),
    *(1.5, -0.0, math.nan, math.inf, -math.inf, 1e308),
    *("12", " 7 ", "x", "", "1.5", None, [], ["a", 3], ("a",), {}, {"a": 1}),
    *(MappingProxyType({"a": 1}), OrderedDict(a=1), {1: 2}, {"a": True}, {"a": 2**64}, {"a": 1.5}),
]


@pytest.mark.parametrize("value", ODD_VALUES, ids=lambda value: repr(value)[:24])
def test_a_lines_fields_read_with_the_fast_paths_as_before(value: object) -> None:
    """The reading of a result line's counts, numbers, lists and mappings takes the usual values (a
    plain int, a float, a dict, None, an empty list) at once: every value reads as it always did."""
    assert type(records._int(value)) is type(_plain_int(value)) and records._int(value) == _plain_int(value)
    assert repr(records.number(value)) == repr(_plain_number(value))
    plain_list = tuple(str(item) for item in value) if isinstance(value, list | tuple) else ()
    assert records._strings(value) == plain_list
    is_mapping = isinstance(value, Mapping)
    assert records._mapping(value) == (value if is_mapping else {})
    assert (records._mapping(value) is value) == is_mapping
    if is_mapping:
        plain = {str(key): item for key, item in value.items() if _plain_number(item) is not None}
        counts = records._counts(value)
        assert counts == plain and list(counts) == list(plain) and counts is not value
    line = {"id": "a", "usage": value, "meta": value, "error": value, "attempts": value, "cost": value}
    record = ResultRecord.from_line(line)
    assert record.meta == (value if is_mapping else None)
    assert (record.usage is None) == (not is_mapping)
    assert record.error == (ErrorInfo.from_line(dict(value)) if is_mapping else None)
