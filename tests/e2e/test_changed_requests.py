"""A task whose id is its own (an `id`, an id prefix, a CSV's id column) keeps its finished result when
the manifest changes what it sends: a fixed prompt, a `--set`, a default, the endpoint, an input image's
bytes. That is the contract (a task's id is its `id`), but it was silent: the run said "0 sent, N already
done". Each result line now names what was sent (`request_sha256`), and a run, its --dry-run and the plan
it remembers find the finished tasks whose request is another now, and say so before anything is sent."""

from __future__ import annotations

import hashlib
import json
import re
from array import array
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.running.finishedset import find_changed
from batch.running.idset import digest
from batch.running.order import WINDOW, Order
from batch.running.records import ResultRecord, requested_entry
from batch.simulator import RunningSimulator
from tests.conftest import Outcome, env_for, make_image, results

WARNED = "finished task(s) ran with another request than the manifest gives them now"


def manifest(write: Callable[..., Path], fox: str = "a fox") -> Path:
    path = write(
        "defaults: {model: gpt-image-1, quality: low}\n"
        "tasks:\n"
        f"  - {{kind: generate, id: fox, prompt: {fox}}}\n"
        "  - {kind: edit, id: cat, prompt: a hat, image: cat.png}\n"
        "  - {kind: generate, prompt: an owl}\n"  # its id is made from what it sends
    )
    if not (path.parent / "cat.png").exists():
        make_image(path.parent / "cat.png")
    return path


