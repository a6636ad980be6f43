"""A manifest, prompt file, CSV or JSONL file that holds no tasks is no error (a night with nothing to do
must not mail a failure from cron), but it is said: a warning on stderr naming the file, exit code as it
was, from `validate` and from `run` alike."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.simulator import RunningSimulator
from tests.conftest import Outcome, checked, env_for

Write = Callable[..., Path]


def test_an_empty_prompts_file_is_warned_of_by_validate_and_run(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Write, tmp_path: Path
) -> None:
    write("# tonight's prompts come here\n\n", "tonight.txt")
    manifest = write("""
        tasks:
          - kind: chat
            model: gemini-2.5-flash
            prompts_file: tonight.txt
    """)
    said = f"WARNING {manifest}:4: tasks[0]: prompts_file: tonight.txt holds no tasks: no prompt"
    validated = cli("validate", manifest, env=env_for(sim))
    assert validated.code == 0
    assert "0 tasks, valid" in validated.out
    assert said in validated.err
    ran = cli("run", manifest, "--out", tmp_path / "out", "--quiet", env=env_for(sim))
    assert ran.code == 0
    assert said in ran.err
    assert sim.state.requests_total == 0


def test_an_empty_jsonl_manifest_is_warned_of_again_on_resume(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Write, tmp_path: Path
) -> None:
    manifest = write("\n", "night.jsonl")
    assert f"WARNING {manifest} holds no tasks" in cli("validate", manifest, env=env_for(sim)).err
    for _ in range(2):  # the second run takes the plan the first remembered
        ran = cli("run", manifest, "--out", tmp_path / "out", env=env_for(sim))
        assert ran.code == 0
        assert f"WARNING {manifest} holds no tasks" in ran.err


@pytest.mark.parametrize(
    ("source", "content", "what"),
    [
        ("csv: rows.csv", "title,sku\n\n", "rows.csv holds no tasks: no row under its header"),
        ("jsonl: rows.jsonl", "\n\n", "rows.jsonl holds no tasks: no record"),
    ],
)
def test_records_that_hold_no_row_are_warned_of_beside_the_other_tasks(
    write: Write, source: str, content: str, what: str
) -> None:
    write(content, source.split(": ")[1])
    manifest = write(f"""
        tasks:
          - kind: chat
            model: gemini-2.5-flash
            prompt: a fox
          - kind: chat
            model: gemini-2.5-flash
            prompt: "{{title}}"
            for_each: {{{source}}}
    """)
    plan = checked(manifest).plan
    assert plan.ok and plan.total == 1
    assert [str(warning) for warning in plan.warnings] == [f"{manifest}:8: tasks[1]: for_each: {what}"]


def test_the_library_says_so_of_tasks_built_in_code(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import batch

    # as a program that set up no logging of its own has it (a command run in this process set some up)
    monkeypatch.setattr(logging.getLogger("batch"), "handlers", [])
    monkeypatch.setattr(logging.getLogger("batch"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="batch"):
        checked_tasks = batch.validate(batch.from_tasks([], name="tonight"), endpoint="ep")
    assert checked_tasks.plan.total == 0
    assert [record.getMessage() for record in caplog.records] == ["no tasks were given (tonight)"]
