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
    task pending while `run` read its first bytes, counted it finished and sent nothing. status now says,
    for each, what `run` reads in it, and the next run does as it said."""
    manifest = write(
        "tasks:\n"
        + "".join(f"  - {{kind: chat, id: t{i}, model: gemini-2.5-flash, prompt: q{i}}}\n" for i in range(3))
    )
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    results = out / "results.jsonl"
    t0, t1, t2 = sorted(results.read_bytes().splitlines(keepends=True))
    damaged = [
        t0,
        t1.replace(b'"prompt": "', b'"prompt": ', 1),  # t1's only line, damaged after its id
        t2.replace(b'"t2"', b'"t2', 1),  # its id's closing quote lost: it reads as another id
        b'"kind": "chat", "id": "t9"}\n',  # its start lost: no id can be read
        t0.replace(b'"text": "', b'"text": ', 1),  # a damaged copy of a task with a whole line
        t0.replace(b'"t0"', b'"zz9"', 1),  # a whole line of no task of the manifest (orphaned)
        t0.replace(b'"t0"', b'"zz9"', 1).replace(b'"text": "', b'"text": ', 1),  # and a damaged one
    ]
    results.write_bytes(b"".join(damaged))
    found = json.loads(cli("status", out, "--json").out)
    assert found["damaged"] == 5
    assert [(line["line"], line["reads_as"], line["run_counts_it"]) for line in found["damaged_lines"]] == [
        (2, "a finished task", True),
        (3, "no task of the manifest", False),
        (4, "no task", False),
        (5, "a task with a whole line", False),
        (7, "no task of the manifest", False),  # not "a task with a whole line": zz9 is none
    ]
    assert found["damaged_lines"][0]["task"] == "t1" and found["damaged_lines"][3]["task"] == "t0"
    text = cli("status", out).out
    assert "line 2 (task t1: `run` counts it finished and does not send it again)" in text
    assert "line 3 (it reads as 't2, ', no task of the manifest: `run` counts no task finished by it" in text
    assert "line 4 (no task can be read in it: if it was a result, `run` sends its task again)" in text
    assert "line 5 (task t0, whose whole line counts)" in text
    again = cli("run", manifest, "--out", out, env=env_for(sim))
    assert "1 succeeded, 0 failed, 2 already done" in again.out  # t2 sent again; t0 and t1 not, as said
    assert [json.loads(line)["id"] for line in results.read_text().splitlines()[-1:]] == ["t2"]


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


def test_status_of_a_damaged_line_where_no_manifest_is_known(cli: Callable[..., Outcome], out: Path) -> None:
    """A DIR written by a manifest built in code has no remembered manifest: whether the id a damaged line
    reads as is a task cannot be known, and status says so."""
    with (out / "results.jsonl").open("ab") as handle:
        handle.write(b'{"id": "c", "kind": "chat", "status": "succ\n')
    found = json.loads(cli("status", out, "--json").out)
    assert found["damaged_lines"] == [
        {"line": 3, "task": "c", "reads_as": "a task, if the manifest has it", "run_counts_it": None}
    ]
    assert "line 3 (it reads as task c: `run` counts it finished, if it is a task)" in cli("status", out).out
