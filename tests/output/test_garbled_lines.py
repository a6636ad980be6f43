"""A result line edited by hand or garbled (still JSON, fields of the wrong type) makes no reader of the
directory crash: records.ResultRecord reads what it can, and every report still counts the line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import batch
from batch.simulator import RunningSimulator
from tests.conftest import Outcome, env_for

GARBLED = {
    "id": "a",
    "kind": "chat",
    "status": "succeeded",
    "attempts": "three",
    "files": 5,
    "inputs": "photo.png",
    "cost": "cheap",
    "seconds": "slow",
    "usage": {"total_tokens": "many", "input_tokens": 7},
    "text": "hi",
}
FINE = {
    "id": "b",
    "kind": "generate",
    "status": "failed",
    "attempts": 2,
    "error": {"type": "x", "message": "m"},
}


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    lines = [json.dumps(GARBLED), json.dumps(FINE)]
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize(
    "command",
    [
        ["status", "--json"],
        ["report", "--json"],
        ["export", "--format", "csv"],
        ["export", "--format", "jsonl"],
        ["export", "--format", "openai"],
        ["gallery"],
    ],
)
def test_every_reader_goes_on_past_a_garbled_line(
    cli: Callable[..., Outcome], out: Path, command: list[str]
) -> None:
    done = cli(command[0], out, *command[1:])
    assert done.code == 0, done.err
    assert "Traceback" not in done.err
    if command[0] == "status":
        found = json.loads(done.out)
        assert (found["succeeded"], found["failed"]) == (1, 1)
    if command[:3] == ["export", "--format", "csv"]:
        assert [line.split(",")[0] for line in done.out.splitlines()[1:]] == ["a", "b"]


def test_the_library_reads_a_garbled_line_as_what_it_can(out: Path) -> None:
    first, second = batch.results(out)
    assert (first.id, first.attempts, first.files, first.cost, first.text) == ("a", 0, (), None, "hi")
    assert first.usage == {"input_tokens": 7}
    assert (second.attempts, second.error) == (2, {"type": "x", "message": "m"})


PAST_ANY_FLOAT = int("9" * 400)  # JSON allows it; float() of it raises OverflowError


@pytest.fixture
def huge(tmp_path: Path) -> Path:
    """DIR whose journals hold numbers past any float, as a line edited by hand (or by a script) can."""
    folder = tmp_path / "huge"
    folder.mkdir()
    result = {
        "id": "a",
        "kind": "chat",
        "status": "succeeded",
        "files": [],
        "text": "hi",
        "usage": {"input_tokens": PAST_ANY_FLOAT, "output_tokens": 3, "total_tokens": 5},
        "cost": PAST_ANY_FLOAT,
        "seconds": PAST_ANY_FLOAT,
        "attempts": PAST_ANY_FLOAT,
    }
    ledger = {"task_id": "a", "kind": "chat", "input_tokens": PAST_ANY_FLOAT, "cost": PAST_ANY_FLOAT}
    (folder / "results.jsonl").write_text(json.dumps(result) + "\n")
    (folder / "usage.jsonl").write_text(json.dumps(ledger) + "\n")
    log = [
        {"event": "start", "at": "2026-11-30T07:53:41.476+00:00", "tasks": PAST_ANY_FLOAT},
        {"event": "sent", "request_id": "a/1.1", "task_id": "a", "t": PAST_ANY_FLOAT},
        {"event": "done", "request_id": "a/1.1", "outcome": "answered", "seconds": PAST_ANY_FLOAT},
        {"event": "end", "at": "2026-11-30T07:53:42.476+00:00", "seconds": PAST_ANY_FLOAT},
    ]
    (folder / "runs").mkdir()
    (folder / "runs" / "20261130T075341476179Z-d1edb6.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in log)
    )
    return folder


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["status", "--json"],
        ["report"],
        ["report", "--json"],
        ["export", "--format", "csv"],
        ["export", "--format", "jsonl"],
        ["export", "--format", "openai"],
        ["export", "--format", "sqlite", "--output", "huge.db"],
        ["gallery"],
    ],
)
def test_a_number_past_any_float_makes_no_reader_crash(
    cli: Callable[..., Outcome], huge: Path, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of these ended in an OverflowError's traceback: a cost (or a run's seconds) of 400 digits has
    no float."""
    monkeypatch.chdir(huge.parent)
    done = cli(command[0], huge, *command[1:])
    assert done.code == 0, done.err
    assert "Traceback" not in done.err and "OverflowError" not in done.err + done.out


