"""kill -9 at random moments, again and again, then resume: nothing finished is lost or bought again, the
output directory stays consistent, and every token the server billed is either in the ledger or in a
request the tool itself reported as maybe billed.

The kills are placed by the simulator's own count of requests (a random number of new requests after each
start), not by sleeping, so they land all over a run: at start-up, mid-request, mid-write."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from PIL import Image

from batch.errors import OutputError
from batch.output.report import status
from batch.output.store import OutputDir, finished_results
from batch.simulator import SimConfig, simulator_in_thread
from tests.conftest import KEY, ROOT, Outcome, Run, env_for, ledger, results
from tests.stub import stub_server

TASKS = 100


def finished(out: Path) -> set[str]:
    return {task_id for task_id, _ in finished_results(out / "results.jsonl")}


def check_directory(out: Path, decoded: dict[str, tuple[int, ...]] | None = None) -> None:
    """What any kill may leave: whole lines (but a torn last one), whole files for every finished task.
    With `decoded`, a file found decodable by an earlier check is not decoded again while it is the same
    file (inode, size, times): the checks after each kill decoded every image of every run again."""
    decoded = {} if decoded is None else decoded
    for task_id, _ in finished_results(out / "results.jsonl"):
        assert (out / "images").is_dir(), task_id
    for line in (out / "results.jsonl").read_bytes().splitlines(keepends=True):
        if line.endswith(b"\n"):
            for path in json.loads(line)["files"]:
                found = os.stat(out / path)
                identity = (found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)
                if decoded.get(path) == identity:
                    continue
                with Image.open(out / path) as image:
                    image.load()  # complete and decodable
                decoded[path] = identity


# Answer shapes whose window between "paid" and "saved" differs from the default's: image links, fetched
# after the answer is in the ledger (kept in answers/ first, finished from there after a kill); streams
# that carry a running usage on every chunk and end without [DONE] (a cut one is billed at what it had
# counted, and flagged maybe billed).
SHAPES = {"default": (), "url": ("url",), "running-usage": ("usage_every_chunk", "no_done")}
# SIGKILLs per shape, 50 in all; each costs a process's start (most of a second). Links take half: their
# own window (a kill while an answer's images are fetched) is long, and 10 kills leave about 6 kept answers
# to finish (a resume that bought them again failed this 3 runs in 3). Streams of a running usage keep 20:
# with 10, a cut stream's usage so far not flagged maybe billed failed it 2 runs in 6, with 20, 5 in 5.
KILLS = {"default": 20, "url": 10, "running-usage": 20}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_kill_nine_at_random_moments_then_resume(
    shape: str, write: Callable[..., Path], tmp_path: Path
) -> None:
    rng = random.Random(20261122)
    manifest = write(
        "tasks:\n"
        + "".join(
            f"  - {{kind: generate, id: img-{i}, prompt: picture {i}, n: {1 + i % 2}}}\n"
            for i in range(TASKS * 3 // 4)
        )
        + "".join(
            f"  - {{kind: chat, id: chat-{i}, model: gemini-2.5-flash, prompt: question {i}, "
            f"stream: {str(i % 2 == 0).lower()}}}\n"
            for i in range(TASKS // 4)
        )
    )
    out = tmp_path / "out"
    # A hostile server too: answers cut or reset on the way (retried, maybe billed), answers whole but
    # unusable (kept, never bought again), and 5xx.
    config = SimConfig(
        api_key=KEY,
        latency=0.03,
        latency_jitter=0.8,
        seed=7,
        error_rate=0.05,
        faults={"reset": 0.04, "truncate": 0.04, "stream_cut": 0.04, "bad_image": 0.02, "no_data": 0.02},
        answers=frozenset(SHAPES[shape]),
    )
    started = time.monotonic()
    with simulator_in_thread(config) as sim:
        state = sim.state
        kills = 0
        decoded: dict[str, tuple[int, ...]] = {}  # the files found whole after a kill, as they were then
        unfinished_in_killed_runs = 0  # tasks that had a request in a killed run but no result after it
        runs: list[tuple[int, int, set[str]]] = []  # (first record, end record, tasks done before the run)
        while kills < KILLS[shape]:
            done_before = finished(out) if out.exists() else set()
            first = state.requests_total
            run = Run(manifest, out, sim, "--concurrency", "6")
            target = first + rng.randint(0, 10)
            with contextlib.suppress(TimeoutError):  # the run may finish before reaching the target
                state.wait_for_sync(lambda s, t=target: s.requests_total + s.inflight >= t, within=60)
            if run.process.poll() is not None:  # it finished before the kill: that is fine too
                assert run.finish()[0] == 0
                runs.append((first, state.requests_total, done_before))
                break
            run.kill()
            kills += 1
            state.wait_for_sync(lambda s: s.inflight == 0, within=30)  # the server saw the disconnects
            check_directory(out, decoded)
            done_after = finished(out)
            records = state.records[first:]
            unfinished_in_killed_runs += len({r.task_id for r in records} - done_after)
            runs.append((first, state.requests_total, done_before))
        # the last run, left alone, completes the manifest (as many at once as the killed runs, its retries
        # after a twentieth of the default backoff: it waited 1-2 s of 5 for them)
        final_first = state.requests_total
        flags = ("--max-attempts", "20", "--concurrency", "6", "--backoff", "0.05", "--backoff-max", "0.5")
        code, stdout, stderr = Run(manifest, out, sim, *flags).finish(within=120)
        assert code in (0, 1), stdout + stderr
        runs.append(
            (
                final_first,
                state.requests_total,
                finished(out) - {r.task_id for r in state.records[final_first:]},
            )
        )
        records = list(state.records)
    seconds = time.monotonic() - started

    # every task exactly one line; succeeded, or failed on a whole answer that is kept; every file whole
    done = results(out)
    assert len(done) == TASKS
    for record in done.values():
        if record["status"] == "failed":
            assert record["error"]["type"] in ("bad_image", "broken_answer", "no_images", "no_choices"), (
                record
            )
            assert (out / record["answer_file"]).is_file()
    assert code == (1 if any(r["status"] == "failed" for r in done.values()) else 0)
    check_directory(out)
    assert not list(out.rglob("*.tmp"))

    # no request was ever sent for a task that was already done when its run started
    resent = sum(1 for first, end, before in runs for r in records[first:end] if r.task_id in before)
    assert resent == 0

    # answers paid for twice: at most the tasks left unfinished in flight by the kills, and the answers
    # garbled on the way (billed by the server, never received whole: asked again by design)
    paid = Counter(r.task_id for r in records if r.billed_tokens > 0)
    duplicates = sum(n - 1 for n in paid.values() if n > 1)
    garbled = sum(
        1 for r in records if r.billed_tokens > 0 and r.fault in ("reset", "truncate", "stream_cut")
    )
    assert duplicates <= unfinished_in_killed_runs + garbled

    # a whole answer that could not be used is never bought again by the run that got it (a kill before
    # its result line was written leaves the task unfinished: the next run asks once more)
    def run_and_attempt(record: Any) -> tuple[str, int]:
        tag, _, attempt = str(record.request_id).rpartition("/")[2].partition(".")
        return tag, int(attempt)

    for unusable in (r for r in records if r.fault in ("bad_image", "no_data")):
        tag, attempt = run_and_attempt(unusable)
        later = [
            r
            for r in records
            if r.task_id == unusable.task_id
            and run_and_attempt(r)[0] == tag
            and run_and_attempt(r)[1] > attempt
        ]
        assert later == [], unusable

    # every token the server billed is in the ledger, or in a request the tool reported as maybe billed
    ledger = [json.loads(line) for line in (out / "usage.jsonl").read_text().splitlines()]
    billed = {r.request_id: r.billed_tokens for r in records if r.billed_tokens > 0}
    flagged = set()
    for log in (out / "runs").glob("*.jsonl"):
        for entry in map(json.loads, log.read_text().splitlines()):
            if entry.get("maybe_billed") and "request_id" in entry:
                flagged.add(entry["request_id"])
    short = set()  # cut after a running usage: in the ledger at the count so far, and flagged
    for line in ledger:
        if line["request_id"] in flagged and billed[line["request_id"]] > line["total_tokens"]:
            short.add(line["request_id"])
        else:
            assert billed[line["request_id"]] == line["total_tokens"], line
    unrecorded = set(billed) - {line["request_id"] for line in ledger}
    assert unrecorded <= flagged, unrecorded - flagged
    ledger_total = sum(line["total_tokens"] for line in ledger)
    assert ledger_total + sum(billed[rid] for rid in unrecorded) <= sum(billed.values())
    assert ledger_total + sum(billed[rid] for rid in unrecorded | short) >= sum(billed.values())

    # an answer in the ledger and kept whole in answers/ (links kept before they are fetched, unusable
    # answers) is never bought again: a kill before its task's line leaves it for the next run to finish
    later_paid = Counter()
    for r in reversed(records):
        if r.billed_tokens > 0:
            later_paid[r.task_id] += 1
            if r.request_id in {line["request_id"] for line in ledger}:
                kept = out / "answers" / (r.request_id.replace("/", ".") + ".json")
                assert not kept.is_file() or later_paid[r.task_id] == 1, r
    # status counts exactly what the attempt logs flagged, whatever ended each run
    assert status(out)["maybe_billed"] == len(flagged)

    finished_from_kept = sum(
        err.read_text().count("finished from the answer a killed run paid for")
        for err in tmp_path.glob("*.err")
    )
    print(
        f"\nkill test: {kills} SIGKILLs + 1 clean run in {seconds:.1f} s; {len(records)} requests for "
        f"{TASKS} tasks, answers {shape} ({sum(r['status'] == 'failed' for r in done.values())} failed on unusable answers, "
        f"each bought once); tasks lost: 0; duplicate result lines: 0; re-sent for done tasks: {resent}; "
        f"paid twice: {duplicates} (bound: {unfinished_in_killed_runs} tasks unfinished in flight at the "
        f"kills + {garbled} answers garbled on the way); billed {sum(billed.values()):,} tokens = ledger "
        f"{ledger_total:,} + {sum(billed[rid] for rid in unrecorded):,} in {len(unrecorded)} requests the tool "
        f"flagged maybe billed ({len(flagged)} flagged in all); {finished_from_kept} tasks finished from answers "
        "a killed run kept"
    )


def test_an_answer_whose_result_line_was_never_written_is_counted_maybe_billed(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window a kill can hit between a billed answer and its task's result line: the attempt log's
    `done` line comes after the result line, so the request still counts as maybe billed (its answer was
    not saved) rather than as answered. Here the result line's write fails (a full disk) to hold that
    moment still."""
    append = OutputDir.append

    async def no_result_line(self: OutputDir, journal: Any, record: Any) -> None:
        if journal is self.results:
            raise OutputError("cannot write results.jsonl: no space left on the device")
        await append(self, journal, record)

    monkeypatch.setattr(OutputDir, "append", no_result_line)
    job = write("tasks:\n  - {kind: chat, id: only, model: gemini-2.5-flash, prompt: hello}\n")
    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        done = cli("run", job, "--out", out, "-c", "1", "--no-progress", env=env_for(sim))
        assert done.code == 74, done.err
        assert sim.state.billed_requests == 1
    assert len((out / "usage.jsonl").read_text().splitlines()) == 1  # billed: in the ledger at once
    assert status(out)["maybe_billed"] == 1  # and not saved: the next run asks again, a paid duplicate


