"""What a run holds at its end, while its page is written (its peak): not the plan's id set, nor the ids
of the tasks it passed over, both 8 bytes a task; and a plan asked for its ids again makes them again."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from batch.manifest.plan import Plan
from batch.running import job
from batch.running.finishedset import Finished
from batch.running.idset import IdSet
from batch.simulator import RunningSimulator
from tests.conftest import Outcome, checked, env_for
from tests.output.test_gallery import page_data

MANIFEST = "tasks:\n" + "".join(
    f"  - {{kind: chat, id: q-{i}, model: gemini-2.5-flash, prompt: q {i}}}\n" for i in range(5)
)


def test_a_plan_lets_go_of_its_ids_and_makes_them_again_when_asked(write: Callable[..., Path]) -> None:
    plan = checked(write(MANIFEST)).plan
    held = weakref.ref(plan.ids)
    plan.release_ids()
    gc.collect()
    assert held() is None
    assert all(f"q-{i}" in plan.ids for i in range(5)) and "q-5" not in plan.ids and len(plan.ids) == 5
    # a plan with problems keeps them: its ids are not all in its order
    broken = checked(write(MANIFEST + "  - {kind: chat, id: q-9, model: gemini-2.5-flash}\n", "broken.yaml"))
    ids = broken.plan.ids
    broken.plan.release_ids()
    assert not broken.plan.ok and broken.plan.ids is ids


def test_the_page_at_a_runs_end_is_written_without_the_runs_id_sets(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held: list[weakref.ref[Any]] = []  # the run's id set and finished tasks, made before its dispatch
    alive: list[bool] = []  # at each page: whether any of them is still held by anything
    prepare, finished, build_gallery = job.Job._prepare, job.Job.finished, job.Job._build_gallery

    def preparing(self: job.Job, *args: Any) -> Any:
        start = prepare(self, *args)
        held.append(weakref.ref(self.checked.plan.ids))
        return start

    def finding(self: job.Job) -> Finished:
        found = finished(self)
        held.append(weakref.ref(found))
        return found

    def building(self: job.Job, cards: Any = None, summary: Any = None) -> None:
        gc.collect()
        alive.append(any(ref() is not None for ref in held))
        build_gallery(self, cards, summary)

    monkeypatch.setattr(job.Job, "_prepare", preparing)
    monkeypatch.setattr(job.Job, "finished", finding)
    monkeypatch.setattr(job.Job, "_build_gallery", building)
    manifest = write(MANIFEST)
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    # again, on the finished tasks (a resume: the ids it passes over are every task's), and a grown manifest
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    grown = write(MANIFEST + "  - {kind: chat, id: q-5, model: gemini-2.5-flash, prompt: q 5}\n")
    assert cli("run", grown, "--out", out, env=env_for(sim)).code == 0
    assert page_data(out / "index.html")["tasks"] == 6
    # a run stopped (by its budget) in the middle of its walk of the manifest: the walk is let go too
    many = write(
        "tasks:\n"
        + "".join(
            f"  - {{kind: chat, id: q-{i}, model: gemini-2.5-flash, prompt: q {i}}}\n" for i in range(300)
        ),
        "many.yaml",
    )
    assert cli("run", many, "--out", out, "-c", "1", "--max-tokens", "1", env=env_for(sim)).code == 3
    assert len(held) == 8 and alive == [False] * 4


def test_no_run_makes_an_id_set_of_its_plan_and_a_resumes_counts_are_the_plans(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The plan's id set is 8 bytes a task: a resume tells its finished tasks apart without it, counting
    them over the plan's order, so that a line of a task no longer in the manifest counts for nothing."""
    made: list[int] = []  # each id set made: its plan's task count
    hold = Plan.hold_ids

    def holding(self: Plan, others: Iterable[int] = ()) -> IdSet:
        made.append(len(self.order))
        return hold(self, others)

    monkeypatch.setattr(Plan, "hold_ids", holding)
    manifest = write(MANIFEST)
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    results = out / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    failed = [line for line in lines if '"id": "q-1"' in line]
    assert len(failed) == 1
    results.write_text("".join(lines).replace(failed[0], failed[0].replace('"succeeded"', '"failed"')))
    fewer = write(MANIFEST.replace("  - {kind: chat, id: q-4, model: gemini-2.5-flash, prompt: q 4}\n", ""))
    again = cli("run", fewer, "--out", out, env=env_for(sim))  # q-4's line is now orphaned
    assert "0 succeeded, 0 failed, 4 already done (1 of them failed)" in again.out, again.out
    assert again.code == 1
    assert made == []
    assert sim.state.requests_total == 5  # nothing sent again