def test_a_finished_task_whose_request_changed_is_said_not_bought_again(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = cli("run", manifest(write), "--out", out, env=env_for(sim))
    assert first.code == 0 and WARNED not in first.err, first.err
    lines = results(out)
    assert all(re.fullmatch("[0-9a-f]{16}", line["request_sha256"]) for line in lines.values())
    sent = sim.state.requests_total

    # the prompt of one task with its own id fixed: it is not sent, and the run says so
    fixed = cli("run", manifest(write, "a red fox"), "--out", out, env=env_for(sim))
    assert fixed.code == 0 and f"1 {WARNED}" in fixed.err, fixed.err
    assert sim.state.requests_total == sent and results(out)["fox"] == lines["fox"]
    # `status` counts it, from the plan the run remembered and with --manifest
    found = json.loads(cli("status", out, "--json").out)
    assert found["changed"] == 1 and found["succeeded"] == 3, found
    assert "changed: 1 finished task(s) ran with another request" in cli("status", out).out
    assert json.loads(cli("status", out, "--json", "--manifest", manifest(write)).out)["changed"] == 0
    # --dry-run says it too; a run of the manifest as it was says nothing
    dry = cli("run", manifest(write, "a red fox"), "--out", out, "--dry-run", env=env_for(sim))
    assert dry.code == 0 and f"1 {WARNED}" in dry.out, dry.out
    assert WARNED not in cli("run", manifest(write), "--out", out, env=env_for(sim)).err

    # a --set reaches both tasks with their own ids (the third is a new task: an orphaned line, as before)
    raised = ("run", manifest(write), "--out", out, "--set", "quality=high")
    again = cli(*raised, env=env_for(sim))
    assert again.code == 0 and f"2 {WARNED}" in again.err, again.err
    assert sim.state.requests_total == sent + 1  # the owl, under its new id
    # the same command again: its plan is remembered in DIR now (not walked), and says it still
    remembered = cli(*raised, env=env_for(sim))
    assert f"2 {WARNED}" in remembered.err, remembered.err
    assert json.loads((out / ".cache" / "plan.json").read_text())["requests_sha256"]

    # the input image's bytes replaced under the same name
    make_image(out.parent / "cat.png", color=(10, 200, 10))
    swapped = cli("run", manifest(write), "--out", out, env=env_for(sim))
    assert swapped.code == 0 and f"1 {WARNED}" in swapped.err, swapped.err


def test_lines_of_an_earlier_version_name_no_request_and_are_let_be(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert cli("run", manifest(write), "--out", out, env=env_for(sim)).code == 0
    path = out / "results.jsonl"
    old = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text(
        "".join(json.dumps({k: v for k, v in x.items() if k != "request_sha256"}) + "\n" for x in old)
    )
    changed = cli("run", manifest(write, "a red fox"), "--out", out, env=env_for(sim))
    assert changed.code == 0 and WARNED not in changed.err and "3 already done" in changed.out, changed.out


def test_the_same_request_gets_the_same_digest_in_any_directory(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """The digest is of what is sent, not of a run: a fresh directory's lines name the same ones, and a
    changed prompt another."""
    for name in ("a", "b"):
        assert cli("run", manifest(write), "--out", tmp_path / name, env=env_for(sim)).code == 0
    assert cli("run", manifest(write, "a red fox"), "--out", tmp_path / "c", env=env_for(sim)).code == 0
    a, b, c = (results(tmp_path / name) for name in "abc")
    assert {k: v["request_sha256"] for k, v in a.items()} == {k: v["request_sha256"] for k, v in b.items()}
    assert a["fox"]["request_sha256"] != c["fox"]["request_sha256"]
    assert a["cat"]["request_sha256"] == c["cat"]["request_sha256"]


@pytest.mark.parametrize(
    ("size", "few"),
    [(50, 1 << 13), (50, 0), (WINDOW + 5000, 1 << 13)],
    ids=["a few lines held", "joined in memory", "joined in the temporary file's parts"],
)
def test_changed_counts_the_tasks_with_named_requests_none_of_them_the_one_now(
    size: int, few: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batch.running import finishedset

    monkeypatch.setattr(finishedset, "FEW", few)
    ids = [f"t{i}" for i in range(size)]
    now = [hashlib.sha256(task_id.encode()).hexdigest()[:16] for task_id in ids]
    order = Order(array("Q", (digest(task_id) for task_id in ids)))
    requests = Order(array("Q", (int(request, 16) for request in now)))
    other = "0" * 16
    lines = [
        *((ids[i], now[i]) for i in range(0, size, 2)),  # half the tasks: as now
        *((ids[i], other) for i in range(1, size, 4)),  # a quarter: another request only
        *((ids[i], other) for i in range(0, size, 10)),  # a tenth of those as now: an older line too
        *((ids[i], now[i + 1]) for i in range(3, size - 1, 4)),  # another task's request now
        ("not-a-task", other),
    ]
    changed = len(range(1, size, 4)) + len(range(3, size - 1, 4))
    assert find_changed(order, requests, lambda: iter(lines)) == changed
    assert find_changed(order, Order(), lambda: iter(lines)) == 0  # a plan without requests: none known


def test_a_lines_request_is_read_fast_where_the_tool_wrote_it_and_parsed_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batch.output.store import Journal
    from batch.running import records

    record = ResultRecord("fox", "generate", "succeeded", "m", request_sha256="0123456789abcdef")
    journal = Journal(tmp_path / "results.jsonl", fsync=False)  # written as a run writes it
    journal.open()
    journal.write(record.to_line())
    journal.close()
    written = (tmp_path / "results.jsonl").read_bytes()
    assert written.endswith(b', "request_sha256": "0123456789abcdef"}\n')
    with monkeypatch.context() as fast:  # read without parsing the line
        fast.setattr(records.codec, "loads", lambda raw: pytest.fail(f"parsed: {raw[:40]!r}"))
        assert requested_entry(written) == ("fox", "0123456789abcdef")
    reordered = json.dumps({"request_sha256": "0123456789abcdef", **record.to_line()}).encode() + b"\n"
    assert requested_entry(reordered) == ("fox", "0123456789abcdef")
    assert ResultRecord.from_line(json.loads(reordered)).request_sha256 == "0123456789abcdef"
    for bad in ("0123456789ABCDEF", "0123", 7, None):
        line = {**record.to_line(), "request_sha256": bad}
        assert requested_entry(json.dumps(line).encode() + b"\n") is None
    in_meta = {**record.to_line(), "meta": {"request_sha256": "0123456789abcdef"}}
    del in_meta["request_sha256"]
    assert requested_entry(json.dumps(in_meta).encode() + b"\n") is None
    assert requested_entry(b"not json\n") is None


def test_a_resume_of_a_remembered_plan_takes_the_count_it_found_and_looks_again_once_it_no_longer_holds(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Looking reads results.jsonl twice more (a million lines: seconds): a resume of the manifest its
    last run checked takes the count that run found, as long as results.jsonl only grew since."""
    from batch.running import job

    looks: list[int] = []

    def counted(*args: object) -> int:
        looks.append(find_changed(*args))  # type: ignore[arg-type]
        return looks[-1]

    monkeypatch.setattr(job, "find_changed", counted)
    out = tmp_path / "out"
    raised = ("run", manifest(write), "--out", out, "--set", "quality=high")
    assert cli("run", manifest(write), "--out", out, env=env_for(sim)).code == 0
    assert looks == []  # nothing finished before: nothing to look at
    assert f"2 {WARNED}" in cli(*raised, env=env_for(sim)).err and looks == [2]  # checked: looked
    assert f"2 {WARNED}" in cli(*raised, env=env_for(sim)).err and looks == [2]  # remembered: taken
    (out / "results.retried.jsonl").write_text(
        '{"id": "x", "status": "failed"}\n'
    )  # as --retry-failed: look again
    assert f"2 {WARNED}" in cli(*raised, env=env_for(sim)).err and looks == [2, 2]
    assert f"2 {WARNED}" in cli(*raised, env=env_for(sim)).err and looks == [2, 2]  # and noted again


def test_a_failed_task_whose_request_changed_is_not_said_kept_by_a_retry_of_failures(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """--retry-failed moves a failed task's line aside and sends it with its request now: its dry run
    said it was changed and not sent again."""
    out = tmp_path / "out"
    failing = cli("run", manifest(write, "a forbidden fox"), "--out", out, env=env_for(sim))
    assert failing.code == 1 and results(out)["fox"]["status"] == "failed", failing.out
    fixed = manifest(write, "a fox")
    assert f"1 {WARNED}" in cli("run", fixed, "--out", out, "--dry-run", env=env_for(sim)).out
    dry = cli("run", fixed, "--out", out, "--retry-failed", "--dry-run", env=env_for(sim))
    assert dry.code == 0 and WARNED not in dry.out and "to retry in" in dry.out, dry.out
    sent = sim.state.requests_total
    retried = cli("run", fixed, "--out", out, "--retry-failed", env=env_for(sim))
    assert retried.code == 0 and WARNED not in retried.err, retried.err
    assert sim.state.requests_total == sent + 1 and results(out)["fox"]["status"] == "succeeded"


def test_an_input_replaced_after_the_check_is_named_as_sent_not_as_checked(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The image is replaced after the manifest was checked, before the task is sent: the request sent
    holds the new bytes, and its line names them. Named by the check instead, the next run warned that
    the task ran with another request than the manifest gives it now, which it did not."""
    from batch.running import job

    out = tmp_path / "out"
    path = manifest(write)
    prepare = job.Job._prepare

    def then_replaced(self: job.Job, *args: object, **kwargs: object) -> object:
        start = prepare(self, *args, **kwargs)  # type: ignore[arg-type]
        make_image(path.parent / "cat.png", color=(10, 200, 10))
        return start

    with monkeypatch.context() as replacing:
        replacing.setattr(job.Job, "_prepare", then_replaced)
        assert cli("run", path, "--out", out, env=env_for(sim)).code == 0
    again = cli("run", path, "--out", out, env=env_for(sim))
    assert again.code == 0 and WARNED not in again.err and "3 already done" in again.out, again.err
    assert cli("run", path, "--out", tmp_path / "fresh", env=env_for(sim)).code == 0
    assert results(out)["cat"]["request_sha256"] == results(tmp_path / "fresh")["cat"]["request_sha256"]