def test_a_requests_logged_seconds_are_its_own_not_the_saving_of_its_result(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer's `done` line is written after its task's result line; its seconds are still the
    request's (what export's attempts table and report show), not the time the result took to save."""
    import anyio

    append = OutputDir.append

    async def slow_result_line(self: OutputDir, journal: Any, record: Any) -> None:
        if journal is self.results:
            await anyio.sleep(0.5)  # a slow disk
        await append(self, journal, record)

    monkeypatch.setattr(OutputDir, "append", slow_result_line)
    job = write("tasks:\n  - {kind: chat, id: only, model: gemini-2.5-flash, prompt: hello}\n")
    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        done = cli("run", job, "--out", out, "-c", "1", "--no-progress", env=env_for(sim))
        assert done.code == 0, done.err
    lines = [
        json.loads(line) for log in (out / "runs").glob("*.jsonl") for line in log.read_text().splitlines()
    ]
    answered = [line for line in lines if line.get("outcome") == "answered"]
    assert len(answered) == 1 and answered[0]["seconds"] < 0.4, answered


@pytest.mark.timeout(90)
@pytest.mark.parametrize("edited", [False, True])
def test_a_kill_while_images_are_downloaded_is_finished_from_the_kept_answer_not_bought_again(
    edited: bool, write: Callable[..., Path], tmp_path: Path
) -> None:
    """A generate answer of links (`url_flaky`: each file's first GET answers 503, and the download waits
    out its backoff) is in the ledger when the run is killed with SIGKILL mid-download. The resume bought
    it again (two billed answers, one task), and status called the first "maybe billed" though the
    ledger records it. The answer is kept before its images are fetched; the next run finishes the task
    from it: the links fetched again, nothing sent to the API. A task whose request changed in between
    (`edited`: its prompt) is sent anew: the kept answer is of the request it had then."""
    task = "tasks:\n  - {{kind: generate, id: pair, model: gpt-image-1, prompt: {}, n: 2}}\n"
    manifest = write(task.format("two cats"))
    out = tmp_path / "out"
    config = SimConfig(api_key=KEY, answers=frozenset({"url_flaky"}), retry_after=0)
    with simulator_in_thread(config) as sim:
        state = sim.state
        run = Run(manifest, out, sim, "--backoff", "30", "--backoff-max", "30")
        state.wait_for_sync(lambda s: len(s.downloads) >= 1, within=60)  # the first GET: a 503, then 30 s
        run.kill()
        assert state.requests_total == 1 and not (out / "results.jsonl").read_bytes()
        assert len((out / "usage.jsonl").read_text().splitlines()) == 1

        if edited:
            manifest = write(task.format("two black cats"))
        code, stdout, stderr = Run(manifest, out, sim, "--backoff", "0", "--backoff-max", "0").finish()
        assert code == 0, stdout + stderr
        assert state.requests_total == (2 if edited else 1)  # not bought again, unless it changed
        assert "1 answer(s) a killed or stopped run paid for are kept in answers/" in stderr, (
            stderr
        )  # said, both ways
        assert not any(d.authorized for d in state.downloads)
    if edited:
        assert results(out)["pair"]["prompt"] == "two black cats" and len(ledger(out)) == 2
        return
    record = results(out)["pair"]
    assert record["status"] == "succeeded" and len(record["files"]) == 2, record
    for path in record["files"]:
        with Image.open(out / path) as image:
            image.load()
    [line] = [json.loads(li) for li in (out / "usage.jsonl").read_text().splitlines()]
    assert record["request_id"] == line["server_request_id"] and record["cost"] == pytest.approx(line["cost"])
    assert record["usage"]["total_tokens"] == line["total_tokens"]
    found = status(out)
    assert found["maybe_billed"] == 0 and found["succeeded"] == 1, found
    assert not (out / "answers" / ".to-finish.jsonl").read_text()  # finished: nothing left to finish


# A run killed (SIGKILL: nothing of it runs after) at one chosen moment of a paid answer's life, as the
# `maas-batch run ARGS` command: `python -c KILLED_AT ARGS`, KILL_AT naming the moment.
#   keeping: as the answer's body is about to be kept in answers/ (its `kept` run-log line written)
#   ledger_line: as the answer's ledger line is about to be written to usage.jsonl
#   first_record: once the first of the answer's two records is written, its body kept in answers/ or its
#     ledger line in usage.jsonl (whichever the run writes first): the moment between the two
#   result_line: before its task's result line is written (both records written)
#   listing: at the start, before the answers a killed run kept are listed to finish (answers/.to-finish.jsonl),
#     their missing ledger lines booked
#   emptying: at the start, once the killed runs' logs are closed, before the answers they carried
#     (answers/.carried.jsonl) are emptied
#   emptied: once the carried answers' file is emptied during the run (its task's result line written:
#     here at once, not past CARRIED_SPARE)
#   POINT/flushed: at POINT, each `done` line of the run log written at once, as the next request's `sent`
#     line writes the waiting ones in a run of many tasks
KILLED_AT = """
import os, signal, sys
import batch.output.runlog as runlog
from batch.output.store import OutputDir

