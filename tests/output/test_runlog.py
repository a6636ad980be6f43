"""The reading side of the attempt log (batch.output.runlog): `account` and `recover` read its lines
through batch.running.records. No server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from batch.output.report import format_status, status
from batch.output.runlog import KeptAnswer, account, recover

START = {"event": "start", "at": "2025-01-02T03:04:05.000+00:00", "pid": 7, "tasks": 3, "manifest": "m.yaml"}
END = {"event": "end", "at": "2025-01-02T03:05:05.000+00:00", "exit_code": 0, "seconds": 60.0}


def write_log(path: Path, *lines: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"event": "sent", "requ')


def test_account_counts_requests_and_passes_on_each_runs_start_and_end_lines(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    sent = [{"event": "sent", "request_id": f"t/a.{i}", "task_id": "t", "t": 1.0} for i in range(4)]
    write_log(
        runs / "1.jsonl",
        START,
        *sent[:3],
        {"event": "done", "request_id": "t/a.0", "outcome": "answered", "status": 200},
        {"event": "done", "request_id": "t/a.1", "outcome": "failed", "maybe_billed": True},
        {"event": "odd"},
        END,
    )  # t/a.2 has no `done` line: maybe billed
    write_log(runs / "2.jsonl", START, sent[3])  # the last run, still going or gone
    gone = account(runs)
    assert (gone.requests, gone.maybe_billed, gone.in_flight) == (4, 3, 0)
    assert gone.runs == [[START, END], [START]], "start and end lines pass on whole, in their order"
    assert [list(line) for line in gone.runs[0]] == [list(START), list(END)]
    live = account(runs, live=True)
    assert (live.requests, live.maybe_billed, live.in_flight) == (4, 2, 1)


def test_recover_closes_only_the_runs_that_did_not_end(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    sent = {"event": "sent", "request_id": "fox/a.1", "task_id": "fox", "t": 1.0}
    write_log(runs / "1.jsonl", START, sent, END)
    write_log(
        runs / "2.jsonl", START, sent, {"event": "done", "request_id": "fox/a.1", "outcome": "answered"}
    )
    write_log(runs / "3.jsonl", START, sent, {**sent, "request_id": "owl/b.1", "task_id": "owl"})
    found = recover(runs)
    assert (found.runs, found.requests, dict(found.by_task)) == (
        2,
        ["fox/a.1", "owl/b.1"],
        {"fox": 1, "owl": 1},
    )
    last = [json.loads(line) for line in (runs / "3.jsonl").read_text().splitlines()][-1]
    assert (last["event"], last["interrupted"], last["maybe_billed"]) == ("end", True, 2)
    assert recover(runs).runs == 0


def test_a_killed_runs_request_answered_and_saved_is_not_maybe_billed(tmp_path: Path) -> None:
    """A `done` line waits in memory for the next `sent` line's write: a kill at a run's end loses the
    `done` of answers already billed and saved. The ledger and results.jsonl say so; status and the next
    run agree. An answer in the ledger whose task has no result line is maybe billed all the same: the
    task is sent again, and that answer is paid twice (README: "it is in the ledger too")."""
    runs = tmp_path / "runs"
    sent = [{"event": "sent", "request_id": f"t{i}/a.1", "task_id": f"t{i}", "t": 1.0} for i in range(3)]
    write_log(runs / "1.jsonl", START, *sent)  # killed: no done lines, no end
    ledger = [{"task_id": "t0", "request_id": "t0/a.1", "total_tokens": 5}, {"request_id": "t2/a.1"}]
    (tmp_path / "usage.jsonl").write_text("".join(json.dumps(line) + "\n" for line in ledger))
    (tmp_path / "results.jsonl").write_text(json.dumps({"id": "t0", "status": "succeeded"}) + "\n")
    assert account(runs).maybe_billed == 2  # t1 (no answer recorded) and t2 (no result line): not t0
    assert account(runs).maybe_billed_counted == 1  # t2: in the ledger
    found = recover(runs)
    assert (found.requests, dict(found.by_task)) == (["t1/a.1", "t2/a.1"], {"t1": 1, "t2": 1})
    closed = [json.loads(line) for line in (runs / "1.jsonl").read_text().splitlines()[-4:]]
    assert [line.get("maybe_billed", False) for line in closed[:3]] == [False, True, True]
    assert closed[-1]["maybe_billed"] == 2
    assert account(runs).maybe_billed == 2  # and read back from the closed log, the same
    # of them, t2's answer is in the ledger (its cost counted); t1's is in no figure
    assert account(runs).maybe_billed_counted == 1


def test_a_killed_runs_answer_whose_failed_line_retry_failed_moved_aside_is_saved(tmp_path: Path) -> None:
    """--retry-failed moves the failed lines to results.retried.jsonl before the killed run's log is
    closed: an answer saved as a failed result line was counted maybe billed for good."""
    runs = tmp_path / "runs"
    write_log(runs / "1.jsonl", START, {"event": "sent", "request_id": "t0/a.1", "task_id": "t0", "t": 1.0})
    (tmp_path / "usage.jsonl").write_text(json.dumps({"task_id": "t0", "request_id": "t0/a.1"}) + "\n")
    (tmp_path / "results.retried.jsonl").write_text(json.dumps({"id": "t0", "status": "failed"}) + "\n")
    assert account(runs).maybe_billed == 0 and recover(runs).requests == []


def test_the_sent_and_done_lines_are_the_records_lines_byte_for_byte(tmp_path: Path) -> None:
    """`sent` and the usual `done` are written out by hand (two lines a request): the same bytes as
    AttemptRecord.to_line through json, whatever the ids hold."""
    from batch.output.runlog import RunLog
    from batch.running.records import AttemptRecord, attempt_log_line

    log = RunLog(tmp_path, "r1")
    log.open({"tasks": 2})
    odd = 'fé"\\/x\u2028'
    log.sent(f"{odd}/abc.1", odd)
    log.done(f"{odd}/abc.1", "answered", status=200)
    log.sent("b/abc.1", "b")
    log.done("b/abc.1", "answered", status=200, error="said so")
    log.done("never-sent", "answered", status=200)
    log.sent("c/abc.1", "c")
    log.done("c/abc.1", "error", status=500, error="boom")
    log.close({"exit_code": 0})
    raw = log.path.read_bytes().splitlines(keepends=True)[1:-1]
    assert len(raw) == 7
    for line in raw:
        record = attempt_log_line(json.loads(line))
        assert isinstance(record, AttemptRecord)
        assert line == (json.dumps(record.to_line(), ensure_ascii=False) + "\n").encode()
    first = json.loads(raw[1])
    assert first["outcome"] == "answered" and first["status"] == 200 and isinstance(first["seconds"], float)
    assert json.loads(raw[0])["task_id"] == odd and isinstance(json.loads(raw[0])["t"], float)


def test_a_request_logged_sent_that_never_left_is_no_request_and_its_line_is_written_at_once(
    tmp_path: Path,
) -> None:
    """A probe whose run stopped while its `sent` line went to the store is closed `unsent`: it counted as
    a request sent all the same, and its `done` line waited in memory for a next `sent` line that a
    stopping run never writes, so a kill meanwhile left it interrupted, maybe billed."""
    from batch.output.runlog import UNSENT, RunLog

    runs = tmp_path / "runs"
    runs.mkdir()
    log = RunLog(runs, "20260101T000000Z-aaaaaa")
    log.open({"pid": 1})
    log.sent("a/aaaaaa.1", "a")
    log.done("a/aaaaaa.1", "answered", status=200)
    log.sent("b/aaaaaa.1", "b")
    log.done("b/aaaaaa.1", UNSENT)
    # killed here: no close, no later `sent` line
    assert account(runs).requests == 1
    found = recover(runs)
    assert found.requests == [] and dict(found.by_task) == {}


def test_a_killed_runs_time_is_from_its_start_to_its_last_request(tmp_path: Path) -> None:
    """`report` summed only the `seconds` of end lines: a run killed after 2.5 s counted 0.0 s, and so
    did one recovered later (its end line is written by the next run, and has no seconds)."""
    from datetime import datetime

    from batch.output.report import report
    from batch.running.prices import PriceTable

    began = datetime.fromisoformat(START["at"]).timestamp()  # type: ignore[arg-type]
    sent = [{"event": "sent", "request_id": f"t/a.{i}", "task_id": "t", "t": began + i} for i in range(3)]
    write_log(tmp_path / "runs" / "1.jsonl", START, *sent[:2], END)  # 60 s, as it said
    write_log(tmp_path / "runs" / "2.jsonl", START, *sent)  # killed 2 s after its start
    found = report(tmp_path, PriceTable())
    assert (found["runs"], found["run_seconds"]) == (2, 62.0)
    assert account(tmp_path / "runs").last_sent == [began + 1, began + 2]


def test_a_killed_runs_answer_whose_task_another_run_saved_is_maybe_billed(tmp_path: Path) -> None:
    """The killed run's answer is in the ledger, its result line never written; a later run bought the
    task again and saved its own answer. The first answer was paid for, unsaved: it counted as saved
    (the task had a line), and a worker's kill left a task paid twice that status did not count."""
    runs = tmp_path / "runs"
    sent = {"event": "sent", "request_id": "t0/a.1", "task_id": "t0", "t": 1.0}
    write_log(runs / "1.jsonl", START, sent)  # killed after its answer went into the ledger
    ledger = [
        {"task_id": "t0", "request_id": "t0/a.1", "server_request_id": "srv-1"},
        {"task_id": "t0", "request_id": "t0/b.1", "server_request_id": "srv-2"},  # the later run's
    ]
    (tmp_path / "usage.jsonl").write_text("".join(json.dumps(line) + "\n" for line in ledger))
    result = {"id": "t0", "status": "succeeded", "request_id": "srv-2"}
    (tmp_path / "results.jsonl").write_text(json.dumps(result) + "\n")
    assert account(runs).maybe_billed == 1
    (tmp_path / "results.jsonl").write_text(json.dumps({**result, "request_id": "srv-1"}) + "\n")
    assert account(runs).maybe_billed == 0  # its own answer's line: saved


