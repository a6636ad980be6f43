"""Each run's attempt log, DIR/runs/<run>.jsonl, for honest accounting after a crash.

A run writes a `start` line, then for every attempt a `sent` line *before* the request leaves and a `done`
line when its fate is known, and an `end` line when it exits (any way but a kill). A run killed with
SIGKILL leaves `sent` lines without `done`: those requests may have reached the API and been billed, and
nothing can know their cost. The next run finds them (`recover`), records them as interrupted and
maybe billed, and says how many there were. The log is not fsync'd: it needs to survive a killed process,
not a power cut, and the kernel keeps a write that returned.

    {"event": "start", "run": ..., "at": ..., "pid": ..., "manifest": ..., "version": ...}
    {"event": "sent", "request_id": "fox/1a2b3c.1", "task_id": "fox", "at": ...}
    {"event": "done", "request_id": ..., "outcome": "answered" | "error" | "failed" | "cancelled"
       | "interrupted", "status": 200, "maybe_billed": false, "seconds": 1.2}
    {"event": "kept", "request_id": ..., "task_id": ..., "ledger": {the answer's ledger line}}
    {"event": "end", "at": ..., "exit_code": 0, ...}

Every paid answer is kept before its ledger line is written, so that a run killed before its task's result
line leaves it for the next run to finish the task from (`recover`), where it would have bought it again.
Most answers (text, a stream, small images) are carried: one line in answers/.carried.jsonl holds the
ledger line and the answer, in one write(2), which a killed process does not lose:

    {"request_id": ..., "task_id": ..., "ledger": {the answer's ledger line},
       "answer": the answer's body (JSON: a stream's, the list of its chunks)}

That file is DIR's (one run holds DIR), not a run's: it is emptied (ftruncate) once no carried answer's
task lacks its result line (RunLog.done) and it has grown past CARRIED_SPARE, or at the run's end; written
again with the pending answers' lines only past CARRIED_CAP; read by the next start (`recover`) and emptied
then. So its size stays bounded, and the run log, which status and report read whole, holds no answer.
Any other answer (one whose images are to be fetched, or a big one) is kept in answers/, its `kept` line
in the run log before it, carrying its ledger line. The next run books a line the kill left unwritten,
once. One killed before its answer was kept in answers/ has its line booked all the same (it was paid),
and is asked again. (A `kept` line of an older run may carry an `answer` too: read as a carried one.)

A paid failure that is not asked again (a 200 whose body cannot be used, an error beside a usage: its
task fails) is carried too, before its ledger line and its raw body, with what its task's result line
will say instead of an answer; its `done` line waits for that result line, as an answer's does. The next
run ends a task a kill left so as the killed run would have (failed), from that line, sending nothing:

    {"request_id": ..., "task_id": ..., "failed": {"type", "status", "message", "maybe_billed",
       "answer_file" (its raw body's, or null), "server_request_id", "request_sha256"},
       "ledger": {its ledger line, where it reported a usage}}
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

from batch import codec
from batch.errors import OutputError
from batch.output.files import TMP_SUFFIX, fsync_dir, nofollow_flags, real_folder, write_atomic
from batch.output.store import (
    ANSWERS,
    RESULTS,
    RETRIED,
    USAGE,
    Journal,
    encode_line,
    parse_record,
    read_lines,
    whole_lines,
    without_secrets,
)
from batch.running.idset import IdSet, digest
from batch.running.records import (
    AttemptRecord,
    RunRecord,
    attempt_log_line,
    finished_entry,
    number,
    request_digest,
)

_string = encode_basestring  # a JSON string, as encode_line writes one (with its quotes)


def _line(record: Mapping[str, Any]) -> bytes:
    return encode_line(record)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Interrupted:
    """What earlier runs that were killed left unresolved."""

    runs: int = 0
    requests: list[str] = field(default_factory=list)  # request ids that may have been billed
    by_task: Counter[str] = field(default_factory=Counter)


# answers/: the paid answers whose tasks a killed run left unfinished (a line each, see KeptAnswer)
TO_FINISH = ".to-finish.jsonl"
KEPT = "kept"  # the run log's event: an answer kept in answers/ before its ledger line (RunLog.keeping)
# answers/: the paid answers carried for a kill's window, each with its ledger line (RunLog.keeping)
CARRIED = ".carried.jsonl"
# bytes the carried file may hold before it is emptied, the moment no carried answer is pending: one
# ftruncate for some thousand chat answers, not one each; and past which, answers pending all the while
# (image answers saved in threads, without a pause), it is written again with the pending answers' only
CARRIED_SPARE = 1024 * 1024
CARRIED_CAP = 16 * CARRIED_SPARE


@dataclass(frozen=True)
class KeptAnswer:
    """A paid answer whose task a killed run did not finish: in the ledger, and kept whole in answers/
    (an answer whose images were being downloaded). The next run finishes the task from it, where it
    would have bought it again."""

    task_id: str
    request_id: str
    answer_file: str | None  # answers/..., relative to DIR (None: a failure's whose raw body a kill lost)
    server_request_id: str | None
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost: float | None
    request_sha256: str | None  # the request it answered (None: a ledger line of before it was kept)
    # a paid failure's (RunLog.failing): its error's type, status and message, whether its request may
    # have been billed, whether it is in the ledger; its answer_file None where the kill left no raw body
    failed: Mapping[str, Any] | None = None

    @classmethod
    def from_line(cls, line: Mapping[str, Any]) -> KeptAnswer | None:
        try:
            found = cls(**{name: line[name] for name in cls.__dataclass_fields__ if name in line})
        except TypeError:
            return None
        if found.failed is not None:
            failed = found.failed
            if not (
                isinstance(failed, dict)
                and isinstance(failed.get("type"), str)
                and isinstance(failed.get("message"), str)
                and (failed.get("status") is None or type(failed.get("status")) is int)
            ):
                return None
            if found.answer_file is None:
                return found if isinstance(found.task_id, str) else None
        counts = all(
            type(getattr(found, name)) is int for name in ("input_tokens", "output_tokens", "total_tokens")
        )
        cost = found.cost is None or (
            isinstance(found.cost, int | float) and not isinstance(found.cost, bool)
        )
        # a file of answers/ itself (a line edited by hand could name any file)
        inside = (
            isinstance(found.answer_file, str)
            and found.answer_file.startswith(f"{ANSWERS}/")
            and ".." not in found.answer_file.split("/")
        )
        return found if counts and cost and inside and isinstance(found.task_id, str) else None

    def to_line(self) -> dict[str, Any]:
        """Its line in answers/.to-finish.jsonl (an answer's without `failed`, as before there was one)."""
        line = vars(self)
        return line if self.failed is not None else {k: v for k, v in line.items() if k != "failed"}


def kept_answers(root: Path) -> dict[str, KeptAnswer]:
    """The answers a killed run left for the next one to finish its tasks from, by task (see recover)."""
    found: dict[str, KeptAnswer] = {}
    for line in read_lines(root / ANSWERS / TO_FINISH):
        kept = KeptAnswer.from_line(line)
        if kept is not None and (kept.answer_file is None or (root / kept.answer_file).is_file()):
            found[kept.task_id] = kept
    return found


def keep_to_finish(root: Path, kept: KeptAnswer) -> None:
    """List a paid answer for the next run to finish its task from, as `recover` lists a killed run's: a
    run stopped while its images were fetched or saved. Blocking."""
    path = root / ANSWERS / TO_FINISH
    lines = [line for line in read_lines(path) if line.get("task_id") != kept.task_id]
    write_atomic(path, b"".join(map(encode_line, [*lines, kept.to_line()])), fsync=True)


def finished_from(root: Path, task_ids: set[str]) -> None:
    """Forget the kept answers of these tasks: their result lines are written. Blocking."""
    path = root / ANSWERS / TO_FINISH
    left = [line for line in read_lines(path) if line.get("task_id") not in task_ids]
    write_atomic(path, b"".join(map(encode_line, left)), fsync=True)


def _kept(
    root: Path,
    pending: Mapping[str, str],
    unbooked: Mapping[str, Mapping[str, Any]],
    ledger: Journal | None,
    carried: Mapping[str, Any] | None = None,
    failures: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, KeptAnswer]:
    """Of the requests a killed run left without a `done` line and without a saved result, those whose
    answer is kept whole (in answers/, as `_keep_raw` names it, or carried in its `kept` line: `carried`,
    request id -> the answer, written to answers/ now) and in the ledger. One whose ledger line the kill
    left unwritten (`unbooked`: request id -> the line its run log's `kept` line holds) has it written
    now, once and durably, through `ledger` (the run's own journal: its size stays true): that line is
    written once the answer came, paid, so it is booked whether or not the kill let its body be kept (one
    not kept is maybe billed, its cost counted, and asked again). And those whose failure was carried
    (`failures`: request id -> its `failed`), in the ledger or not (it reported no usage), its raw body
    kept or not (the kill came first): its task ends failed from it."""
    if not pending:
        return {}
    booked: list[Mapping[str, Any]] = []
    lines = [line for line in read_lines(root / USAGE) if _named(line) in pending]
    in_ledger = {line["request_id"] for line in lines}
    for unbooked_id, line in unbooked.items():
        if (
            unbooked_id in pending
            and unbooked_id not in in_ledger
            and line.get("request_id") == unbooked_id
            and line.get("task_id") == pending[unbooked_id]
        ):
            booked.append(line)
    if booked:
        journal = ledger if ledger is not None else Journal(root / USAGE)
        if ledger is None:
            journal.open()
        try:
            journal.write_durably(booked)
        finally:
            if ledger is None:
                journal.close()
    found: dict[str, KeptAnswer] = {}
    failures = failures or {}
    billed = {line["request_id"]: line for line in itertools.chain(lines, booked)}
    for failed_id in failures.keys() & pending.keys():
        failure = _failure(root, pending[failed_id], failed_id, failures[failed_id], billed.get(failed_id))
        if failure is not None:
            found[failed_id] = failure
    for line in itertools.chain(lines, booked):
        request_id = line.get("request_id")
        if not isinstance(request_id, str) or request_id not in pending or request_id in failures:
            continue
        answer_file = _answer_file(request_id)
        if not (root / answer_file).is_file():
            if carried is None or request_id not in carried:
                continue
            _write_answer(root, answer_file, carried[request_id])
        cost = line.get("cost")
        kept = KeptAnswer.from_line(
            {
                "task_id": pending[request_id],
                "request_id": request_id,
                "answer_file": answer_file,
                "server_request_id": line.get("server_request_id"),
                "input_tokens": line.get("input_tokens"),
                "output_tokens": line.get("output_tokens"),
                "total_tokens": line.get("total_tokens"),
                "cost": cost if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
                "request_sha256": request_digest(line.get("request_sha256")),
            }
        )
        if kept is not None:
            found[request_id] = kept
    return found


def _failure(
    root: Path, task_id: str, request_id: str, failed: Mapping[str, Any], line: Mapping[str, Any] | None
) -> KeptAnswer | None:
    """A paid failure a kill left without its task's line, to end the task from: its figures its ledger
    line's (`line`; none where it reported no usage), its raw body's file where the kill let it be kept."""
    answer_file = failed.get("answer_file")
    if not isinstance(answer_file, str) or not (root / answer_file).is_file():
        answer_file = None
    figures = line or {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "cost": None}
    cost = figures.get("cost")
    return KeptAnswer.from_line(
        {
            "task_id": task_id,
            "request_id": request_id,
            "answer_file": answer_file,
            "server_request_id": failed.get("server_request_id"),
            "input_tokens": figures.get("input_tokens"),
            "output_tokens": figures.get("output_tokens"),
            "total_tokens": figures.get("total_tokens"),
            "cost": cost if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
            "request_sha256": request_digest(failed.get("request_sha256")),
            "failed": {**failed, "billed": line is not None},
        }
    )


def _write_answer(root: Path, answer_file: str, answer: Any) -> None:
    """Keep in answers/ an answer a `kept` line carried, durably, for the task to be finished from."""
    folder = real_folder(root / ANSWERS)
    write_atomic(root / answer_file, without_secrets(codec.dumps(answer)), fsync=True)
    fsync_dir(folder)


def _named(line: Mapping[str, Any]) -> str | None:
    """The request a ledger line names (None where it names none a hand could have written: a list)."""
    named = line.get("request_id")
    return named if isinstance(named, str) else None


def _answer_file(request_id: str) -> str:
    """Where `_keep_raw` keeps a JSON answer to the request, relative to DIR."""
    return f"{ANSWERS}/{request_id.replace('/', '.')}.json"


def recover(folder: Path, ledger: Journal | None = None) -> Interrupted:
    """Close the logs of runs that were killed: each request sent without a `done` line gets one that
    says it was interrupted and may have been billed, but one whose answer is kept in answers/ (in the
    ledger, or booked there now: `ledger`, usage.jsonl's open journal). Call it while holding DIR's lock."""
    found = Interrupted()
    if not folder.is_dir():
        return found
    leftover = _carried_lines(folder.parent)  # any run's: the lines of a killed one's are read below
    for path in sorted(folder.glob("*.jsonl")):
        if _ended(path):  # the usual case: read one line, not the whole log of a long run
            continue
        pending: dict[str, str] = {}
        unbooked: dict[str, Mapping[str, Any]] = {}  # request id -> its ledger line, as a `kept` line has it
        carried: dict[str, Any] = {}  # request id -> its answer, as a `kept` line carries it
        failures: dict[str, Mapping[str, Any]] = {}  # request id -> its failure, as its carried line has it
        ended = False
        for line in read_lines(path):
            record = attempt_log_line(line)
            if isinstance(record, AttemptRecord):
                if record.event == "sent":
                    pending[record.request_id] = str(record.task_id)
                else:
                    pending.pop(record.request_id, None)
            elif isinstance(record, RunRecord) and record.event == "end":
                ended = True
            elif line.get("event") == KEPT and isinstance(line.get("ledger"), dict):
                unbooked[str(line.get("request_id"))] = line["ledger"]
                if isinstance(line.get("answer"), dict | list):  # an older run's, that carried it there
                    carried[str(line.get("request_id"))] = line["answer"]
        if ended:
            continue
        for request_id in pending.keys() & leftover.keys():
            left_line = leftover[request_id]
            if left_line.get("task_id") == pending[request_id]:
                if isinstance(left_line.get("ledger"), dict):
                    unbooked.setdefault(request_id, left_line["ledger"])
                if isinstance(left_line.get("answer"), dict | list):
                    carried.setdefault(request_id, left_line["answer"])
                if isinstance(left_line.get("failed"), dict):  # a paid failure's (RunLog.failing)
                    failures.setdefault(request_id, left_line["failed"])
        unledgered = {r: failure.get("server_request_id") for r, failure in failures.items() if r in pending}
        billed = saved(folder.parent, pending, unledgered)
        # the answers a kill caught while their images were downloaded: the next run finishes from them
        left = {r: t for r, t in pending.items() if r not in billed}
        kept = _kept(folder.parent, left, unbooked, ledger, carried, failures)
        if kept:  # written durably before the log says so: a kill in between finds them again
            list_path = real_folder(folder.parent / ANSWERS) / TO_FINISH  # none kept a failure's body
            lines = [*read_lines(list_path), *(entry.to_line() for entry in kept.values())]
            write_atomic(list_path, b"".join(map(encode_line, lines)), fsync=True)
        journal = Journal(path, fsync=False)
        journal.open()  # also cuts a torn last line
        try:
            maybe = 0
            for request_id, task_id in pending.items():
                recorded = request_id in billed  # its answer is in the ledger, its task's line in results
                maybe_billed = not recorded and request_id not in kept
                error = None
                failure = failures.get(request_id)
                if failure is not None and (recorded or request_id in kept):
                    # as its own `done` line would have said (a paid failure's waits for its task's line)
                    maybe_billed = failure.get("maybe_billed") is True
                    error = (
                        "its failure was recorded in its task's result line"
                        if recorded
                        else "its failure was carried in answers/.carried.jsonl: the next run ends its task"
                    )
                elif recorded:
                    error = "its answer was recorded in usage.jsonl and its task's result line"
                elif request_id in kept:
                    error = (
                        f"its answer was recorded in usage.jsonl and kept in {kept[request_id].answer_file}: "
                        "the next run finishes its task from it"
                    )
                journal.write(
                    AttemptRecord(
                        "done",
                        request_id,
                        task_id=task_id,
                        outcome="interrupted",
                        maybe_billed=maybe_billed,
                        error=error,
                    ).to_line()
                )
                maybe += maybe_billed
                if maybe_billed and not recorded:
                    found.requests.append(request_id)
                    if request_id not in kept:  # a kept failure's task counts it (its `failed` says so)
                        found.by_task[task_id] += 1
            journal.write({"event": "end", "at": now(), "interrupted": True, "maybe_billed": maybe})
        finally:
            journal.close()
        found.runs += 1
    if leftover:  # every killed run's log is closed now, its carried answers in answers/ and the ledger
        _empty_carried(folder.parent)
    return found


def _carried_lines(root: Path) -> dict[str, Mapping[str, Any]]:
    """The lines answers/.carried.jsonl holds (a killed run's, or a few of a run that ended), by request."""
    found: dict[str, Mapping[str, Any]] = {}
    for line in read_lines(root / ANSWERS / CARRIED):
        request_id = line.get("request_id")
        if isinstance(request_id, str) and (
            isinstance(line.get("ledger"), dict) or isinstance(line.get("failed"), dict)
        ):
            found[request_id] = line
    return found


def _empty_carried(root: Path) -> None:
    """answers/.carried.jsonl emptied, once what it held is no longer needed (a file left as it is is only
    read again: its runs' logs are closed)."""
    try:
        fd = os.open(root / ANSWERS / CARRIED, nofollow_flags(os.O_WRONLY))
    except OSError:
        return
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    finally:
        os.close(fd)


UNSENT = "unsent"  # the outcome of a request whose `sent` line was written, but which never left


@dataclass
class Accounting:
    """What the attempt logs of DIR say about every request ever sent, whatever ended its run."""

    requests: int = 0
    maybe_billed: int = 0  # may have been billed without a saved answer (cut, cancelled, killed)
    # of maybe_billed, the requests whose usage (a count so far, say) is in the ledger, so counted in its
    # tokens and cost, if maybe not in full; the others (no usage came: cut, reset, cancelled, killed)
    # are counted in no cost at all
    maybe_billed_counted: int = 0
    in_flight: int = 0  # sent by a run that is going on now, fate not known yet
    runs: list[list[dict[str, Any]]] = field(default_factory=list)  # each run's start and end lines
    ids: list[str] = field(default_factory=list)  # each run's id: its log's name
    last_sent: list[float | None] = field(default_factory=list)  # each run's last `sent` line's time


def account(folder: Path, *, live: bool = False) -> Accounting:
    """Read every run log once. `live`: a run holds DIR now, so its requests without a `done` line are in
    flight; a run that is gone left its own as maybe billed (as `recover` will write them)."""
    found = Accounting()
    if not folder.is_dir():
        return found
    maybe = IdSet()  # the maybe-billed requests' ids, to look for in the ledger
    paths = sorted(folder.glob("*.jsonl"))
    for position, path in enumerate(paths):
        pending: dict[str, str] = {}
        events = []
        ended = False
        last: float | None = None
        for record in map(attempt_log_line, read_lines(path)):
            if isinstance(record, AttemptRecord):
                if record.event == "sent":
                    found.requests += 1
                    pending[record.request_id] = str(record.task_id)
                    at = number(record.t)  # a hand-edited line may say anything, 400 digits too
                    last = at if at is not None else last
                else:
                    pending.pop(record.request_id, None)
                    found.maybe_billed += record.maybe_billed
                    if record.maybe_billed:
                        maybe.add(record.request_id)
                    found.requests -= record.outcome == UNSENT  # its `sent` line was written, not it
            elif isinstance(record, RunRecord):
                events.append(record.to_line())
                ended = ended or record.event == "end"
        if pending and live and not ended and position == len(paths) - 1:
            found.in_flight += len(pending)
        elif pending:  # a run killed, not recovered yet: as `recover` will close its log
            answered = saved(folder.parent, pending)
            found.maybe_billed += len(pending) - len(answered)
            for request_id in pending.keys() - answered:
                maybe.add(request_id)
        found.runs.append(events)
        found.ids.append(path.stem)
        found.last_sent.append(last)
    if found.maybe_billed:
        found.maybe_billed_counted = _in_ledger(folder.parent, maybe)
    return found


def _in_ledger(root: Path, requests: IdSet) -> int:
    """How many of `requests` (request ids) have a line in DIR's ledger: their usage is counted."""
    counted: set[int] = set()
    for line in read_lines(root / USAGE):
        request_id = line.get("request_id")
        if isinstance(request_id, str) and request_id in requests:
            counted.add(digest(request_id))
    return len(counted)


def saved(root: Path, pending: Mapping[str, str], unledgered: Mapping[str, Any] | None = None) -> set[str]:
    """Which of the requests a killed run left without a `done` line (`pending`: request id -> task id,
    few) were answered and saved: the answer is in the ledger and its task has a result line (the `done`
    line waits in memory for the next `sent` line's write, so a kill at the end of a run loses it). An
    answer in the ledger whose task has no line yet is maybe billed all the same: the task is sent again,
    and that answer is the one paid twice (README, "Outputs on S3"). `unledgered`: request id -> the
    server's id, of paid failures carried (RunLog.failing), saved once their task has its line whether or
    not they are in the ledger (one that reported no usage is not)."""
    if not pending:
        return set()
    # request id -> the server's id of its answer (None: it gave none)
    billed: dict[str, Any] = dict(unledgered or {})
    for line in read_lines(root / USAGE):
        request_id = line.get("request_id")
        if isinstance(request_id, str) and request_id in pending:
            billed[request_id] = line.get("server_request_id")
    if not billed:
        return set()
    tasks = {pending[request_id] for request_id in billed}
    # a result line moved aside by --retry-failed (a failed task, given another go) was saved too. The
    # line must be of that answer, where the two name the server's id: a task the killed run's answer
    # was billed for, whose line a later run saved from its own answer, was paid twice
    answers: dict[str, set[Any]] = {}
    for raw in itertools.chain(whole_lines(root / RESULTS), whole_lines(root / RETRIED)):
        entry = finished_entry(raw)
        if entry is not None and entry[0] in tasks:
            record = parse_record(raw) or {}
            answers.setdefault(entry[0], set()).add(record.get("request_id"))
    return {
        request_id
        for request_id, server_id in billed.items()
        if pending[request_id] in answers
        and (
            server_id is None
            or None in answers[pending[request_id]]
            or server_id in answers[pending[request_id]]
        )
    }


def _ended(path: Path) -> bool:
    """Whether a run log's last whole line is its `end` line."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - 65536))
            tail = handle.read()
    except OSError:
        return False
    lines = tail.split(b"\n")
    last = lines[-2] if len(lines) >= 2 else b""  # the text after the final newline is torn, or empty
    try:
        line = json.loads(last)
    except ValueError:
        return False
    record = attempt_log_line(line) if isinstance(line, dict) else None
    return isinstance(record, RunRecord) and record.event == "end"


class RunLog:
    """The attempt log of the current run."""

    def __init__(self, folder: Path, run_id: str) -> None:
        self.path = folder / f"{run_id}.jsonl"
        self._journal = Journal(self.path, fsync=False)
        self._sent: dict[str, float] = {}
        self._pending = bytearray()  # `done` lines, written with the next `sent` line or at close
        self._carried_path = folder.parent / ANSWERS / CARRIED
        self._carried: Journal | None = None  # answers/.carried.jsonl, opened with the first carried answer
        # request id -> its carried line, while its task has no result line (nor its answer kept elsewhere)
        self._carrying: dict[str, bytes] = {}
        # An output on a store (output.remote): uploads the lines written so far, so that a `sent` line
        # is in the store before its request leaves.
        self.publisher: Callable[[], Awaitable[None]] | None = None

    def open(self, info: Mapping[str, Any]) -> None:
        self._journal.open()
        self._journal.write_bytes(_line({"event": "start", "at": now(), **info}))

    def close(self, summary: Mapping[str, Any]) -> None:
        """The `end` line: every request of this run has had its `done` line. The carried answers' file is
        emptied after it if none is pending (one that is stays: the next start reads it, and leaves it
        alone, the log ended; its `done` line below is no result line)."""
        pending, self._carrying = bool(self._carrying), {}
        for request_id in list(self._sent):
            self.done(request_id, "cancelled", maybe_billed=True)
        self._pending += _line({"event": "end", "at": now(), **summary})
        self._flush()
        self._journal.close()
        if self._carried is not None:
            if not pending and self._carried.size:
                with contextlib.suppress(OutputError):
                    self._carried.empty()
            self._carried.close()

    def _flush(self) -> None:
        if self._pending:
            self._journal.write_bytes(bytes(self._pending))
            self._pending.clear()

    def sent(self, request_id: str, task_id: str) -> None:
        self._sent[request_id] = time.monotonic()
        # A `sent` line must be in the kernel before the request leaves (so that a kill is accounted
        # for); `done` lines wait and share its write(2). One lost to a kill makes its request look
        # interrupted: counted as maybe billed, which errs on the honest side. Epoch seconds: a date
        # costs more to format, for every request. The line is AttemptRecord.to_line's, written out.
        self._pending += (
            f'{{"event": "sent", "request_id": {_string(request_id)}, "task_id": {_string(task_id)}, '
            f'"t": {round(time.time(), 3)!r}}}\n'
        ).encode()
        self._flush()

    def keeping(self, request_id: str, task_id: str, ledger_line: bytes, answer: bytes | None = None) -> None:
        """A paid answer, kept before its ledger line is written: the line (as encode_line made it for
        usage.jsonl), and `answer` (its body as JSON, codec.dumps's: no line end in it), carried with it in
        answers/.carried.jsonl until its task's result line is written (done); or none where the answer
        is about to be kept in answers/, the line then in the run log. A kill before its task's result
        line leaves both for the next run (recover). In the kernel at once, in one write(2). Both spliced
        in, not encoded again."""
        head = f'{{"request_id": {_string(request_id)}, "task_id": {_string(task_id)}, "ledger": '.encode()
        if answer is None:
            self._pending += b'{"event": "' + KEPT.encode() + b'", ' + head[1:]
            self._pending += ledger_line.rstrip(b"\n")
            self._pending += b"}\n"
            self._flush()
            return
        line = b"".join((head, ledger_line.rstrip(b"\n"), b', "answer": ', answer, b"}\n"))
        journal = self._carried
        if journal is None or (journal.size > CARRIED_CAP and self._carrying):
            journal = self._carried_journal()
        journal.write_bytes(line)
        self._carrying[request_id] = line

    def _carried_journal(self) -> Journal:
        """answers/.carried.jsonl's journal, opened with the first line it gets, or written again with the
        pending lines only once it has grown past CARRIED_CAP (_compact)."""
        journal = self._carried
        if journal is None:
            real_folder(self._carried_path.parent)
            journal = Journal(self._carried_path, fsync=False)
            journal.open()
            self._carried = journal
            return journal
        return self._compact(journal)

    def failing(
        self, request_id: str, task_id: str, failed: Mapping[str, Any], ledger_line: bytes | None
    ) -> float | None:
        """A paid failure that is not asked again (its task fails), carried in answers/.carried.jsonl as
        an answer is (keeping) before its ledger line (as encode_line made it, spliced in) and its raw body
        are written: what its task's result line will say (`failed`). Its `done` line waits for that result
        line, so that a kill before it leaves the next run to end the task from this one (recover), not to
        send it again. In the kernel at once; nothing in the run log. Returns the seconds since its `sent`
        line, for its `done` line."""
        line = _line({"request_id": request_id, "task_id": task_id, "failed": failed})
        if ledger_line is not None:
            line = b"".join((line[:-2], b', "ledger": ', ledger_line.rstrip(b"\n"), b"}\n"))
        journal = self._carried
        if journal is None or (journal.size > CARRIED_CAP and self._carrying):
            journal = self._carried_journal()
        journal.write_bytes(line)
        self._carrying[request_id] = line
        started = self._sent.get(request_id)
        return None if started is None else time.monotonic() - started

    def _compact(self, journal: Journal) -> Journal:
        """The carried file written again with the pending answers' lines only (answers were pending at
        every moment it could have been emptied): whole, through a journal (which keeps the key out, as
        it did of the lines), then renamed over it, so that a kill leaves the one or the other."""
        path = journal.path
        fresh = Journal(path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"), fsync=False)
        try:
            fresh.open()
            fresh.write_bytes(b"".join(self._carrying.values()))
            os.replace(fresh.path, path)
        except (OutputError, OSError):  # it keeps growing, as it was: no answer lost
            fresh.close()
            with contextlib.suppress(OSError):
                fresh.path.unlink()
            return journal
        journal.close()
        fresh.path = path  # its descriptor is the file's now
        self._carried = fresh
        return fresh

    def _carried_done(self, request_id: str) -> None:
        """A carried answer's task has its result line (or its answer is kept in answers/): once none is
        pending, the file that carried them is emptied, if it has grown past CARRIED_SPARE."""
        if self._carrying.pop(request_id, None) is None or self._carrying:
            return
        journal = self._carried
        if journal is not None and journal.size > CARRIED_SPARE:
            with contextlib.suppress(OutputError):
                journal.empty()

    async def published(self) -> None:
        """Wait until the lines written so far are where the output is kept (at once for a DIR: the
        kernel has them; for a store, one upload shared by the requests that start meanwhile)."""
        if self.publisher is not None:
            await self.publisher()

    def done(
        self,
        request_id: str,
        outcome: str,
        *,
        status: int | None = None,
        maybe_billed: bool = False,
        error: str | None = None,
        seconds: float | None = None,
    ) -> None:
        """The request's fate. `seconds`: how long it took, when it is logged later than it ended (an
        answer is logged once its task's result line is written); else the time since its `sent` line."""
        if self._carrying:
            self._carried_done(request_id)
        started = self._sent.pop(request_id, None)
        if seconds is not None:
            seconds = round(seconds, 3)
        elif started is not None:
            seconds = round(time.monotonic() - started, 3)
        answered = outcome == "answered" and not (maybe_billed or error)
        if answered and type(status) is int and seconds is not None:
            # the usual line, as AttemptRecord.to_line makes it, written out: every request has one
            self._pending += (
                f'{{"event": "done", "request_id": {_string(request_id)}, "outcome": "answered", '
                f'"status": {status!r}, "seconds": {seconds!r}}}\n'
            ).encode()
            return
        record = AttemptRecord(
            "done",
            request_id,
            outcome=outcome,
            status=status,
            maybe_billed=maybe_billed,
            error=error,
            seconds=seconds,
        )
        self._pending += _line(record.to_line())
        if outcome == UNSENT:  # no `sent` line follows soon (the run stops): written now, not lost to a kill
            self._flush()