append, save_answer, point = OutputDir.append, OutputDir.save_answer, os.environ["KILL_AT"]
if point.endswith("/flushed"):
    point, done = point.removesuffix("/flushed"), runlog.RunLog.done

    def done_written(self, *args, **options):
        done(self, *args, **options)
        self._flush()

    runlog.RunLog.done = done_written

def die():
    os.kill(os.getpid(), signal.SIGKILL)

async def append_or_die(self, journal, record):
    if point == "result_line" and journal is self.results:
        die()
    if point == "ledger_line" and journal is self.usage:
        die()
    await append(self, journal, record)
    if point == "first_record" and journal is self.usage:
        die()

def save_then_die(self, name, data):
    if point == "keeping":
        die()
    kept = save_answer(self, name, data)
    if point == "first_record":
        die()
    return kept

write_atomic = runlog.write_atomic

def write_or_die(path, data, **options):
    if point == "listing" and path.name == runlog.TO_FINISH:
        die()
    return write_atomic(path, data, **options)

OutputDir.append, OutputDir.save_answer, runlog.write_atomic = append_or_die, save_then_die, write_or_die

from batch.output.store import Journal

empty_carried, empty = runlog._empty_carried, Journal.empty

def empty_carried_or_die(root):
    if point == "emptying":
        die()
    empty_carried(root)

