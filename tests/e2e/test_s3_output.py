"""`run --out s3://...` end to end, through the command in a subprocess, against the simulator and a real
S3 on loopback (moto): a run killed with SIGKILL mid-run resumes with every task once, its paid duplicates
within what the store's accounting counts as maybe billed; results, ledger and images are objects in the
store; a finished run sends nothing again; the readers read the URL; the key is in no object."""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from batch.simulator import RunningSimulator, SimConfig, simulator_in_thread
from tests.conftest import KEY, Outcome, Run, env_for
from tests.e2e.test_crash import WHOLE, killed_at
from tests.s3_server import S3

pytestmark = pytest.mark.timeout(90)
TASKS = 6


def lines(s3: S3, folder: str) -> list[dict[str, object]]:
    return [
        json.loads(line)
        for _, data in sorted(s3.objects(folder).items())
        for line in data.decode().splitlines()
    ]


@pytest.fixture
def manifest(write: Callable[..., Path]) -> Path:
    return write(
        "tasks:\n" + "".join(f"  - {{kind: generate, id: t{i}, prompt: p {i}}}\n" for i in range(TASKS))
    )


def test_killed_mid_run_then_resumed_each_task_once_duplicates_accounted(
    manifest: Path, store: S3, cli: Callable[..., Outcome]
) -> None:
    s3 = store  # S3 (moto), then Azure Blob (Azurite)
    with simulator_in_thread(SimConfig(api_key=KEY, latency=0.3)) as sim:
        state = sim.state
        killed = Run(manifest, s3.url, sim, "--concurrency", "3")
        # the kill lands as the second wave of requests reaches the server: the first wave answered (its
        # lines maybe not uploaded yet), the second in flight
        state.wait_for_sync(lambda s: s.requests_total >= 3 and s.inflight >= 1, within=60)
        killed.kill()
        state.wait_for_sync(lambda s: s.inflight == 0, within=30)
        first_run = list(state.records)
        saved = {str(r["id"]) for r in lines(s3, "results")}
        assert len(saved) < TASKS
        # the store's own accounting: every request of the killed run whose task it does not hold is
        # counted as maybe billed (its `sent` line reached the store before the request left)
        unsaved = [r for r in first_run if r.task_id not in saved]
        assert unsaved
        shown = cli("status", s3.url, "--json", env=s3.env)
        assert shown.code == 0, shown.err
        maybe_billed = json.loads(shown.out)["maybe_billed"]
        assert json.loads(shown.out)["directory"] == s3.url
        assert maybe_billed >= len(unsaved)

        # the resume, in this process (no second start-up to pay)
        env = {**env_for(sim), **s3.env}
        resumed = cli("run", manifest, "--out", s3.url, "--no-progress", env=env)
        assert resumed.code == 0, resumed.err
        records = list(state.records)
        # nothing the store held was sent again; each task has exactly one result line
        assert not [r for r in records[len(first_run) :] if r.task_id in saved]
        results = lines(s3, "results")
        assert sorted(str(r["id"]) for r in results) == [f"t{i}" for i in range(TASKS)]
        paid = Counter(r.task_id for r in records if r.billed_tokens > 0)
        duplicates = sum(n - 1 for n in paid.values())
        assert duplicates <= maybe_billed
        # every answer billed by the server and not lost to the kill is in the ledger
        assert len(lines(s3, "usage")) >= state.billed_requests - maybe_billed
        objects = s3.objects()
        for record in results:
            for name in record["files"]:  # type: ignore[attr-defined]
                assert objects[name].startswith(b"\x89PNG")
        assert all(KEY.encode() not in data for data in objects.values())

        # finished: the same command again sends nothing
        again = cli("run", manifest, "--out", s3.url, "--no-progress", env=env)
        assert again.code == 0, again.err
        assert f"{TASKS} already done" in again.out and f"output: {s3.url}" in again.out
        assert state.requests_total == len(records)

    # the readers, on the URL
    status = json.loads(cli("status", s3.url, "--json", env=s3.env).out)
    assert status["succeeded"] == TASKS and status["pending"] == 0
    report = cli("report", s3.url, "--json", env=s3.env)
    assert report.code == 0 and json.loads(report.out)["maybe_billed"] == maybe_billed
    exported = cli("export", s3.url, "--format", "jsonl", env=s3.env)
    assert exported.code == 0, exported.err
    assert sorted(json.loads(line)["id"] for line in exported.out.splitlines()) == sorted(
        f"t{i}" for i in range(TASKS)
    )