def test_a_stores_run_without_its_end_is_going_on_or_killed_and_when_it_last_wrote_is_said(
    tmp_path: Path,
) -> None:
    """On a store (no lock) `status` cannot tell whether a run is in progress. Of a last run with no end
    line it says both what it may be and when the store last received a line of it: hours ago is a dead
    run, seconds a live one."""
    write_log(tmp_path / "runs" / "1.jsonl", START, END)
    write_log(tmp_path / "runs" / "2.jsonl", START, {"event": "sent", "request_id": "t/a.0", "task_id": "t"})
    asked: list[str] = []

    def written(run: str) -> datetime:
        asked.append(run)
        return datetime.now(UTC) - timedelta(hours=3, minutes=5)

    found = status(tmp_path, written=written)
    assert asked == ["2"], "the last run's objects"
    assert found["running"] is None and found["pid"] is None
    assert found["last_run"]["ended"] is None
    assert 3 * 3600 < found["last_run"]["seconds_since_written"] < 3 * 3600 + 400
    shown = format_status(found)
    assert "no run is in progress" not in shown
    assert "cannot tell whether a run is in progress" in shown
    assert (
        f"last run: started {START['at']}, no end in the store: still running, or stopped without its end "
        f"(killed); it last wrote there 3 h ago ({found['last_run']['last_written']})"
    ) in shown.splitlines()

    write_log(tmp_path / "runs" / "2.jsonl", START, END)  # it ended: its end is what is said
    found = status(tmp_path, written=written)
    assert asked == ["2"] and found["running"] is None and found["last_run"]["last_written"] is None
    assert f"last run: started {START['at']}, ended {END['at']}, exit 0" in format_status(found).splitlines()