def empty_then_die(self):
    empty(self)
    if point == "emptied":
        die()

runlog._empty_carried, Journal.empty = empty_carried_or_die, empty_then_die
if point == "emptied":
    runlog.CARRIED_SPARE = -1
from batch.cli import command
command()
"""


def killed_at(
    point: str, manifest: Path, out: Path | str, base_url: str, *args: str, env: Mapping[str, str] = {}
) -> None:
    """`maas-batch run MANIFEST --out OUT ARGS` killed at `point` (KILLED_AT); `env`: more variables."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}, **env}
    env.update(
        MAAS_API_KEY=KEY, MAAS_BASE_URL=base_url, MAAS_ENDPOINT="ep", PYTHONPATH=str(ROOT), KILL_AT=point
    )
    argv = [sys.executable, "-c", KILLED_AT, "run", str(manifest), "--out", str(out), "--no-progress", *args]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "points",
    [("first_record",), ("result_line",), ("first_record", "result_line"), ("first_record", "listing")],
    ids="+".join,
)
def test_a_kill_at_any_moment_after_an_answer_is_kept_neither_buys_it_again_nor_counts_it_twice(
    points: tuple[str, ...], write: Callable[..., Path], tmp_path: Path
) -> None:
    """An answer of links, killed at each moment after it is kept (`points`: one run killed at each, in
    turn, then a run left alone). Its ledger line was written before the answer was kept, so a kill
    between the two (`first_record`) left a paid answer in the ledger and nowhere else: the resume bought
    it again, about once in 10 kills around downloads. The answer is kept first now, and the next run
    books its ledger line from the run log, once, however many runs are killed after (a kill of the
    resume before its task's line: `first_record+result_line`; once it booked the line, before it
    listed the answer to finish: `first_record+listing`). Nothing is bought twice; the ledger, the
    result line and status count it once, at what the server billed."""
    task = "{kind: generate, id: pair, model: gpt-image-1, prompt: two cats, n: 2}"
    answers = {"answers": frozenset({"url"})}
    out, paid, line, record, stderr = killed_then_resumed(task, answers, points, write, tmp_path, "pair")
    assert record["status"] == "succeeded" and len(record["files"]) == 2, record
    assert record["usage"]["total_tokens"] == paid.billed_tokens
    assert record["cost"] == pytest.approx(line["cost"])
    found = status(out)
    assert found["maybe_billed"] == 0 and found["succeeded"] == 1, found
    assert "finished from the answer a killed run paid for" in stderr
    assert not (out / "answers" / ".to-finish.jsonl").read_text()