def test_a_second_run_on_a_store_from_this_machine_exits_75_at_once_and_sends_nothing(
    manifest: Path, store: S3, cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    """A store has no lock, and tonight's cron run started while last night's was still going on: both
    paid for every task the first had not saved. A run on a store holds this machine's lock for it, as a
    run holds DIR's: the second exits 75 before it reads the store or sends anything. Another prefix is
    another store, and the lock goes with its run, however it ends (here SIGKILL)."""
    s3 = store
    with (
        simulator_in_thread(SimConfig(api_key=KEY, latency=60)) as slow,
        simulator_in_thread(SimConfig(api_key=KEY)) as fast,
    ):
        going = Run(manifest, s3.url, slow, "--concurrency", "1", logs=tmp_path)
        try:
            slow.state.wait_for_sync(lambda s: s.inflight >= 1, within=60)
            shown = cli("status", s3.url, "--json", env=s3.env)
            second = cli("run", manifest, "--out", s3.url, "--no-progress", env={**env_for(fast), **s3.env})
            other = cli(
                "run", manifest, "--out", f"{s3.url}-other", "--no-progress", env={**env_for(fast), **s3.env}
            )
            assert going.process.poll() is None, "the first run was still going on"
        finally:
            going.kill()
        found = json.loads(shown.out)  # status knows of a run on this machine
        assert found["running"] is True and found["pid"] == going.process.pid, found
        assert found["in_flight"] == 1 and found["maybe_billed"] == 0, found
        assert second.code == 75, second.out + second.err
        assert f"another run on this machine is using {s3.url}" in second.err
        assert other.code == 0, other.err  # a run on another prefix: not held
        assert fast.state.requests_total == TASKS  # the other prefix's tasks; none of the second run's
        after = cli("run", manifest, "--out", s3.url, "--no-progress", env={**env_for(fast), **s3.env})
    assert after.code == 0, after.err  # the killed run's lock went with it
    assert sorted(str(r["id"]) for r in lines(s3, "results")) == [f"t{i}" for i in range(TASKS)]


def test_a_run_on_a_store_stopped_while_images_are_fetched_keeps_the_answer_there_not_bought_again(
    s3: S3, cli: Callable[..., Outcome], write: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two SIGTERMs while a paid answer's link is fetched, on a store: in a DIR the task is left pending
    and its kept answer listed in answers/.to-finish.jsonl for the next run, but neither that list nor an
    answer no line names goes up to a store, and the staging folder went: the next run bought the answer
    again. On a store the task fails, its line naming the kept answer, and both go up: not bought again."""
    import os
    import signal

    import anyio

    from batch.running.client import ApiClient

    async def stalled(self: ApiClient, url: str) -> bytes:
        os.kill(os.getpid(), signal.SIGTERM)  # the run's own handler stops it
        await anyio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # and cancels what is in flight
        await anyio.sleep(3600)
        raise AssertionError("not cancelled")

    monkeypatch.setattr(ApiClient, "download", stalled)
    manifest = write("tasks:\n  - {kind: generate, id: cat, prompt: a cat}\n")
    env = {**s3.env}
    with simulator_in_thread(SimConfig(api_key=KEY, answers=frozenset({"url"}))) as sim:
        env.update(env_for(sim))
        stopped = cli("run", manifest, "--out", s3.url, "--no-progress", "--grace", "60", env=env)
        monkeypatch.undo()
        assert stopped.code == 75, stopped.err
        [line] = lines(s3, "results")
        assert line["status"] == "failed" and line["error"]["type"] == "interrupted", line  # type: ignore[index]
        assert str(line["answer_file"]) in s3.objects()  # the paid answer, with its link, in the store
        resumed = cli("run", manifest, "--out", s3.url, "--no-progress", env=env)
        requests = sim.state.requests_total
    assert resumed.code == 1 and requests == 1, resumed.err  # failed for good: not bought again


def test_a_kept_stage_folder_a_run_still_works_in_is_left_to_it(
    manifest: Path, s3: S3, cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    """`--stage DIR` given a kept staging folder uploads what it holds, then empties it. Given the folder a
    live run works in, a dry run (which takes no lock of the store) emptied it under that run, which then
    lost a paid answer (74). A dry run takes a new or empty folder (64); a run from elsewhere (another
    machine's lock of the store: its own cache folder) finds the folder's own lock held (75)."""
    stage = tmp_path / "stage"
    with simulator_in_thread(SimConfig(api_key=KEY, latency=60)) as slow:
        going = Run(manifest, s3.url, slow, "--concurrency", "1", "--stage", str(stage), logs=tmp_path)
        try:
            slow.state.wait_for_sync(lambda s: s.inflight >= 1, within=60)
            held = sorted(path.name for path in stage.iterdir())
            env = {**env_for(slow), **s3.env}
            dry = cli("run", manifest, "--out", s3.url, "--stage", stage, "--dry-run", env=env)
            elsewhere = {**env, "XDG_CACHE_HOME": str(tmp_path / "another-machine")}
            other = cli("run", manifest, "--out", s3.url, "--stage", stage, "--no-progress", env=elsewhere)
            assert sorted(path.name for path in stage.iterdir()) == held  # left as it was
            assert going.process.poll() is None, "the first run was still going on"
        finally:
            going.kill()
    assert dry.code == 64 and "a dry run takes a new or empty folder" in dry.err, dry.err
    assert other.code == 75 and "another run is using" in other.err, other.err
    assert slow.state.requests_total == 1  # the first run's only


def test_status_of_a_store_while_a_run_is_on_it_says_it_cannot_tell_not_that_none_is(
    manifest: Path, store: S3, cli: Callable[..., Outcome], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store has no lock, so `status` cannot know whether a run on another machine is on it. It said `no
    run is in progress` (`"running": false`) of one that was, and an operator or a script then starts a
    second run on the URL: both pay. It says what the store shows: that it cannot tell, and that the last
    run has no end there (going on, or killed), and when that run last wrote to the store."""
    s3 = store
    # each request held a minute: the run is going on while status reads the store; it holds another
    # machine's lock (its own cache folder), not this one's
    with simulator_in_thread(SimConfig(api_key=KEY, latency=60)) as sim:
        with monkeypatch.context() as elsewhere:
            elsewhere.setenv("XDG_CACHE_HOME", str(tmp_path / "another-machine"))
            going = Run(manifest, s3.url, sim, "--concurrency", "1", logs=tmp_path)
        try:
            # a request in flight: its `sent` line went up to the store before it left
            sim.state.wait_for_sync(lambda s: s.inflight >= 1, within=60)
            shown = cli("status", s3.url, env=s3.env)
            found = cli("status", s3.url, "--json", env=s3.env)
            assert going.process.poll() is None, "the run was still going on"
        finally:
            going.kill()
    assert shown.code == 0 and found.code == 0, shown.err + found.err
    assert "no run is in progress" not in shown.out and "did not end cleanly" not in shown.out
    assert "cannot tell whether a run is in progress" in shown.out
    assert re.search(
        r"^last run: started \S+, no end in the store: still running, or stopped without its end \(killed\); "
        r"it last wrote there \d+ s ago \(\S+\)$",
        shown.out,
        re.MULTILINE,
    ), shown.out
    status = json.loads(found.out)
    assert status["running"] is None and status["pid"] is None
    last = status["last_run"]
    assert last["ended"] is None and last["exit_code"] is None
    written = datetime.fromisoformat(last["last_written"])
    assert datetime.fromisoformat(last["started"]) <= written + timedelta(seconds=1)
    assert 0 <= last["seconds_since_written"] < 60


def test_a_staging_folder_kept_when_the_store_failed_goes_up_with_the_next_run_not_bought_again(
    manifest: Path, s3: S3, cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    """The bucket is deleted mid-run: the run stops (74) and keeps its staging folder, naming it, since
    it holds paid answers the store lacks. The next run, given it with --stage, uploads them before it
    sends anything: no task is paid twice, and each has one result in the store."""
    with simulator_in_thread(SimConfig(api_key=KEY, latency=0.3)) as sim:
        first = Run(manifest, s3.url, sim, "--concurrency", "3", logs=tmp_path)
        sim.state.wait_for_sync(lambda s: s.requests_total >= 3, within=60)
        deadline = datetime.now() + timedelta(seconds=30)
        while s3.fs.exists(s3.bucket):  # an upload may land between the objects' removal and the bucket's
            assert datetime.now() < deadline, "the bucket could not be deleted"
            with contextlib.suppress(OSError):
                s3.fs.rm(s3.bucket, recursive=True)
            s3.fs.invalidate_cache()
        code, out, err = first.finish()
        assert code == 74, err
        kept = re.search(r"the staging folder (\S+) of \S+ is kept: .* --stage (\S+) ", err)
        assert kept is not None and kept[1] == kept[2], err
        assert f"run the same command again with --stage {kept[1]} to resume" in out, out
        paid_first = sum(1 for r in sim.state.records if r.billed_tokens > 0)
        assert paid_first > 0
        s3.fs.mkdir(s3.bucket)  # the bucket made again, empty: every answer is in the kept folder alone
        resumed = cli(
            "run",
            manifest,
            "--out",
            s3.url,
            "--stage",
            kept[1],
            "--no-progress",
            env={**env_for(sim), **s3.env},
        )
        assert resumed.code == 0, resumed.err
        assert f"{paid_first} already done" in resumed.out, resumed.out
        paid = Counter(r.task_id for r in sim.state.records if r.billed_tokens > 0)
    assert sorted(paid) == [f"t{i}" for i in range(TASKS)] and set(paid.values()) == {1}, paid
    assert sorted(str(r["id"]) for r in lines(s3, "results")) == [f"t{i}" for i in range(TASKS)]
    assert len(lines(s3, "usage")) == TASKS


def resumed_on_stage(
    cli: Callable[..., Outcome], manifest: Path, s3: S3, stage: Path, sim: RunningSimulator
) -> Outcome:
    """The run after the kills, on the store with the killed runs' --stage folder, left alone: ended 0."""
    env = {**env_for(sim, MAAS_ENDPOINT="ep"), **s3.env}
    resumed = cli("run", manifest, "--out", s3.url, "--stage", stage, "--no-progress", env=env)
    assert resumed.code == 0, resumed.err
    return resumed


def test_a_kept_answers_ledger_line_booked_at_the_start_goes_up_to_the_store(
    s3: S3, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """A run on a store killed once a chat answer came and was kept (its carried line written), before
    its ledger line: the next run, given its staging folder, uploads its log and keeps the carried answer
    (local state, never in the store), then books the ledger line from it at its start (runlog.recover) and
    finishes the task from the answer. That booking
    was made before the mirror started, whose offsets began after it: it never went up, and the store
    showed the answer's request maybe billed, in no cost, its task's cost in no ledger."""
    manifest = write("tasks:\n  - {kind: chat, id: it, model: gemini-2.5-flash, prompt: a question}\n")
    stage = tmp_path / "stage"
    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        killed_at("ledger_line", manifest, s3.url, sim.base_url, "--stage", str(stage), env=s3.env)
        assert not lines(s3, "usage")  # killed before its ledger line
        resumed_on_stage(cli, manifest, s3, stage, sim)
        [paid] = sim.state.records  # bought once
    [line] = lines(s3, "usage")  # booked once, in the store
    assert line["request_id"] == paid.request_id and line["total_tokens"] == paid.billed_tokens
    [record] = lines(s3, "results")
    assert record["status"] == "succeeded" and record["usage"]["total_tokens"] == paid.billed_tokens  # type: ignore[index]
    shown = cli("status", s3.url, "--json", env=s3.env)
    assert shown.code == 0, shown.err
    found = json.loads(shown.out)
    assert found["maybe_billed"] == 0 and found["succeeded"] == 1, found
    shown = cli("report", s3.url, "--json", env=s3.env)
    assert shown.code == 0, shown.err
    assert json.loads(shown.out)["tokens"] == paid.billed_tokens, shown.out


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("shape", "points"),
    [
        ("links", ("first_record",)),
        ("links", ("result_line",)),
        ("links", ("first_record", "result_line")),
        ("big-inline-image", ("first_record",)),
        ("big-inline-image", ("result_line",)),
        # a carried answer the resume wrote to answers/ (runlog.recover), and the resume killed
        ("chat-text", ("first_record", "result_line")),
        # the resume killed at its start, as it lists the kept answer to finish: before its mirror started
        ("links", ("first_record", "listing")),
        ("chat-text", ("first_record", "listing")),
    ],
    ids=lambda value: "+".join(value) if isinstance(value, tuple) else value,
)
def test_an_answer_a_killed_run_kept_in_its_stage_folders_answers_is_not_bought_again(
    shape: str,
    points: tuple[str, ...],
    s3: S3,
    cli: Callable[..., Outcome],
    write: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """A run on a store killed (SIGKILL) once a paid answer was kept in its staging folder's answers/ (an
    answer of image links, before or after its images were fetched; an inline image over 64 KiB), before
    its task's result line; then, given the folder with --stage, the next run (`points`: killed in turn,
    a second kill during the resume: before its task's line, or at its start, before its mirror started,
    whose folder --stage then refused as no kept one, 64), and the last. The folder was emptied but for
    answers/.carried.jsonl before the store was assembled in it, so the kept answer was gone and the
    resume bought it again (a carried one too, once a killed resume had written it to answers/). As in a
    directory, the next run finishes the task from it: bought once, its ledger line booked once in the
    store, nothing maybe billed."""
    task, options = {
        "links": (
            "{kind: generate, id: it, model: gpt-image-1, prompt: two cats, n: 2}",
            {"answers": frozenset({"url"})},
        ),
        **{shape: WHOLE[shape] for shape in ("big-inline-image", "chat-text")},
    }[shape]
    manifest = write(f"tasks:\n  - {task}\n")
    stage = tmp_path / "stage"
    with simulator_in_thread(SimConfig(api_key=KEY, **options)) as sim:
        for point in points:
            killed_at(point, manifest, s3.url, sim.base_url, "--stage", str(stage), env=s3.env)
        resumed = resumed_on_stage(cli, manifest, s3, stage, sim)
        [paid] = sim.state.records  # bought once
    assert "finished from the answer a killed run paid for" in resumed.err, resumed.err
    [line] = lines(s3, "usage")  # booked once, in the store
    assert line["request_id"] == paid.request_id and line["total_tokens"] == paid.billed_tokens
    [record] = lines(s3, "results")
    assert record["status"] == "succeeded" and record["usage"]["total_tokens"] == paid.billed_tokens  # type: ignore[index]
    objects = s3.objects()
    for name in record["files"]:  # type: ignore[attr-defined]
        assert objects[name].startswith(b"\x89PNG")
    shown = cli("status", s3.url, "--json", env=s3.env)
    assert shown.code == 0, shown.err
    found = json.loads(shown.out)
    assert found["maybe_billed"] == 0 and found["succeeded"] == 1, found
    shown = cli("report", s3.url, "--json", env=s3.env)
    assert shown.code == 0, shown.err
    assert json.loads(shown.out)["tokens"] == paid.billed_tokens, shown.out