def test_a_kept_answers_line_is_taken_only_as_the_tool_writes_it() -> None:
    """answers/.to-finish.jsonl names the answers a killed run paid for; a line edited by hand (a file
    outside answers/, a count that is no number) is not used: its task is sent as any other."""
    line = {
        "task_id": "fox",
        "request_id": "fox/1a2b3c.1",
        "answer_file": "answers/fox.1a2b3c.1.json",
        "server_request_id": None,
        "input_tokens": 3,
        "output_tokens": 272,
        "total_tokens": 275,
        "cost": 0.0109,
        "request_sha256": "0123456789abcdef",
    }
    assert KeptAnswer.from_line(line) == KeptAnswer(**line)  # type: ignore[arg-type]
    for edited in (
        {"answer_file": "answers/../usage.jsonl"},
        {"answer_file": "/etc/passwd"},
        {"output_tokens": "272"},
        {"cost": "free"},
        {"task_id": 7},
    ):
        assert KeptAnswer.from_line({**line, **edited}) is None, edited
    assert KeptAnswer.from_line({k: v for k, v in line.items() if k != "cost"}) is None


def test_a_kept_answer_whose_ledger_line_a_kill_left_unwritten_is_booked_once_from_the_run_log(
    tmp_path: Path,
) -> None:
    """The run log's `kept` line holds the ledger line of an answer kept in answers/ before it: a kill
    between the two leaves the line for recover to book, once, then to finish the task from the answer.
    An answer the kill caught before it was kept was paid all the same: its line is booked, the request
    maybe billed (in the cost) and not listed to finish. None is booked twice for one in the ledger."""
    runs = tmp_path / "runs"
    (tmp_path / "answers").mkdir()
    ledger = {
        "task_id": "fox", "request_id": "fox/a.1", "server_request_id": "r1", "input_tokens": 2,
        "output_tokens": 10, "total_tokens": 12, "cost": 0.5, "request_sha256": "ab" * 8,
    }  # fmt: skip
    sent = {"event": "sent", "request_id": "fox/a.1", "task_id": "fox", "t": 1.0}
    kept = {"event": "kept", "request_id": "fox/a.1", "task_id": "fox", "ledger": ledger}
    # owl's answer was not kept when the kill came (no file), cat's line is in the ledger already
    owl = {**ledger, "task_id": "owl", "request_id": "owl/a.1"}
    cat = {**ledger, "task_id": "cat", "request_id": "cat/a.1"}
    write_log(
        runs / "1.jsonl",
        START,
        *(
            line
            for entry in (ledger, owl, cat)
            for line in (
                {**sent, "request_id": entry["request_id"], "task_id": entry["task_id"]},
                {**kept, "request_id": entry["request_id"], "task_id": entry["task_id"], "ledger": entry},
            )
        ),
    )
    for name in ("fox.a.1.json", "cat.a.1.json"):
        (tmp_path / "answers" / name).write_text('{"data": []}')
    (tmp_path / "usage.jsonl").write_text(json.dumps(cat) + "\n")
    found = recover(runs)
    assert found.requests == ["owl/a.1"]  # not kept: maybe billed, booked all the same
    lines = [json.loads(line) for line in (tmp_path / "usage.jsonl").read_text().splitlines()]
    assert lines == [cat, ledger, owl]
    listed = [
        json.loads(line) for line in (tmp_path / "answers" / ".to-finish.jsonl").read_text().splitlines()
    ]
    assert {line["task_id"] for line in listed} == {"fox", "cat"}
    assert KeptAnswer.from_line(next(line for line in listed if line["task_id"] == "fox")) == KeptAnswer(
        "fox", "fox/a.1", "answers/fox.a.1.json", "r1", 2, 10, 12, 0.5, "ab" * 8
    )
    assert recover(runs).runs == 0 and len((tmp_path / "usage.jsonl").read_text().splitlines()) == 3
    found_status = status(tmp_path)
    assert found_status["maybe_billed"] == 1 and found_status["maybe_billed_counted"] == 1