# Answers fetched whole, nothing to download: each kept first too (carried with its ledger line in
# answers/.carried.jsonl, or a big one in answers/), as the manifest's task and the simulator's config that
# make one.
WHOLE = {
    "inline-image": ("{kind: generate, id: it, model: gpt-image-1, prompt: two cats, n: 2}", {}),
    "big-inline-image": (
        "{kind: generate, id: it, model: gpt-image-1, prompt: two cats}",
        {"image_mode": "realistic"},
    ),
    "chat-text": ("{kind: chat, id: it, model: gemini-2.5-flash, prompt: a question}", {}),
    "chat-stream": ("{kind: chat, id: it, model: gemini-2.5-flash, prompt: a question, stream: true}", {}),
    "chat-images": (
        "{kind: chat, id: it, model: gemini-2.5-flash-image, prompt: a cat}",
        {"answers": frozenset({"message_images"})},
    ),
}


def killed_then_resumed(
    task: str,
    options: dict[str, Any],
    points: tuple[str, ...],
    write: Callable[..., Path],
    tmp_path: Path,
    task_id: str = "it",
) -> tuple[Path, Any, dict[str, Any], dict[str, Any], str]:
    """A one-task run (`task`, the simulator's `options`) killed at each of `points` in turn, then run to
    its end: its out folder, the one request paid (bought once), its one ledger line (booked once), the
    task's result line and the last run's stderr."""
    manifest = write(f"tasks:\n  - {task}\n")
    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY, **options)) as sim:
        for point in points:
            killed_at(point, manifest, out, sim.base_url)
        code, stdout, stderr = Run(manifest, out, sim).finish()
        assert code == 0, stdout + stderr
        [paid] = sim.state.records  # bought once
    [line] = ledger(out)  # booked once
    assert line["request_id"] == paid.request_id and line["total_tokens"] == paid.billed_tokens
    return out, paid, line, results(out)[task_id], stderr


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "points",
    [("ledger_line",), ("first_record",), ("result_line",), ("first_record", "listing")],
    ids="+".join,
)
@pytest.mark.parametrize("shape", sorted(WHOLE))
def test_a_kill_between_a_whole_answers_ledger_line_and_its_result_line_does_not_buy_it_again(
    shape: str, points: tuple[str, ...], write: Callable[..., Path], tmp_path: Path
) -> None:
    """An answer with nothing to fetch (inline images, chat text, a stream, a chat's inline pictures),
    killed once it came, before its task's line: before its ledger line (`ledger_line`), after it
    (`first_record`: for an answer kept in answers/, once that file is written), or once its images are
    saved (`result_line`); then the resume killed as it lists the answer to finish (`+listing`). Its ledger
    line was written first and its body kept nowhere, so the resume bought it again: a kill in the
    window, which images decoded and saved in a thread hold open for milliseconds. The answer is kept
    first now (carried with its ledger line in answers/.carried.jsonl, or a big one in answers/): the next
    run books its line once and finishes the task from it. Nothing is bought or counted twice."""
    out, paid, line, record, stderr = killed_then_resumed(*WHOLE[shape], points, write, tmp_path)
    assert record["status"] == "succeeded", record
    assert record["files"] or record["text"], record
    for path in record["files"]:
        with Image.open(out / path) as image:
            image.load()
    assert record["usage"]["total_tokens"] == paid.billed_tokens
    assert record["cost"] == pytest.approx(line["cost"])
    found = status(out)
    assert found["maybe_billed"] == 0 and found["succeeded"] == 1, found
    assert "finished from the answer a killed run paid for" in stderr
    assert not (out / "answers" / ".to-finish.jsonl").read_text()


