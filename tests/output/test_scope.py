"""Reports speak of the manifest: `status` and `report` count the tasks of the manifest the last run
used (or --manifest); lines of tasks no longer in it are orphaned, counted apart."""

from __future__ import annotations

import json
import os
import re
import tracemalloc
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from batch.manifest import plancache
from batch.output import gallery
from batch.output.scope import Scope, entries, scope_of
from batch.running.idset import digest
from batch.running.order import Order
from batch.simulator import RunningSimulator
from tests.conftest import Outcome, env_for
from tests.output.conftest import FIRST, SECOND
from tests.output.test_gallery import page_data


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
    # the orphaned lines in the total too, as `report` counts them: "5 succeeded, 1 failed (of 4)" did not add up
    assert (every["succeeded"], every["failed"], every["pending"], every["tasks"]) == (5, 1, 0, 6)
    assert "5 succeeded, 1 failed, 0 pending (of 6)" in cli("status", edited, "--include-orphaned").out
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


def test_a_task_with_two_result_lines_counts_once_as_its_last_line_says(
    cli: Callable[..., Outcome], edited: Path
) -> None:
    """Two runs of one store, or a line copied by hand: `export`, the page and a resume take a task's
    last line; status and report counted every line (5 succeeded of 4, a pending task hidden)."""
    results = edited / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    by_prompt = {json.loads(line)["prompt"]: line for line in lines}
    lake, fine, hello = by_prompt["a lake"], by_prompt["something fine"], by_prompt["hello"]
    failed = json.loads(lake) | {"status": "failed", "error": {"type": "x", "message": "m"}}
    failed_lake = json.dumps(failed) + "\n"

    def counts(command: str) -> tuple[int, int, int]:
        found = json.loads(cli(command, edited, "--json").out)
        return found["succeeded"], found["failed"], found["pending"]

    results.write_text(failed_lake + "".join(lines) + hello)  # the lake failed, then succeeded; hello twice
    assert counts("status") == counts("report") == (4, 0, 0)
    assert json.loads(cli("report", edited, "--json").out)["failures"] == {}
    results.write_text("".join(lines) + failed_lake)  # the lake's last line failed
    assert counts("status") == counts("report") == (3, 1, 0)
    results.write_text("".join(line for line in lines if line != fine) + hello)  # a copy hides no task
    assert counts("status") == counts("report") == (3, 0, 1)
    assert "4 tasks (3 succeeded, 0 failed, 1 pending)" in cli("report", edited).out


def test_a_manifest_that_grew_has_pending_tasks(
    cli: Callable[..., Outcome], edited: Path, write: Callable[..., Path]
) -> None:
    grown = write(SECOND + "      - {kind: generate, prompt: a new one}\n", "grown.yaml")
    found = json.loads(cli("status", edited, "--json", "--manifest", grown).out)
    assert (found["succeeded"], found["pending"], found["tasks"]) == (4, 1, 5)
    # a --manifest that is not valid is refused as `validate` refuses it
    broken = write("tasks:\n  - {kind: paint, prompt: x}\n", "broken.yaml")
    assert cli("status", edited, "--manifest", broken).code == 65


def test_a_copy_of_the_last_runs_manifest_is_read_with_its_set_values(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """`--manifest` of a file of the same bytes as the one the last run checked (a copy, the same manifest
    elsewhere) is that manifest: the run's --set applies. It was read without it, and every task pending."""
    manifest = write("tasks:\n  - {kind: generate, prompt: a fox}\n  - {kind: generate, prompt: an owl}\n")
    copy = write(manifest.read_text(), "copy.yaml")
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, "--set", "quality=high", env=env_for(sim)).code == 0
    for named in (manifest, copy):
        found = json.loads(cli("status", out, "--json", "--manifest", named).out)
        assert (found["succeeded"], found["pending"], found["orphaned"]) == (2, 0, 0), named
    other = write(manifest.read_text() + "  - {kind: generate, prompt: a cat}\n", "other.yaml")
    found = json.loads(cli("status", out, "--json", "--manifest", other).out)
    assert found["pending"] == 3  # another manifest: without the run's --set, as before
    fifo = tmp_path / "manifest.fifo"  # its bytes were hashed (for ever) before the check refused it
    os.mkfifo(fifo)
    assert cli("status", out, "--manifest", fifo).code == 65