def test_a_number_past_any_float_is_read_as_no_number(huge: Path) -> None:
    from batch.output.store import read_lines
    from batch.running.records import ResultRecord, UsageRecord

    (result,) = batch.results(huge)
    assert (result.cost, result.attempts) == (None, 0)
    assert result.usage == {"output_tokens": 3, "total_tokens": 5}
    (record,) = (ResultRecord.from_line(line) for line in read_lines(huge / "results.jsonl"))
    assert (record.cost, record.seconds, record.attempts) == (None, None, 0)
    (billed,) = (UsageRecord.from_line(line) for line in read_lines(huge / "usage.jsonl"))
    assert (billed.cost, billed.counts.input) == (None, 0)


def test_a_run_resumes_past_a_number_past_any_float(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], huge: Path
) -> None:
    manifest = write("tasks:\n  - {kind: chat, id: a, model: gemini-2.5-flash, prompt: hi}\n")
    done = cli("run", manifest, "--out", huge, env=env_for(sim))
    assert done.code == 0, done.err
    assert "Traceback" not in done.err and "1 already done" in done.out


def test_status_names_a_result_line_damaged_in_place_and_what_run_does_with_it(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """A line no longer JSON (a quote lost in the middle) was passed by in silence: status showed its
    task pending while `run` read its first bytes, counted it finished and sent nothing."""
    manifest = write(
        "tasks:\n"
        + "".join(f"  - {{kind: chat, id: t{i}, model: gemini-2.5-flash, prompt: q{i}}}\n" for i in range(3))
    )
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    results = out / "results.jsonl"
    lines = results.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"prompt": "', b'"prompt": ', 1)  # t1's line, damaged in place
    lines.append(b'"kind": "chat", "id": "t9"}\n')  # a line whose start is lost: no task a run can read
    results.write_bytes(b"".join(lines))
    found = json.loads(cli("status", out, "--json").out)
    assert (found["damaged"], found["damaged_lines"]) == (
        2,
        [{"line": 2, "task": "t1"}, {"line": 4, "task": None}],
    )
    text = cli("status", out).out
    assert "line 2 (task t1: counted finished by `run`, not sent again)" in text
    assert "line 4 (no task `run` can read in it: if it was a result, it is sent again)" in text
    again = cli("run", manifest, "--out", out, env=env_for(sim))
    assert "0 succeeded, 0 failed, 3 already done" in again.out  # what status said `run` would do
    lines[1] = b""  # deleted: its task is sent again
    results.write_bytes(b"".join(lines[:3]))
    assert json.loads(cli("status", out, "--json").out)["damaged"] == 0
    assert "1 succeeded, 0 failed, 2 already done" in cli("run", manifest, "--out", out, env=env_for(sim)).out


@pytest.mark.parametrize("command", ["status", "report"])
def test_json_of_sums_past_any_float_is_still_json(
    cli: Callable[..., Outcome], huge: Path, command: str
) -> None:
    """Two costs of 1.5e308 sum past any float: `report --json` printed `Infinity`, which no strict JSON
    reader takes. Such a figure is null."""
    ledger = {"task_id": "a", "kind": "chat", "model": "m", "total_tokens": 5, "cost": 1.5e308}
    (huge / "usage.jsonl").write_text(
        json.dumps(ledger) + "\n" + json.dumps({**ledger, "task_id": "b"}) + "\n"
    )
    done = cli(command, huge, "--json")
    assert done.code == 0, done.err

    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} is no JSON")

    found = json.loads(done.out, parse_constant=refuse)
    if command == "report":
        assert found["cost"] is None and found["by_kind"]["chat"]["cost"] is None