@pytest.mark.timeout(90)
def test_a_big_answer_kept_for_a_kill_leaves_answers_once_its_task_is_saved(
    write: Callable[..., Path], tmp_path: Path
) -> None:
    """An answer over CARRIED_MAX (a real image's base64) is kept in answers/ before its ledger line, for
    a kill's window only: once its task's line is written, its image is the answer, and the copy goes
    (else every inline image would be on the disk twice)."""
    task, options = WHOLE["big-inline-image"]
    manifest = write(f"tasks:\n  - {task}\n")
    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY, **options)) as sim:
        code, stdout, stderr = Run(manifest, out, sim).finish()
        assert code == 0, stdout + stderr
        [paid] = sim.state.records
    assert paid.billed_tokens and len(ledger(out)) == 1
    record = results(out)["it"]
    assert record["status"] == "succeeded" and len(record["files"]) == 1 and record.get("answer_file") is None
    kept = [
        line
        for log in (out / "runs").glob("*.jsonl")
        for line in map(json.loads, log.read_text().splitlines())
    ]
    assert [line["event"] for line in kept if line.get("event") == "kept"] == ["kept"]
    assert not any("answer" in line for line in kept if line.get("event") == "kept")  # in answers/, then
    assert not [path.name for path in (out / "answers").iterdir() if not path.name.startswith(".")]


