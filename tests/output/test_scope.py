"""Reports speak of the manifest: `status` and `report` count the tasks of the manifest the last run
used (or --manifest); lines of tasks no longer in it are orphaned, counted apart."""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.output.scope import Scope, scope_of
from batch.running.idset import digest
from tests.conftest import Outcome
from tests.output.conftest import SECOND


def test_status_counts_the_last_runs_manifest_and_agrees_with_its_exit_code(
    cli: Callable[..., Outcome], edited: Path, tmp_path: Path
) -> None:
    found = json.loads(cli("status", edited, "--json").out)
    assert (found["succeeded"], found["failed"], found["pending"], found["tasks"]) == (4, 0, 0, 4)
    assert (found["orphaned"], found["orphaned_failed"]) == (2, 1)
    assert found["last_run"]["exit_code"] == 0 and found["manifest"].endswith("second.yaml")
    text = cli("status", edited).out
    assert "4 succeeded, 0 failed, 0 pending (of 4)" in text
    assert "orphaned: 2 result lines of tasks no longer in the manifest, 1 of them failed" in text
    # counted in, when asked
    every = json.loads(cli("status", edited, "--json", "--include-orphaned").out)
    assert (every["succeeded"], every["failed"], every["pending"]) == (5, 1, 0)
    # another manifest's view of the same DIR: the first one's three tasks, the second's lines orphaned
    first = json.loads(cli("status", edited, "--json", "--manifest", tmp_path / "first.yaml").out)
    assert (first["succeeded"], first["failed"], first["pending"], first["tasks"]) == (2, 1, 0, 3)
    assert first["orphaned"] == 3


def test_report_leaves_orphaned_lines_out_of_its_totals(cli: Callable[..., Outcome], edited: Path) -> None:
    found = json.loads(cli("report", edited, "--json").out)
    every = json.loads(cli("report", edited, "--json", "--include-orphaned").out)
    assert (found["tasks"], found["succeeded"], found["failed"], found["pending"]) == (4, 4, 0, 0)
    assert found["failures"] == {} and every["failures"]["moderation_blocked"]["count"] == 1
    assert (found["orphaned"], found["orphaned_answers"]) == (2, 1)  # the refused one was not billed
    assert found["tokens"] + found["orphaned_tokens"] == every["tokens"]
    assert found["cost"] + found["orphaned_cost"] == pytest.approx(every["cost"])
    assert every["tasks"] == 6 and every["failed"] == 1
    assert "orphaned: 2 result lines" in cli("report", edited).out


def test_a_manifest_that_grew_has_pending_tasks(
    cli: Callable[..., Outcome], edited: Path, write: Callable[..., Path]
) -> None:
    grown = write(SECOND + "      - {kind: generate, prompt: a new one}\n", "grown.yaml")
    found = json.loads(cli("status", edited, "--json", "--manifest", grown).out)
    assert (found["succeeded"], found["pending"], found["tasks"]) == (4, 1, 5)
    # a --manifest that is not valid is refused as `validate` refuses it
    broken = write("tasks:\n  - {kind: paint, prompt: x}\n", "broken.yaml")
    assert cli("status", edited, "--manifest", broken).code == 65


def test_without_a_known_manifest_every_line_counts(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text(
        json.dumps({"id": "a", "kind": "chat", "status": "failed"}) + "\n"
    )
    scope = scope_of(tmp_path)
    assert not scope.known and scope.current("a") and scope.total is None


def test_a_scope_is_its_digests() -> None:
    scope = Scope(order=array("Q", [digest("a"), digest("b")]))
    assert scope.current("a") and scope.current("b") and not scope.current("c")
    assert not scope.counted("c") and Scope(order=scope.order, include_orphaned=True).counted("c")
    assert scope.total == 2


def test_status_and_gallery_refuse_a_folder_that_is_not_a_run_directory(
    cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.png").write_bytes(b"")
    for command in ("status", "report", "export", "gallery"):
        outcome = cli(command, folder)
        assert outcome.code == 64 and "is not a run directory" in outcome.err, command
    assert sorted(p.name for p in folder.iterdir()) == ["cat.png"]  # no index.html, no thumbs/


def test_a_later_run_of_another_manifest_makes_the_remembered_plan_stale(edited: Path) -> None:
    assert scope_of(edited).known and scope_of(edited).total == 4
    # a run of a manifest built in code leaves no plan: its start line says how many tasks it had
    later = edited / "runs" / "99999999T000000000000Z-abcdef.jsonl"
    later.write_text(json.dumps({"event": "start", "manifest": "<tasks>", "tasks": 7}) + "\n")
    scope = scope_of(edited)
    assert not scope.known and scope.total == 7 and scope.current("anything")