def _ledger_line(task_id: str, request_id: str) -> bytes:
    line = {
        "task_id": task_id, "request_id": request_id, "server_request_id": "r1", "input_tokens": 2,
        "output_tokens": 10, "total_tokens": 12, "cost": 0.5, "request_sha256": "ab" * 8,
    }  # fmt: skip
    return (json.dumps(line) + "\n").encode()


def test_a_carried_answer_is_in_its_own_file_not_the_run_log_and_that_file_stays_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer carried for a kill's window goes to answers/.carried.jsonl with its ledger line, one line,
    not into the run log (read whole by status and report, and kept forever): the file is emptied once no
    carried answer's task lacks its result line (its `done` line) and it has grown past CARRIED_SPARE,
    never while one does, and written again with the pending ones only past CARRIED_CAP, should answers
    be pending at every moment (a run of image answers saved in threads). At the run's end it is empty."""
    from batch.output import runlog, store
    from batch.output.runlog import RunLog

    key = "sk-carried-0123456789abcdef"
    monkeypatch.setattr(store, "_SECRETS", [])
    store.never_write(key)
    monkeypatch.setattr(runlog, "CARRIED_SPARE", 4096)
    monkeypatch.setattr(runlog, "CARRIED_CAP", 16384)
    runs = tmp_path / "runs"
    runs.mkdir()
    carried = tmp_path / "answers" / ".carried.jsonl"
    log = RunLog(runs, "r1")
    log.open({"tasks": 1})
    answer = json.dumps({"choices": [{"message": {"content": "x" * 500}}]}).encode()
    held = json.dumps({"choices": [{"message": {"content": f"echoed {key}"}}]}).encode()
    log.sent("held/a.1", "held")
    log.keeping("held/a.1", "held", _ledger_line("held", "held/a.1"), held)
    biggest = 0
    for i in range(200):  # one answer pending all the while: never emptied, written again past the cap
        request_id = f"t{i}/a.1"
        log.sent(request_id, f"t{i}")
        log.keeping(request_id, f"t{i}", _ledger_line(f"t{i}", request_id), answer)
        log.done(request_id, "answered", status=200, seconds=0.1)
        biggest = max(biggest, carried.stat().st_size)
        lines = [json.loads(line) for line in carried.read_bytes().splitlines()]
        assert lines[0]["request_id"] == "held/a.1" and "choices" in lines[0]["answer"]
        assert key not in carried.read_text()  # written again too: without the key
    assert 16384 < biggest < 16384 + 2 * len(answer) + 1024, biggest  # written again, not growing
    log.done("held/a.1", "answered", status=200, seconds=0.1)  # none pending, past CARRIED_SPARE: emptied
    assert carried.stat().st_size == 0
    for i in range(3):  # a few small ones, under CARRIED_SPARE: left until the run's end
        log.sent(f"u{i}/a.1", f"u{i}")
        log.keeping(f"u{i}/a.1", f"u{i}", _ledger_line(f"u{i}", f"u{i}/a.1"), answer)
        log.done(f"u{i}/a.1", "answered", status=200, seconds=0.1)
    assert len(carried.read_bytes().splitlines()) == 3
    log.close({"exit_code": 0})
    assert carried.stat().st_size == 0
    text = log.path.read_text()
    assert "x" * 500 not in text and '"kept"' not in text, "no answer, nor its kept line, in the run log"