@pytest.mark.timeout(90)
def test_a_kill_between_a_chat_answers_record_and_its_picture_is_finished_from_the_kept_answer(
    write: Callable[..., Path], tmp_path: Path
) -> None:
    """A chat answer of text and a linked picture (`message.images`, an image model's) has the same
    window as an image answer of links: killed between its two records, it is finished from the kept
    answer by the next run, its ledger line booked once, not bought again."""
    picture = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(picture, "PNG")

    async def handler(request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.Response(body=picture.getvalue(), content_type="image/png")
        image = {"type": "image_url", "image_url": {"url": f"http://{request.host}/files/a.png"}}
        message = {"role": "assistant", "content": "a cat", "images": [image]}
        usage = {"prompt_tokens": 3, "completion_tokens": 1290, "total_tokens": 1293}
        body = {"id": "chatcmpl-1", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        return web.json_response({**body, "usage": usage})

    manifest = write("tasks:\n  - {kind: chat, id: cat, model: gemini-2.5-flash-image, prompt: a cat}\n")
    out = tmp_path / "out"
    with stub_server(handler) as stub:
        killed_at("first_record", manifest, out, stub.base_url)
        env = {
            "MAAS_API_KEY": KEY,
            "MAAS_BASE_URL": stub.base_url,
            "MAAS_ENDPOINT": "ep",
            "PYTHONPATH": str(ROOT),
        }
        done = subprocess.run(
            [sys.executable, "-m", "batch", "run", str(manifest), "--out", str(out), "--no-progress"],
            env={**{k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}, **env},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        assert sum(seen["method"] == "POST" for seen in stub.requests) == 1  # bought once
    [line] = ledger(out)
    assert line["total_tokens"] == 1293
    record = results(out)["cat"]
    assert record["status"] == "succeeded" and record["text"] == "a cat" and len(record["files"]) == 1
    assert status(out)["maybe_billed"] == 0


@pytest.mark.timeout(90)
def test_a_kill_before_an_answer_of_links_is_kept_still_books_what_it_cost(
    write: Callable[..., Path], tmp_path: Path
) -> None:
    """Killed once the answer came (paid, its ledger line in the run log's `kept` line) but before its
    body was kept in answers/: nothing to finish the task from, so the resume buys it again. The first
    answer was billed all the same, at a usage the run knew: its line is booked from the run log, and the
    request counts maybe billed, in the cost. It was in no ledger and no cost, though its ledger line
    was written first before answers were kept first."""
    manifest = write("tasks:\n  - {kind: generate, id: pair, model: gpt-image-1, prompt: two cats, n: 2}\n")
    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY, answers=frozenset({"url"}))) as sim:
        killed_at("keeping", manifest, out, sim.base_url)
        code, stdout, stderr = Run(manifest, out, sim).finish()
        assert code == 0, stdout + stderr
        paid = sim.state.records
    first, second = (record for record in paid if record.billed_tokens)
    lines = ledger(out)
    assert [line["request_id"] for line in lines] == [first.request_id, second.request_id], lines
    assert [line["total_tokens"] for line in lines] == [first.billed_tokens, second.billed_tokens]
    assert results(out)["pair"]["status"] == "succeeded"
    found = status(out)
    assert found["maybe_billed"] == 1 and found["maybe_billed_counted"] == 1, found


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "points",
    [("emptied",), ("ledger_line", "emptying"), ("first_record", "emptying"), ("result_line", "emptying")],
    ids="+".join,
)
@pytest.mark.parametrize("shape", ["chat-text", "chat-stream", "inline-image"])
def test_a_kill_as_the_carried_answers_are_emptied_neither_buys_again_nor_counts_twice(
    shape: str, points: tuple[str, ...], write: Callable[..., Path], tmp_path: Path
) -> None:
    """The file that carries answers for a kill's window (answers/.carried.jsonl) is emptied during a run
    only once no carried answer's task lacks its result line (`emptied`: killed right after), and at the
    start only once the killed runs' logs are closed, their answers booked and listed to finish
    (`emptying`: the start killed right before, after a run killed before its ledger line, after it, or
    before its result line). Either way the next run neither buys the answer again nor counts it twice."""
    out, paid, _, record, _ = killed_then_resumed(*WHOLE[shape], points, write, tmp_path)
    assert record["status"] == "succeeded" and record["usage"]["total_tokens"] == paid.billed_tokens, record
    found = status(out)
    assert found["maybe_billed"] == 0 and found["succeeded"] == 1, found
    assert not (out / "answers" / ".carried.jsonl").read_bytes()
    assert (
        not (out / "answers" / ".to-finish.jsonl").exists()
        or not (out / "answers" / ".to-finish.jsonl").read_text()
    )


