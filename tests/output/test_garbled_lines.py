"""A result line edited by hand or garbled (still JSON, fields of the wrong type) makes no reader of the
directory crash: records.ResultRecord reads what it can, and every report still counts the line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import batch
from tests.conftest import Outcome

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
