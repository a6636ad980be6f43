"""`run --rerun-changed`: the finished tasks whose request changed since they ran (a prompt fixed, a
`--set`, an input image's bytes, for a task with its own id) are sent again, and only they besides what
is left to do; their old lines move to results.retried.jsonl, kept for the record. Without the flag
they keep their results and the run says how many there are (test_changed_requests.py); before it,
the only ways to buy them again were new ids (which break the joins a pipeline makes by id) or another
--out (which buys every task again)."""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.running.finishedset import changed_digests, find_changed
from batch.running.idset import digest
from batch.running.order import WINDOW, Order
from batch.simulator import RunningSimulator
from tests.conftest import Outcome, env_for, results
from tests.e2e.test_changed_requests import WARNED, manifest

pytestmark = pytest.mark.timeout(60)

RERUN = "whose request changed were given another go (--rerun-changed"


def retried_lines(out: Path) -> list[dict[str, object]]:
    path = out / "results.retried.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# a: changed in the tests (its prompt the `{a}`), b: refused for good (a failure), c: as it was
ABC = (
    "tasks:\n"
    "  - {{kind: chat, id: a, model: gemini-2.5-flash, prompt: {a}}}\n"
    "  - {{kind: chat, id: b, model: gemini-2.5-flash, prompt: something forbidden}}\n"
    "  - {{kind: chat, id: c, model: gemini-2.5-flash, prompt: hello}}\n"
)


def test_the_changed_tasks_are_sent_again_and_only_they(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert cli("run", manifest(write), "--out", out, env=env_for(sim)).code == 0
    before = results(out)
    sent = sim.state.requests_total
    fixed = manifest(write, "a red fox")

    dry = cli("run", fixed, "--out", out, "--rerun-changed", "--dry-run", env=env_for(sim))
    assert dry.code == 0 and "left to do in" in dry.out and ": 1 of 3 tasks" in dry.out, dry.out
    assert "--rerun-changed sends them again" in dry.out, dry.out
    assert sim.state.requests_total == sent and results(out) == before  # a dry run moves nothing

    rerun = cli("run", fixed, "--out", out, "--rerun-changed", env=env_for(sim))

    assert rerun.code == 0 and WARNED not in rerun.err, rerun.err
    assert f"1 finished task(s) {RERUN}" in rerun.out, rerun.out
    assert sim.state.requests_total == sent + 1  # the fox; the others did not change
    now = results(out)
    assert (
        now["fox"]["prompt"] == "a red fox"
        and now["fox"]["request_sha256"] != before["fox"]["request_sha256"]
    )
    assert now["cat"] == before["cat"]  # not changed: kept, not sent
    fresh = tmp_path / "fresh"
    assert cli("run", fixed, "--out", fresh, env=env_for(sim)).code == 0
    assert now["fox"]["request_sha256"] == results(fresh)["fox"]["request_sha256"]  # what was sent
    # the old line, for the record (its picture under a name of its own); results.jsonl holds one line
    # of the fox
    [aside] = retried_lines(out)
    assert {**aside, "files": before["fox"]["files"]} == before["fox"] and aside["files"] != now["fox"][
        "files"
    ]
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines].count("fox") == 1
    status = json.loads(cli("status", out, "--json").out)
    assert (status["changed"], status["succeeded"], status["pending"]) == (0, 3, 0), status

    # nothing changed since: the flag sends nothing, and leaves results.jsonl as it is
    written, sent = (out / "results.jsonl").read_bytes(), sim.state.requests_total
    again = cli("run", fixed, "--out", out, "--rerun-changed", env=env_for(sim))
    assert again.code == 0 and "3 already done" in again.out and RERUN not in again.out, again.out
    assert sim.state.requests_total == sent and (out / "results.jsonl").read_bytes() == written