@pytest.mark.timeout(120)
def test_a_run_of_chat_answers_leaves_no_answer_in_its_run_log_and_no_carried_file_to_speak_of(
    write: Callable[..., Path], tmp_path: Path
) -> None:
    """Each chat answer is carried for a kill's window (before its ledger line, until its task's result
    line): in answers/.carried.jsonl, emptied as the run goes, not in the run log, where 200 tasks' answers
    stayed for good, a second copy beside results.jsonl's, read whole by status and report and uploaded
    to a store (5,000 chat tasks: a run log of 5.2 MB, not 1.0)."""
    manifest = write(
        "tasks:\n"
        + "".join(
            f"  - {{kind: chat, id: t{i}, model: gemini-2.5-flash, prompt: question {i}}}\n"
            for i in range(200)
        )
    )
    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        code, stdout, stderr = Run(manifest, out, sim, "-c", "16").finish()
        assert code == 0, stdout + stderr
        assert len(sim.state.records) == 200
    texts = [record["text"] for record in results(out).values()]
    assert len(texts) == 200 and all(texts)
    [log] = (out / "runs").glob("*.jsonl")
    lines = log.read_text().splitlines()
    assert not [line for line in lines if json.loads(line).get("event") == "kept"]
    assert not [text for text in texts if json.dumps(text)[1:-1] in log.read_text()]
    carried = out / "answers" / ".carried.jsonl"
    assert len(carried.read_bytes().splitlines()) <= 2, carried.read_text()[:2000]
