"""The validated plan remembered in DIR: used when nothing it depends on changed, never otherwise, and
a resumed run with it sends exactly the unfinished tasks."""

from __future__ import annotations

import json
import os
import tracemalloc
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from batch.manifest import plan as plan_module
from batch.manifest import plancache
from batch.manifest.plancache import Sources
from batch.manifest.read import Manifest, Mark
from batch.running import dispatch
from batch.running.order import Order
from batch.simulator import RunningSimulator
from tests.conftest import Outcome, chat_lines, env_for, ledger, results


def plan_sources(out: Path) -> list[str]:
    """How each run got its plan, oldest first."""
    starts = []
    for log in sorted((out / "runs").glob("*.jsonl")):
        first = json.loads(log.read_text().splitlines()[0])
        starts.append(first["plan"])
    return starts


def test_an_unchanged_manifest_is_not_validated_again_and_any_change_is(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    prompts = write("a fox\nan owl\na whale\n", "prompts.txt")
    manifest = write("tasks:\n  - {kind: generate, prompts_file: prompts.txt, quality: low}\n")
    out = tmp_path / "out"
    env = env_for(sim)
    assert cli("run", manifest, "--out", out, env=env).code == 0
    assert cli("run", manifest, "--out", out, env=env).code == 0
    assert plan_sources(out) == ["validated", "remembered"]

    prompts.write_text("a fox\nan owl\na whale\na heron\n")  # a source file changed
    assert cli("run", manifest, "--out", out, env=env).code == 0
    assert plan_sources(out)[-1] == "validated"
    assert len(results(out)) == 4

    assert cli("run", manifest, "--out", out, "--set", "quality=medium", env=env).code == 0  # settings
    assert plan_sources(out)[-1] == "validated"
    manifest.write_text(manifest.read_text() + "  - {kind: generate, prompt: one more}\n")  # the manifest
    assert cli("run", manifest, "--out", out, env=env).code == 0
    assert plan_sources(out)[-1] == "validated"
    assert cli("run", manifest, "--out", out, env=env).code == 0
    assert plan_sources(out)[-1] == "remembered"


def test_a_touched_input_image_invalidates_the_plan(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    from tests.conftest import make_image

    photo = make_image(tmp_path / "photo.png")
    manifest = write("tasks:\n  - {kind: edit, prompt: hat, image: photo.png}\n")
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    make_image(photo, color=(1, 2, 3))
    os.utime(photo, ns=(1, 1))
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    assert plan_sources(out) == ["validated", "validated"]
    assert len(results(out)) == 2  # new bytes, new task


def test_a_remembered_plan_resumes_exactly_the_unfinished_tasks(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write(
        "tasks:\n  - {kind: chat, model: m, id: 'q-{a}-{b}', prompt: '{a} {b}', "
        "matrix: {a: [1, 2, 3, 4, 5], b: [1, 2, 3, 4]}}\n"
    )
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    kept = [line for line in lines if not json.loads(line)["id"].endswith("-3")]
    (out / "results.jsonl").write_text("\n".join(kept) + "\n")  # as if five tasks never finished
    sent = sim.state.requests_total
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    assert plan_sources(out)[-1] == "remembered"
    again = [r.task_id for r in sim.state.records[sent:]]
    assert sorted(again) == [f"q-{a}-3" for a in range(1, 6)]
    assert len(results(out)) == 20


def test_a_manifest_edited_during_the_run_stops_it_rather_than_sending_unchecked_tasks(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    import threading

    from batch.simulator import SimConfig, simulator_in_thread
    from tests.conftest import KEY

    prompts = write("".join(f"picture {i}\n" for i in range(300)), "prompts.txt")
    manifest = write("tasks:\n  - {kind: generate, prompts_file: prompts.txt}\n")
    with simulator_in_thread(SimConfig(api_key=KEY, latency=0.01)) as sim:

        def edit_when_running() -> None:
            sim.state.wait_for_sync(lambda state: state.requests_total >= 5, within=30)
            prompts.write_text("x" * 40_000 + "\n" + prompts.read_text())  # a prompt over the limit

        editor = threading.Thread(target=edit_when_running)
        editor.start()
        outcome = cli("run", manifest, "--out", tmp_path / "out", "--concurrency", "4", env=env_for(sim))
        editor.join(30)
        sent = {r.task_id for r in sim.state.records}
    assert outcome.code == 65
    assert "changed during the run" in outcome.out
    assert len(results(tmp_path / "out")) < 300
    assert not any(task_id.startswith("xxxx") for task_id in sent)  # the unchecked prompt never went out


def test_an_input_image_replaced_during_the_run_is_not_sent_as_a_task_checked_with_the_old_one(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """The dispatch builds tasks ahead of sending them: an edit's image replaced in between was sent under
    the id made of the old image's bytes (and its answer bought again by the next run, under the new
    image's id). The request's read now checks the bytes, and the run stops as for an edited manifest."""
    import threading

    from batch.simulator import SimConfig, simulator_in_thread
    from tests.conftest import KEY, make_image

    make_image(tmp_path / "a.png", size=(64, 64))
    manifest = write(
        "tasks:\n" + "".join(f"  - {{kind: edit, prompt: add a bird {i}, image: a.png}}\n" for i in range(3))
    )
    with simulator_in_thread(SimConfig(api_key=KEY, latency=1.0)) as sim:

        def replace_when_sent() -> None:  # in flight: counted in requests_total only once answered
            sim.state.wait_for_sync(lambda state: state.inflight >= 1, within=30)
            make_image(tmp_path / "a.png", size=(128, 64))  # while the first is answered

        replacer = threading.Thread(target=replace_when_sent)
        replacer.start()
        outcome = cli("run", manifest, "--out", tmp_path / "out", "--concurrency", "1", env=env_for(sim))
        replacer.join(30)
        sent = sim.state.requests_total
    assert outcome.code == 65, outcome.out + outcome.err
    assert f"an input file changed during the run: {tmp_path / 'a.png'}" in outcome.out + outcome.err
    assert sent == 1 and len(results(tmp_path / "out")) == 1  # the first, sent before the change


def test_a_plans_digests_are_saved_and_loaded_without_a_whole_copy_of_them(tmp_path: Path) -> None:
    """A million tasks' digests are 8 MB: a copy of them as bytes and another as the write's buffer made
    the save the peak of a run of a fresh manifest (once its page held less); the load read them whole,
    and a resume's plan held them for the whole run."""
    count = 1_000_000
    values = array("Q", range(count))
    order = Order(values)  # in a temporary file, past its first window
    sent = array("Q", range(count, 2 * count))
    requests = Order(sent)
    key = {"manifest": "job.yaml"}
    tracemalloc.start()
    try:
        plancache.save(tmp_path, key, plancache.Sources(), count, Counter(), order, {}, requests=requests)
        _, saving = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        loaded = plancache.load(tmp_path, key)
        _, loading = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / plancache.IDS).read_bytes() == values.tobytes()
    assert loaded is not None and loaded.order == values and loaded.total == count
    assert (tmp_path / plancache.REQUESTS).read_bytes() == sent.tobytes() and loaded.requests == sent
    # a window or two of digests (256 KB each) and the write's buffer, however many tasks: not 8 MB
    assert saving < 2_000_000, f"saving: {saving / count:.1f} bytes a task"
    assert loading < 1_000_000, f"loading: {loading / count:.1f} bytes a task"
    # digests that are not the ones remembered, or not whole: no plan
    (tmp_path / plancache.IDS).write_bytes(values.tobytes()[:-3])
    assert plancache.load(tmp_path, key) is None
    (tmp_path / plancache.IDS).write_bytes(array("Q", range(1, count + 1)).tobytes())
    assert plancache.load(tmp_path, key) is None
    (tmp_path / plancache.IDS).write_bytes(values.tobytes())  # the ids again, the requests one short
    assert plancache.load(tmp_path, key) is not None
    (tmp_path / plancache.REQUESTS).write_bytes(sent.tobytes()[:-8])
    assert plancache.load(tmp_path, key) is None
    (tmp_path / plancache.REQUESTS).write_bytes(array("Q", range(count)).tobytes())  # whole, not the ones
    assert plancache.load(tmp_path, key) is None


def padded_lines(numbers: Iterable[int]) -> str:
    """Chat tasks t00, t01, ... of 1 KB each: a walk's reads then reach past its file buffer's first fill,
    and see what is written to the file after it started."""
    line = '{{"kind": "chat", "id": "t{0:02d}", "model": "gemini-2.5-flash", "prompt": "q {0} {1}"}}\n'
    return "".join(line.format(i, "x" * 1000) for i in numbers)


def after_the_first_look(monkeypatch: pytest.MonkeyPatch, edit: Callable[[], None]) -> None:
    """`edit` right after the dispatch walk's first look for changes (it looks every 64 tasks)."""
    looked = Sources.expansion_changed
    looks = 0

    def looking(self: Sources) -> bool:
        nonlocal looks
        looks += 1
        answer = looked(self)
        if looks == 1:
            edit()
        return answer

    monkeypatch.setattr(Sources, "expansion_changed", looking)


def test_a_manifest_appended_to_during_a_resume_stops_it_and_loses_nothing(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pipeline appends tasks while a resume walks past a long stretch of finished ones: the walk
    reached positions the check never saw before its next look, and crashed the run (IndexError) with
    its requests in flight. It stops at the first of them now (65), the request in flight recorded."""
    out = tmp_path / "out"
    assert (
        cli("run", write(padded_lines(range(1, 40)), "first.jsonl"), "--out", out, env=env_for(sim)).code == 0
    )
    manifest = write(padded_lines(range(40)), "tasks.jsonl")  # t00 is new, at the start

    def append() -> None:
        with manifest.open("a", encoding="utf-8") as more:
            more.write(padded_lines(range(40, 43)))

    after_the_first_look(monkeypatch, append)
    monkeypatch.setattr(dispatch, "PRODUCER_BATCH", 1)  # t00 goes out before the walk reaches the rest
    again = cli("run", manifest, "--out", out, env=env_for(sim))
    assert again.code == 65, again.err
    assert "changed during the run" in again.out
    assert [r.task_id for r in sim.state.records[39:]] == ["t00"]
    assert len(results(out)) == 40 and len(ledger(out)) == 40
    monkeypatch.undo()
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    assert sorted(r.task_id for r in sim.state.records[40:]) == ["t40", "t41", "t42"]


def test_a_line_rewritten_during_a_run_as_a_task_already_sent_is_not_sent_again(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A line rewritten in place between two looks for changes, as the task already sent first: the walk
    built it and, the run having no result of it when it began, sent it again (paid twice). The walk
    now checks that each task is the one the check found at its position."""
    manifest = write(padded_lines(range(40)), "tasks.jsonl")
    text = manifest.read_text(encoding="utf-8")

    def rewrite() -> None:  # t20 becomes t00, the same bytes long: the file's size is unchanged
        manifest.write_text(text.replace('"id": "t20"', '"id": "t00"'), encoding="utf-8")

    after_the_first_look(monkeypatch, rewrite)
    monkeypatch.setattr(dispatch, "PRODUCER_BATCH", 1)  # each task goes out as soon as it is built
    outcome = cli("run", manifest, "--out", tmp_path / "out", "--concurrency", "2", env=env_for(sim))
    assert outcome.code == 65, outcome.err
    sent = [r.task_id for r in sim.state.records]
    assert sent.count("t00") == 1 and "t20" not in sent
    assert len(results(tmp_path / "out")) == len(sent) == len(ledger(tmp_path / "out"))


def test_a_resume_reads_the_manifest_from_the_mark_before_its_first_unfinished_task(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resume of a million tasks passed over the finished ones by reading and parsing every line
    before them (12-17 s for 999,000). It starts at the check walk's last mark before its first
    unfinished task now (a mark every 16 tasks here), with a freshly checked plan and a remembered one."""
    monkeypatch.setattr(plan_module, "MARK_EVERY", 16)
    begins: list[int | None] = []  # where each walk of the manifest started
    entries = Manifest.entries

    def walking(self: Manifest, batch_urls: Any, begin: Mark | None = None) -> Any:
        begins.append(None if begin is None else begin.position)
        return entries(self, batch_urls, begin)

    monkeypatch.setattr(Manifest, "entries", walking)
    out = tmp_path / "out"
    assert cli("run", write(chat_lines(range(40)), "first.jsonl"), "--out", out, env=env_for(sim)).code == 0
    manifest = write(chat_lines(range(60)), "tasks.jsonl")
    begins.clear()
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    assert begins == [None, 32]  # the check walk, then the dispatch's from the mark at task 32
    assert sorted(r.task_id for r in sim.state.records[40:]) == sorted(f"t{i}" for i in range(40, 60))
    # t45 to t59's results gone: the next run remembers the plan, its marks too
    results_file = out / "results.jsonl"
    kept = [
        raw
        for raw in results_file.read_text().splitlines(keepends=True)
        if int(json.loads(raw)["id"][1:]) < 45
    ]
    results_file.write_text("".join(kept))
    begins.clear()
    again = cli("run", manifest, "--out", out, env=env_for(sim))
    assert again.code == 0 and "15 succeeded" in again.out
    assert begins == [32]  # no check walk: the plan was remembered
    assert sorted(r.task_id for r in sim.state.records[60:]) == sorted(f"t{i}" for i in range(45, 60))


@pytest.mark.parametrize(
    "marks",
    [None, "0", [[0, 0]], [[0, 0, 1, 0], [0, 0, 1, 0]], [[9, 0, 1, 0]], [[0, 0, "1", 0]], [[0, True, 1, 0]]],
)
def test_a_remembered_plan_whose_marks_are_not_what_was_saved_is_checked_again(
    marks: Any, cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """A walk started at a wrong mark would pass over tasks never sent: a plan.json whose marks are not a
    list of [position, index, line, offset] rising under the plan's size is not trusted."""
    manifest = write(chat_lines(range(5)), "tasks.jsonl")
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    plan = out / plancache.FOLDER / plancache.PLAN
    document = json.loads(plan.read_text())
    assert document["marks"] == [[0, 0, 1, 0]]
    assert plancache.load(out / plancache.FOLDER, document["key"]) is not None  # as saved: remembered
    document["marks"] = marks
    plan.write_text(json.dumps(document))
    assert plancache.load(out / plancache.FOLDER, document["key"]) is None
    again = cli("run", manifest, "--out", out, env=env_for(sim))
    assert again.code == 0 and "5 already done" in again.out
    logs = (out / "runs").glob("*.jsonl")
    starts = [json.loads(line) for log in logs for line in log.read_text().splitlines()]
    assert sorted(s["plan"] for s in starts if s.get("event") == "start") == ["validated", "validated"]