def test_a_run_and_its_dry_run_say_that_results_of_tasks_no_longer_in_the_manifest_are_there(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """A setting changed (here --set, the same for the endpoint): every task is a new one, and bought
    again, with nothing said but '0 already finished'. The run warns before it sends; --dry-run too."""
    manifest = write("tasks:\n  - {kind: generate, prompt: a fox}\n  - {kind: generate, prompt: an owl}\n")
    out = tmp_path / "out"
    first = cli("run", manifest, "--out", out, env=env_for(sim))
    assert first.code == 0 and "no longer has" not in first.err
    said = "results.jsonl holds 2 result line(s) of tasks this manifest no longer has"
    dry = cli("run", manifest, "--out", out, "--set", "quality=high", "--dry-run", env=env_for(sim))
    assert dry.code == 0 and f"2 result line(s) in {out} are of tasks this manifest no longer has" in dry.out
    again = cli("run", manifest, "--out", out, "--set", "quality=high", "-q", env=env_for(sim))
    assert again.code == 0 and said in again.err  # a warning: --quiet shows it
    barred = cli("run", manifest, "--out", out, "--set", "quality=low", "--progress", env=env_for(sim))
    assert barred.code == 0 and "holds 4 result line(s) of tasks this manifest no longer has" in barred.err
    assert "no longer has" not in cli("run", manifest, "--out", out, env=env_for(sim)).err  # none to send


def test_tasks_that_cannot_be_listed_are_said_once_however_many_passes_ask(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The page asks a scope for its tasks twice (its pictures, then its cards): a manifest edited into
    an invalid one during the run was said twice at the run's end."""
    broken = tmp_path / "m.yaml"
    broken.write_text("tasks:\n  - {kind: paint, prompt: x}\n")
    order = Order()
    order.append(digest("a"))
    scope = Scope(manifest="m.yaml", order=order, manifest_path=broken)
    with caplog.at_level("WARNING", logger="batch"):
        assert scope.tasks() is None and scope.tasks() is None
    assert [r.getMessage() for r in caplog.records].count(
        next(r.getMessage() for r in caplog.records if "cannot list the tasks" in r.getMessage())
    ) == 1


def test_without_a_known_manifest_every_line_counts(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text(
        json.dumps({"id": "a", "kind": "chat", "status": "failed"}) + "\n"
    )
    scope = scope_of(tmp_path)
    assert not scope.known and scope.current("a") and scope.total is None


def test_a_scope_is_its_digests() -> None:
    scope = Scope(order=Order([digest("a"), digest("b")]))
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


def _result(task_id: str, text: str = "done") -> str:
    return json.dumps({"id": task_id, "kind": "chat", "status": "succeeded", "text": text}) + "\n"


def test_entries_come_in_manifest_order_the_last_line_of_a_task_then_the_orphaned_in_file_order(
    tmp_path: Path,
) -> None:
    lines = [_result("x", "old"), _result("y"), _result("a", "old"), _result("x", "new"), _result("b")]
    (tmp_path / "results.jsonl").write_text("".join(lines) + _result("a", "new") + "not json\n")
    order = Order([digest("b"), digest("a"), digest("c")])  # c: pending, its tasks not known
    found = [
        (e.id, e.record.text if e.record else None, e.orphaned) for e in entries(tmp_path, Scope(order=order))
    ]
    assert found == [("b", "done", False), ("a", "new", False)]
    every = Scope(order=order, include_orphaned=True)
    found = [(e.id, e.record.text if e.record else None, e.orphaned) for e in entries(tmp_path, every)]
    assert found[2:] == [("y", "done", True), ("x", "new", True)]  # by where each one's last line is


def test_a_task_whose_last_line_is_damaged_is_read_from_its_last_whole_one(tmp_path: Path) -> None:
    damaged = '{"id": "a", "kind": "chat", "status": "succeeded", "te\x00\x00 cut by a crash}\n'
    (tmp_path / "results.jsonl").write_text(_result("a", "kept") + _result("b") + damaged)
    order = Order([digest("a"), digest("b")])
    found = [(e.id, e.record.text if e.record else None) for e in entries(tmp_path, Scope(order=order))]
    assert found == [("a", "kept"), ("b", "done")]  # the page and export show what the checkpoint counts


def test_entries_hold_a_few_bytes_a_result_line_not_a_dict_entry(tmp_path: Path) -> None:
    """A run of a million tasks writes its page through entries(): a dict of offsets was ~120 bytes a
    line there (120 MB); idset.LineOffsets holds 12."""
    count = 20_000
    with (tmp_path / "results.jsonl").open("w") as results:
        for i in range(count):
            results.write(_result(f"t{i}"))
    scope = Scope(order=Order([digest(f"t{i}") for i in range(count)]))
    tracemalloc.start()
    try:
        seen = sum(1 for _ in entries(tmp_path, scope))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == count
    assert peak < 40 * count, f"{peak / count:.0f} bytes a line"


def test_a_scopes_digests_are_those_dir_remembered_and_a_manifests_its_own(
    edited: Path, tmp_path: Path
) -> None:
    remembered = scope_of(edited)
    assert remembered.order is not None and len(remembered.order) == 4
    # the last run's manifest checked again (--manifest walks it) gives the digests DIR remembered
    assert scope_of(edited, tmp_path / "second.yaml").order == remembered.order
    assert scope_of(edited, tmp_path / "first.yaml").order != remembered.order


def test_a_scope_reads_dirs_digests_a_window_at_a_time(tmp_path: Path) -> None:
    """DIR/.cache/plan.ids is read into the scope's own order a window at a time: no copy of it is held
    (8 MB for a million tasks), so that a run's page need not be handed the run's own."""
    count = 400_000  # 3.2 MB of digests
    order = Order(digest(f"t{i}") for i in range(count))
    folder = tmp_path / plancache.FOLDER
    folder.mkdir()
    (folder / plancache.IDS).write_bytes(order.tobytes())
    document = {"key": {"manifest": str(tmp_path / "job.yaml"), "settings": {}}, "total": count}
    (folder / plancache.PLAN).write_text(json.dumps(document))
    tracemalloc.start()
    try:
        scope = scope_of(tmp_path)
        assert scope.order == order
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"{peak / count:.1f} bytes a task"  # a window or two


def _unbuilt(page: str) -> str:
    """A page without the moment it was built."""
    built = re.compile(r'"built": ?"[^"]*"')
    assert built.search(page), "the page says when it was built"
    return built.sub('"built": ""', page)


def test_the_page_at_a_runs_end_is_the_one_gallery_builds_from_dir(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert cli("run", write(FIRST, "first.yaml"), "--out", out, env=env_for(sim)).code == 1
    assert cli("run", write(SECOND, "second.yaml"), "--out", out, env=env_for(sim)).code == 0
    page = (out / gallery.PAGE).read_text()
    assert page_data(out / gallery.PAGE)["tasks"] == 4  # the last manifest's, its orphaned lines left out
    gallery.build(out)  # as `maas-batch gallery DIR` builds it: from the digests DIR remembered
    assert _unbuilt((out / gallery.PAGE).read_text()) == _unbuilt(page)


def test_report_reads_a_run_logs_end_whose_seconds_are_no_number(
    cli: Callable[..., Outcome], edited: Path
) -> None:
    """`"seconds": null` (or a string) in a run log's end line: report crashed with a TypeError. Such a
    run counts from its start to its last `sent` line, made here the start's own second: a run that took
    50 ms to send its last request (a loaded machine) read "0.1 s", and the test failed 1 in 3."""
    for log in (edited / "runs").glob("*.jsonl"):
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        began = datetime.fromisoformat(next(e["at"] for e in lines if e.get("event") == "start")).timestamp()
        edits = {"end": {"seconds": None}, "sent": {"t": began}}
        log.write_text("".join(json.dumps({**e, **edits.get(e.get("event"), {})}) + "\n" for e in lines))
    done = cli("report", edited)
    assert done.code == 0 and "0.0 s of runs" in done.out, done.err