def test_with_retry_failed_the_failed_and_the_changed_tasks_are_sent_and_the_pending_left_alone(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    tasks = ABC
    first = cli("run", write(tasks.format(a="hi")), "--out", out, "--max-attempts", "1", env=env_for(sim))
    assert first.code == 1 and results(out)["b"]["status"] == "failed", first.out
    grown = tasks.format(a="hi there") + "  - {kind: chat, id: d, model: gemini-2.5-flash, prompt: new}\n"
    sent = sim.state.requests_total

    both = cli("run", write(grown), "--out", out, "--retry-failed", "--rerun-changed", env=env_for(sim))

    assert sim.state.requests_total == sent + 2  # a (changed) and b (failed); not c, not d (never run)
    assert f"1 finished task(s) {RERUN}" in both.out and "1 failed task(s) were given another go" in both.out
    assert "1 pending task(s) left alone" in both.out, both.out
    assert sorted(line["id"] for line in retried_lines(out)) == ["a", "b"]
    assert results(out)["a"]["prompt"] == "hi there" and "d" not in results(out)


def test_a_rerun_stopped_before_it_sent_leaves_the_changed_tasks_pending_for_the_next_run(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """The lines are set aside before anything is sent: a run stopped then (a budget already spent) has
    them in results.retried.jsonl, and its tasks pending; a plain run then sends them: nothing is lost."""
    out = tmp_path / "out"
    assert cli("run", manifest(write), "--out", out, env=env_for(sim)).code == 0
    sent = sim.state.requests_total
    fixed = manifest(write, "a red fox")

    stopped = cli("run", fixed, "--out", out, "--rerun-changed", "--max-cost", "0.0000001", env=env_for(sim))

    assert stopped.code == 3 and sim.state.requests_total == sent, stopped.out
    assert "1 finished task(s) whose request changed were set aside to be sent again; none was sent" in (
        stopped.out
    )
    assert json.loads(cli("status", out, "--json").out)["pending"] == 1
    assert cli("run", fixed, "--out", out, env=env_for(sim)).code == 0
    assert sim.state.requests_total == sent + 1 and results(out)["fox"]["prompt"] == "a red fox"


def test_the_library_yields_a_changed_task_once_when_it_is_run_again(
    sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import anyio

    import batch

    for name, value in env_for(sim).items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    batch.run(manifest(write), out)

    async def collected() -> list[tuple[str, str | None]]:
        found = []
        stream = batch.stream(manifest(write, "a red fox"), out, include_finished=True, rerun_changed=True)
        async for result in stream:
            found.append((result.id, result.record["prompt"]))
        return found

    found = anyio.run(collected)
    assert sorted(task_id for task_id, _ in found if task_id in ("fox", "cat")) == ["cat", "fox"]
    assert ("fox", "a red fox") in found and len(found) == 3, found


@pytest.mark.parametrize(
    ("size", "few"),
    [(50, 1 << 13), (50, 0), (WINDOW + 5000, 1 << 13)],
    ids=["a few lines held", "joined in memory", "joined in the temporary file's parts"],
)
def test_the_changed_digests_are_those_find_changed_counts(
    size: int, few: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batch.running import finishedset

    monkeypatch.setattr(finishedset, "FEW", few)
    ids = [f"t{i}" for i in range(size)]
    order = Order(array("Q", map(digest, ids)))
    requests = Order(array("Q", range(1, size + 1)))
    lines = [
        *((ids[i], f"{i + 1:016x}") for i in range(0, size, 3)),  # as now
        *((ids[i], f"{i + 2:016x}") for i in range(1, size, 3)),  # another request
        *((ids[i], f"{i + 2:016x}") for i in range(0, size, 9)),  # as now, and an older line too
    ]
    found = changed_digests(order, requests, lambda: iter(lines))
    assert len(found) == find_changed(order, requests, lambda: iter(lines)) == len(range(1, size, 3))
    assert all(found.contains_digest(digest(ids[i])) == (i % 3 == 1) for i in range(size))


def test_the_old_answers_picture_is_kept_under_a_name_of_its_own(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """The new answer is saved as images/fox.png, the name the old line gave its picture: the paid old
    picture was written over, and the line kept for the record named the new one. It keeps a name of its
    own now (and its thumbnail), and the new picture gets a thumbnail of its own."""
    out = tmp_path / "out"
    assert cli("run", manifest(write), "--out", out, env=env_for(sim)).code == 0
    [old_name] = results(out)["fox"]["files"]
    old_bytes = (out / old_name).read_bytes()
    old_thumb = (out / "thumbs" / f"{Path(old_name).name}.webp").read_bytes()
    old_line = results(out)["fox"]

    assert (
        cli("run", manifest(write, "a red fox"), "--out", out, "--rerun-changed", env=env_for(sim)).code == 0
    )

    [new_name] = results(out)["fox"]["files"]
    [aside] = retried_lines(out)
    [kept] = aside["files"]
    assert kept != new_name and kept.startswith("images/") and ".before-" in kept
    assert (out / kept).read_bytes() == old_bytes and (out / new_name).read_bytes() != old_bytes
    assert (out / "thumbs" / f"{Path(kept).name}.webp").read_bytes() == old_thumb
    assert (out / "thumbs" / f"{Path(new_name).name}.webp").read_bytes() != old_thumb
    assert {**aside, "files": old_line["files"]} == old_line  # the line as it was, but its picture's name


def test_a_changed_task_whose_new_try_fails_leaves_no_old_picture_under_its_name(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """The old picture stayed under images/fox.png beside its kept name: a task whose new request failed
    showed the old request's picture under its own name to whatever reads images/ by name."""
    out = tmp_path / "out"
    assert cli("run", manifest(write), "--out", out, env=env_for(sim)).code == 0
    [old_name] = results(out)["fox"]["files"]
    old_bytes = (out / old_name).read_bytes()
    refused = manifest(write, "a forbidden fox")  # the simulator refuses it (a content filter)
    assert cli("run", refused, "--out", out, "--rerun-changed", env=env_for(sim)).code == 1
    assert results(out)["fox"]["status"] == "failed"
    assert not (out / old_name).exists()
    [kept] = retried_lines(out)[0]["files"]
    assert (out / kept).read_bytes() == old_bytes


def test_changed_tasks_a_stopped_rerun_set_aside_are_not_counted_as_failures(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """A --rerun-changed run stopped after it set the changed task's line aside, before it sent it (a
    budget spent): status said "2 of the pending failed before", and the retry-failed after it "2 failed
    task(s) were given another go". Task a had succeeded: it is a changed task, waiting to be sent."""
    out = tmp_path / "out"
    tasks = ABC
    first = cli("run", write(tasks.format(a="hi")), "--out", out, "--max-attempts", "1", env=env_for(sim))
    assert first.code == 1 and results(out)["b"]["status"] == "failed", first.out
    fixed = write(tasks.format(a="hi there"))
    # b's failure set aside too (--retry-failed), then the budget stops the run before it sends anything
    sent = sim.state.requests_total
    both = ("--rerun-changed", "--retry-failed", "--max-attempts", "1")
    stopped = cli("run", fixed, "--out", out, *both, "--max-tokens", "1", env=env_for(sim))
    assert stopped.code == 3 and sim.state.requests_total == sent, stopped.out
    assert sorted(line["id"] for line in retried_lines(out)) == ["a", "b"]

    shown = cli("status", out)
    status = json.loads(cli("status", out, "--json").out)

    assert (status["pending"], status["retry_pending"], status["rerun_pending"]) == (2, 1, 1), status
    assert "1 of the pending failed before" in shown.out, shown.out
    assert "1 of the pending ran before with another request" in shown.out
    reported = json.loads(cli("report", out, "--json").out)
    assert (reported["pending"], reported["retry_pending"], reported["rerun_pending"]) == (2, 1, 1)
    assert "1 of the pending failed before" in cli("report", out).out

    again = cli("retry-failed", out, "--max-tokens", "1000000", env=env_for(sim))

    assert again.code == 1 and sim.state.requests_total == sent + 2, again.out  # b is refused again
    assert "1 failed task(s) were given another go" in again.out, again.out
    assert f"1 finished task(s) {RERUN}" in again.out
    assert results(out)["a"]["prompt"] == "hi there"