def test_a_killed_runs_carried_answer_is_booked_once_and_listed_to_finish_then_the_file_is_emptied(
    tmp_path: Path,
) -> None:
    """A run killed after an answer's carried line and before its task's result line (its ledger line
    written or not): the next start books the ledger line once, writes the answer to answers/ and lists
    it to finish; then, every killed run's log closed, empties the carried file. A carried line of a run
    that ended, or of a request its log closed, is read for nothing."""
    from batch.output.runlog import RunLog

    runs = tmp_path / "runs"
    runs.mkdir()
    answer = {"choices": [{"message": {"content": "an answer"}}], "usage": {"total_tokens": 12}}
    log = RunLog(runs, "r1")
    log.open({"tasks": 3})
    for task_id in ("fox", "owl", "cat"):
        log.sent(f"{task_id}/a.1", task_id)
        log.keeping(
            f"{task_id}/a.1", task_id, _ledger_line(task_id, f"{task_id}/a.1"), json.dumps(answer).encode()
        )
    (tmp_path / "usage.jsonl").write_bytes(_ledger_line("owl", "owl/a.1"))  # owl's ledger line written
    log.done("cat/a.1", "answered", status=200)  # cat's task saved (its result line: not looked at here)
    log.sent("dog/a.1", "dog")  # flushes cat's done line; then the kill (nothing closed)
    carried = tmp_path / "answers" / ".carried.jsonl"
    assert len(carried.read_bytes().splitlines()) == 3
    assert "an answer" not in log.path.read_text()
    found = recover(runs)
    assert found.requests == ["dog/a.1"]  # sent, no answer: maybe billed
    booked = [json.loads(line)["request_id"] for line in (tmp_path / "usage.jsonl").read_text().splitlines()]
    assert booked == ["owl/a.1", "fox/a.1"]
    listed = [
        json.loads(line) for line in (tmp_path / "answers" / ".to-finish.jsonl").read_text().splitlines()
    ]
    assert sorted(line["task_id"] for line in listed) == ["fox", "owl"]
    for line in listed:
        assert json.loads((tmp_path / line["answer_file"]).read_text()) == answer
    assert carried.stat().st_size == 0
    assert recover(runs).runs == 0 and len((tmp_path / "usage.jsonl").read_text().splitlines()) == 2
