"""A shard's walk of the manifest starts at the check walk's last mark before its first task (an entry's
first task, every MARK_EVERY tasks or more; a JSONL line's byte offset), not at the manifest's start,
and yields the same tasks as a walk from the start."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.config import Options, checked_manifest
from batch.errors import ManifestError
from batch.manifest import plan as manifest_plan
from batch.manifest.checked import CheckedManifest
from batch.manifest.plan import iter_tasks
from batch.manifest.read import Mark


def ids_from(checked: CheckedManifest, start: int, begin: Mark | None, count: int = 3) -> list[str]:
    found = []
    for spec in iter_tasks(checked.manifest, checked.builder, lambda position: position < start, None, begin):
        found.append(spec.id)
        if len(found) == count:
            break
    return found


def every_start_reads_the_same(checked: CheckedManifest) -> None:
    total = checked.plan.total
    for start in range(total):
        begin = checked.plan.mark_before(start)
        assert begin is not None and begin.position <= start
        assert ids_from(checked, start, begin) == ids_from(checked, start, None), start


@pytest.fixture
def marks_every_3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_plan, "MARK_EVERY", 3)


def jsonl_line(i: int) -> str:
    return json.dumps({"kind": "chat", "id": f"t{i}", "model": "gemini-2.5-flash", "prompt": f"p {i}"}) + "\n"


@pytest.mark.usefixtures("marks_every_3")
def test_a_jsonl_walk_starts_at_the_byte_offset_of_a_mark_and_never_reads_before(tmp_path: Path) -> None:
    path = tmp_path / "job.jsonl"
    lines = [jsonl_line(i) for i in range(10)]
    lines[4:4] = ["\n", "// a comment\n"]  # lines that are no task: a line number is not a position
    openai = {"custom_id": "o-1", "method": "POST", "url": "/v1/chat/completions"}
    lines.append(
        json.dumps(
            {**openai, "body": {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]}}
        )
        + "\n"
    )
    path.write_text("".join(lines))
    checked = checked_manifest(path, Options(), "ep")
    assert [m.position for m in checked.plan.marks] == [0, 3, 6, 9]
    assert checked.plan.marks[2].offset == len("".join(lines[:8]))  # t6's line, after the comment
    every_start_reads_the_same(checked)
    # the first line spoilt after the check (same size and time): a walk from a later mark never reads it
    stat = path.stat()
    with path.open("r+b") as handle:
        handle.write(b"{{")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert ids_from(checked, 7, checked.plan.mark_before(7)) == ["t7", "t8", "t9"]
    with pytest.raises(ManifestError):
        ids_from(checked, 7, None)


@pytest.mark.usefixtures("marks_every_3")
def test_a_yaml_walk_starts_at_the_entry_of_a_mark_and_expansions_keep_their_positions(
    write: Callable[..., Path],
) -> None:
    path = write("""
        tasks:
          - {kind: chat, model: gemini-2.5-flash, id: a, prompt: a}
          - {kind: generate, id: fox, prompt: a fox, repeat: 4}
          - {kind: chat, model: gemini-2.5-flash, id: b, prompt: b}
          - {kind: generate, prompt: "{n} owls", matrix: {n: [1, 2, 3]}, id: "owls-{n}"}
          - {kind: chat, model: gemini-2.5-flash, id: c, prompt: c}
          - {kind: chat, model: gemini-2.5-flash, id: d, prompt: d}
    """)
    checked = checked_manifest(path, Options(), "ep")
    # marks at an entry's first task only: an expansion is walked from its start
    assert [(m.position, m.index) for m in checked.plan.marks] == [(0, 0), (5, 2), (9, 4)]
    every_start_reads_the_same(checked)


@pytest.mark.usefixtures("marks_every_3")
@pytest.mark.timeout(60)
def test_a_shard_run_reads_the_manifest_from_near_its_first_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batch.cluster.plan import BatchPlan, order_digest, read_plan, shard_dir, split, write_plan
    from batch.cluster.shard import ShardRunner
    from batch.output.store import finished_results
    from batch.simulator import SimConfig, simulator_in_thread
    from tests.conftest import KEY

    path = tmp_path / "job.jsonl"
    path.write_text("".join(jsonl_line(i) for i in range(9)))
    out = tmp_path / "out"
    monkeypatch.setenv("MAAS_API_KEY", KEY)
    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        options = Options(base_url=sim.base_url, gallery=False)
        checked = checked_manifest(path, options, "ep")
        digest = order_digest(checked.plan.order.tobytes())
        plan = BatchPlan(str(path), str(out), "q", 9, digest, 3, split(9, 3), endpoint="ep")
        write_plan(out, plan)
        runner = ShardRunner(lambda plan: options)
        assert runner.run(read_plan(out).shard(0)).stop_code is None  # the manifest checked, and kept
        assert runner._checked is not None
        ids = runner._checked[1].plan.ids
        stat = path.stat()  # then its first line spoilt (same size and time): shard 2 never reads it
        with path.open("r+b") as handle:
            handle.write(b"{{")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        summary = runner.run(read_plan(out).shard(2))
        assert summary.stop_code is None and summary.total == 3
        assert runner._checked[1].plan.ids is ids  # kept for the next shard, not made again (0.6 s a million)
    assert sorted(i for i, _ in finished_results(shard_dir(out, 2) / "results.jsonl")) == ["t6", "t7", "t8"]
