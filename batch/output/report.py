"""What an output directory says, for `status` and `report` (`export` is in export.py). Read-only,
streaming: a directory of a million results is summed, not loaded.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from batch.errors import DirLockedError, transient_status
from batch.kind import TokenCounts
from batch.output.export import export as export  # the CLI imports it from here
from batch.output.lock import LOCK, probe
from batch.output.runlog import Accounting, account
from batch.output.scope import Scope, scope_of
from batch.output.store import RESULTS, RETRIED, RUNS, USAGE, parse_record, read_lines, whole_lines
from batch.running.idset import digest, repeated_in
from batch.running.prices import PriceTable, money
from batch.running.records import ErrorInfo, ResultRecord, UsageRecord, finished_entry, number

SLOWEST = 10


def lock_holder(root: Path) -> int | None:
    """The pid of the run holding DIR now, or None (0 when held by a pid we cannot read)."""
    try:
        probe(root)
    except DirLockedError:
        try:
            return int((root / LOCK).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0
    return None


DAMAGED_SHOWN = 20  # damaged result lines named one by one by `status`; the count covers all


@dataclass
class Damaged:
    """The whole lines of a results file that are no JSON object: damaged in place (a disk's fault, an
    edit that broke one), which every reader passes by. A resume reads a line by its first bytes (its id
    and status, records.finished_entry) and so may count its task finished all the same: then it is not
    sent again, while the reports show it pending."""

    count: int = 0
    shown: list[tuple[int, str | None]] = field(default_factory=list)  # (line number, the id a resume reads)

    def noted(self, lines: Iterator[bytes]) -> Iterator[dict[str, Any]]:
        """The records of `lines` (a results file's whole lines, in order), noting the damaged ones."""
        for line_number, raw in enumerate(lines, 1):
            record = parse_record(raw)
            if record is not None:
                yield record
            elif raw.strip():
                self.count += 1
                if len(self.shown) < DAMAGED_SHOWN:
                    found = finished_entry(raw)
                    self.shown.append((line_number, None if found is None else found[0]))


def last_lines(path: Path, damaged: Damaged | None = None) -> Iterator[dict[str, Any]]:
    """The lines of a results file that are their task's last (as read_lines reads them, in file order):
    a task with several lines (two runs of one store, a line copied by hand) counts once, as its last line
    says, as `export`, the page and a resume take it. A pass over the ids first (8 bytes a line) finds
    the tasks that have more than one line; only theirs are counted, and only then read a second time.
    `damaged`: told of the lines that are no JSON object."""
    # the checkpoint's fast scan (most lines need no JSON parsing): it only picks the tasks to look at
    keys = array("Q", (digest(found[0]) for raw in whole_lines(path) if (found := finished_entry(raw))))
    repeated = repeated_in(keys)
    del keys
    lines = read_lines(path) if damaged is None else damaged.noted(whole_lines(path))
    if not repeated:
        yield from lines
        return
    left = Counter(key for key in map(digest, _ids(path)) if key in repeated)  # lines of each still to come
    for line in lines:
        task_id = line.get("id")
        if isinstance(task_id, str) and (key := digest(task_id)) in repeated:
            left[key] -= 1
            if left[key] > 0:
                continue  # a later line of the same task says how it ended
        yield line


def _ids(path: Path) -> Iterator[str]:
    for line in read_lines(path):
        task_id = line.get("id")
        if isinstance(task_id, str):
            yield task_id


def status(
    root: Path,
    scope: Scope | None = None,
    *,
    written: Callable[[str], datetime | None] | None = None,
    held_here: int | None = None,
) -> dict[str, Any]:
    """done / failed / pending of the manifest's tasks (see output.scope), orphaned lines apart,
    maybe-billed, and whether a run holds DIR now. Maybe billed counts every request of every run's
    attempt log whose answer was not saved, whatever ended that run.

    `written`: DIR is a view of a store, which has no lock, and this tells when the store last received
    a line of the run of that id. Whether a run is going on is then not known (`running` None), unless
    one on this machine holds the store (`held_here`: its pid, 0 when unreadable); of a last run without
    its end, when it last wrote is said (a live run writes as it sends)."""
    scope = scope or scope_of(root)
    succeeded = failed = current = changed = 0
    short_tasks = images_missing = 0  # succeeded with fewer images than they paid for
    orphaned: Counter[str] = Counter()
    # the tasks whose lines were set aside to be sent again, without a new line (a run stopped before it
    # sent them), are pending: each a failure waiting for --retry-failed, or a changed task of a
    # --rerun-changed (Scope.failed_before)
    set_aside: dict[str, bool] = {}
    for record in map(ResultRecord.from_line, read_lines(root / RETRIED)):
        if scope.current(record.id):
            failure = scope.failed_before(record.id, record.failed, record.request_sha256)
            set_aside[record.id] = set_aside.get(record.id, False) or failure
    damaged = Damaged()
    for record in map(ResultRecord.from_line, last_lines(root / RESULTS, damaged)):
        set_aside.pop(record.id, None)
        if scope.current(record.id):
            current += 1
            changed += scope.changed(record.id, record.request_sha256)
        else:
            orphaned["failed" if record.failed else "succeeded"] += 1
            if not scope.include_orphaned:
                continue
        if record.failed:
            failed += 1
        else:
            succeeded += 1
            if record.images_missing:
                short_tasks += 1
                images_missing += record.images_missing
    total = scope.total
    holder = lock_holder(root) if written is None else held_here
    attempts = account(root / RUNS, live=holder is not None)
    runs = attempts.runs
    last = runs[-1] if runs else []
    start = next((e for e in last if e.get("event") == "start"), {})
    end = next((e for e in last if e.get("event") == "end"), None)
    last_written = written(attempts.ids[-1]) if written is not None and last and end is None else None
    return {
        "directory": str(root),
        "succeeded": succeeded,
        "failed": failed,
        "pending": None if total is None else max(0, total - current),
        # of the succeeded, the tasks whose answer's images did not all come (a link lost, fewer sent)
        "images_missing": images_missing,
        "tasks_missing_images": short_tasks,
        "retry_pending": sum(set_aside.values()),
        # of the pending, the finished tasks whose request changed, set aside by --rerun-changed
        "rerun_pending": len(set_aside) - sum(set_aside.values()),
        # with --include-orphaned, the orphaned lines are counted above, and in the total (as `report`)
        "tasks": total if total is None or not scope.include_orphaned else total + sum(orphaned.values()),
        "orphaned": sum(orphaned.values()),
        "orphaned_failed": orphaned["failed"],
        "include_orphaned": scope.include_orphaned,
        # finished tasks whose result line names another request than the manifest's now (None: unknown)
        "changed": changed if scope.requests is not None else None,
        # result lines that are no JSON object, and the first of them: line number, the task a resume
        # reads in it (it counts that task finished), or None
        "damaged": damaged.count,
        "damaged_lines": _damaged_lines(root, scope, damaged),
        "requests": attempts.requests,
        "maybe_billed": attempts.maybe_billed,
        **maybe_billed_parts(attempts),
        "in_flight": attempts.in_flight,
        # on a store (`written`), not known (None) unless a run on this machine holds it
        "running": True if holder is not None else (False if written is None else None),
        "pid": holder or None,
        "runs": len(runs),
        "manifest": scope.manifest or start.get("manifest"),
        "last_run": None
        if not last
        else {
            "started": start.get("at"),
            "ended": end.get("at") if end else None,
            "exit_code": end.get("exit_code") if end else None,
            "stop_reason": end.get("stop_reason") if end else None,
            # on a store, of a run without its end: when the store last received a line of it
            "last_written": None if last_written is None else last_written.isoformat(timespec="seconds"),
            "seconds_since_written": None
            if last_written is None
            else round(max(0.0, time.time() - last_written.timestamp()), 1),
        },
    }


def maybe_billed_parts(attempts: Accounting) -> dict[str, int]:
    """The two parts of the maybe-billed requests: those whose usage (a count so far) is in the ledger, so
    in the tokens and cost, if maybe not in full, and those counted in no cost (no usage came)."""
    return {
        "maybe_billed_counted": attempts.maybe_billed_counted,
        "maybe_billed_uncounted": attempts.maybe_billed - attempts.maybe_billed_counted,
    }


def maybe_billed_said(found: Mapping[str, Any], *, of_requests: bool = True) -> str:
    """How many requests may have been billed without a saved result, and how much of them the cost
    counts: "3 (of 29 requests): 1 in the ledger's cost (...), 2 in no cost (no usage came)"."""
    said = f"{found['maybe_billed']:,}"
    if of_requests:
        said += f" (of {found['requests']:,} requests)"
    counted, uncounted = found.get("maybe_billed_counted", 0), found.get("maybe_billed_uncounted", 0)
    if counted or uncounted:
        said += (
            f": {counted:,} in the ledger's cost (a usage so far: they may have cost more), "
            f"{uncounted:,} in no cost (no usage came)"
        )
    return said


def orphaned_line(found: Mapping[str, Any]) -> str | None:
    """What `status` and `report` say of the result lines of tasks no longer in the manifest."""
    if not found["orphaned"]:
        return None
    failed = f", {found['orphaned_failed']:,} of them failed" if found["orphaned_failed"] else ""
    how = (
        "counted above (--include-orphaned)"
        if found["include_orphaned"]
        else "not counted above; --include-orphaned counts them"
    )
    return f"orphaned: {found['orphaned']:,} result lines of tasks no longer in the manifest{failed}; {how}"


def changed_line(count: int, rerun: bool = False) -> str:
    """What `status` and a dry run say of the finished tasks whose request the manifest has changed
    (`rerun`: a dry run of --rerun-changed, which sends them)."""
    what = (
        f"{count:,} finished task(s) ran with another request than the manifest gives them now (a prompt, "
        "a setting, the endpoint or an input file changed since): "
    )
    if rerun:
        return what + "--rerun-changed sends them again, and moves their old lines to results.retried.jsonl"
    return what + "a task's id is its `id`, and they are not sent again; --rerun-changed sends them"


def as_json(found: Mapping[str, Any]) -> str:
    """`--json`'s document: JSON a pipeline can read, a sum past any float (costs of 1e308, in a ledger
    edited by hand) as null rather than `Infinity`, which is no JSON."""
    return json.dumps(_finite(found), indent=2)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _damaged_lines(root: Path, scope: Scope, damaged: Damaged) -> list[dict[str, Any]]:
    """The damaged lines `status` names, each with the id a resume reads in it (`task`, or None), what
    that makes of it (`reads_as`), and whether a resume then counts a task of the manifest finished by
    that line alone (`run_counts_it`: it is not sent again, while the reports show it pending; None
    where the manifest is not known). Looked for only when a line is damaged."""
    if not damaged.shown:
        return []
    named = {task for _, task in damaged.shown if task is not None}
    whole = {
        task
        for line in read_lines(root / RESULTS)
        if isinstance(task := line.get("id"), str) and task in named
    }
    found = []
    for line_number, task in damaged.shown:
        if task is None:
            reads_as = "no task"
        elif scope.known and not scope.current(task):
            reads_as = "no task of the manifest"
        elif task in whole:
            reads_as = "a task with a whole line"  # that line finishes it
        elif not scope.known:
            reads_as = "a task, if the manifest has it"
        else:
            reads_as = "a finished task"
        counts = {"a finished task": True, "a task, if the manifest has it": None}.get(reads_as, False)
        found.append({"line": line_number, "task": task, "reads_as": reads_as, "run_counts_it": counts})
    return found


_DAMAGE_SAID = {
    "a finished task": "task {task}: `run` counts it finished and does not send it again",
    "a task, if the manifest has it": "it reads as task {task}: `run` counts it finished, if it is a task",
    "no task": "no task can be read in it: if it was a result, `run` sends its task again",
    "no task of the manifest": "it reads as {task!r}, no task of the manifest: `run` counts no task finished "
    "by it (if the damage hit its id, the task it was is sent again)",
    "a task with a whole line": "task {task}, whose whole line counts",
}


def damaged_line(found: Mapping[str, Any]) -> str | None:
    """What `status` says of the result lines damaged in place, and of what `run` makes of each."""
    if not found.get("damaged"):
        return None
    named = [
        f"line {line['line']:,} (" + _DAMAGE_SAID[line["reads_as"]].format(task=line["task"]) + ")"
        for line in found["damaged_lines"]
    ]
    more = found["damaged"] - len(named)
    return (
        f"damaged: {found['damaged']:,} line(s) of {RESULTS} are not JSON, and are left out above: "
        + ", ".join(named)
        + (f", and {more:,} more" if more > 0 else "")
        + "; mend them, or delete them (a plain `run`, not --retry-failed, then sends their tasks again)"
    )


def format_status(found: Mapping[str, Any]) -> str:
    pending = "unknown" if found["pending"] is None else f"{found['pending']:,}"
    lines = [
        f"{found['directory']}: {found['succeeded']:,} succeeded, {found['failed']:,} failed, "
        f"{pending} pending" + (f" (of {found['tasks']:,})" if found["tasks"] is not None else ""),
        f"maybe billed without a saved result: {maybe_billed_said(found)}"
        + (f"; {found['in_flight']:,} in flight now" if found["in_flight"] else ""),
    ]
    if found.get("images_missing"):
        lines.append(
            f"{found['tasks_missing_images']:,} of the succeeded came with fewer images than asked: "
            f"{found['images_missing']:,} missing (a link lost, an image not usable, or fewer sent; "
            "`images_not_downloaded` and `images_not_usable` in results.jsonl say why)"
        )
    orphaned = orphaned_line(found)
    if orphaned:
        lines.append(orphaned)
    if found.get("changed"):
        lines.append(f"changed: {changed_line(found['changed'])}")
    damaged = damaged_line(found)
    if damaged:
        lines.append(damaged)
    lines += set_aside_lines(found)
    if found["running"] is None:  # a store, and no run on this machine holds it
        lines.append(
            "cannot tell whether a run is in progress: none on this machine, and a store has no lock; before "
            "starting a run on it from another machine, make sure none is (two runs on one store both pay)"
        )
    elif found["running"]:
        lines.append(f"a run is in progress now (pid {found['pid'] or 'unknown'})")
    else:
        lines.append("no run is in progress")
    last = found["last_run"]
    if last and not last["ended"] and found["running"]:  # the run in progress: it has not ended yet
        lines.append(f"this run: started {last['started']}, going on")
    elif last and not last["ended"] and found["running"] is None:
        written, since = last.get("last_written"), last.get("seconds_since_written")
        ago = f"; it last wrote there {_ago(since)} ago ({written})" if written else ""
        lines.append(
            f"last run: started {last['started']}, no end in the store: still running, or stopped without "
            f"its end (killed){ago}"
        )
    elif last:
        ended = last["ended"] or "did not end cleanly (killed?)"
        code = "" if last["exit_code"] is None else f", exit {last['exit_code']}"
        lines.append(
            f"last run: started {last['started']}, ended {ended}{code}"
            + (f" ({last['stop_reason']})" if last.get("stop_reason") else "")
        )
    if found["manifest"]:
        lines.append(f"manifest: {found['manifest']}")
    return "\n".join(lines)


def set_aside_lines(found: Mapping[str, Any]) -> list[str]:
    """What status and report say of the pending tasks a run set aside to send again and was stopped
    before it sent: failures, and changed tasks."""
    lines = []
    if found.get("retry_pending"):
        lines.append(
            f"{found['retry_pending']:,} of the pending failed before and were not sent again yet: "
            "`maas-batch retry-failed DIR` sends them (their failures are in results.retried.jsonl)"
        )
    if found.get("rerun_pending"):
        lines.append(
            f"{found['rerun_pending']:,} of the pending ran before with another request, and were set "
            "aside by --rerun-changed to be sent again, not sent yet: the next run sends them"
        )
    return lines


def _ago(seconds: float) -> str:
    """A time since, as a person reads it: `40 s`, `12 min`, `5 h`, `3 days`."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds // 60:.0f} min"
    if seconds < 172800:
        return f"{seconds // 3600:.0f} h"
    return f"{seconds // 86400:.0f} days"


def report(
    root: Path, prices: PriceTable, *, reprice: bool = False, scope: Scope | None = None
) -> dict[str, Any]:
    """Tokens and cost by kind and by model, attempts, failures by type, the slowest tasks, wall time, of
    the manifest's tasks (see output.scope); what orphaned lines hold is summed apart.

    An answer's cost is the one its run recorded (at that run's prices), unless `reprice` or the run
    recorded none: then it is priced with `prices`.
    """
    scope = scope or scope_of(root)
    orphaned = {"tasks": 0, "failed": 0, "answers": 0, "tokens": 0, "cost": 0.0}
    by_kind: dict[str, dict[str, Any]] = defaultdict(lambda: {"answers": 0, "tokens": 0, "cost": 0.0})
    by_model: dict[str, dict[str, Any]] = defaultdict(lambda: {"answers": 0, "tokens": 0, "cost": 0.0})
    unpriced: Counter[str] = Counter()
    total_tokens, total_cost = 0, 0.0
    estimated = {"answers": 0, "tokens": 0}  # answers that said no usage: booked at their estimate
    for line in read_lines(root / USAGE):
        usage = UsageRecord.from_line(line)
        tokens = usage.repriced_counts
        model = str(usage.model or "-")
        cost = usage.cost if not reprice and usage.cost is not None else prices.cost(model, tokens)
        if not scope.current(usage.task_id):
            orphaned["answers"] += 1
            orphaned["tokens"] += tokens.total
            orphaned["cost"] += cost or 0.0
            if not scope.include_orphaned:
                continue
        for bucket in (by_kind[str(usage.kind)], by_model[model]):
            bucket["answers"] += 1
            bucket["tokens"] += tokens.total
            bucket["cost"] += cost or 0.0
        if cost is None:
            unpriced[model] += 1
        if usage.estimated:
            estimated["answers"] += 1
            estimated["tokens"] += tokens.total
        total_tokens += tokens.total
        total_cost += cost or 0.0
    tasks = succeeded = attempts = images_missing = 0
    failures: dict[str, dict[str, Any]] = {}
    slowest: list[tuple[float, str, str]] = []
    # the tasks of lines set aside (--retry-failed, --rerun-changed): their tries are earlier attempts; one
    # without a line now (a retry stopped before sending it) made one first attempt, not a retry
    set_aside: set[str] = set()
    # of those, the manifest's tasks, each with whether it waits as a failure (as status counts them)
    waiting: dict[str, bool] = {}
    # the request of each task's last line set aside: a line after it of another request was a deliberate
    # re-send of the task as its request changed (--rerun-changed), no retry
    aside_request: dict[str, str | None] = {}
    resent = 0
    for record in map(ResultRecord.from_line, read_lines(root / RETRIED)):  # earlier tries, given another go
        if scope.counted(record.id):
            attempts += record.attempts
            if record.id in set_aside:
                resent += _other_request(aside_request[record.id], record.request_sha256)
            set_aside.add(record.id)
            aside_request[record.id] = record.request_sha256
        if scope.current(record.id):
            failure = scope.failed_before(record.id, record.failed, record.request_sha256)
            waiting[record.id] = waiting.get(record.id, False) or failure
    for record in map(ResultRecord.from_line, last_lines(root / RESULTS)):
        set_aside.discard(record.id)
        waiting.pop(record.id, None)
        if record.id in aside_request:
            resent += _other_request(aside_request.pop(record.id), record.request_sha256)
        if not scope.current(record.id):
            orphaned["tasks"] += 1
            orphaned["failed"] += record.failed
            if not scope.include_orphaned:
                continue
        tasks += 1
        attempts += record.attempts
        images_missing += record.images_missing
        if record.failed:
            error = record.error or ErrorInfo(None, None, None)
            error_type = str(error.type or "unknown")
            # retries run out on a 502 are one failure, whether it came as JSON (a server's own type), a
            # gateway's HTML page (http_502) or a stream's error event (its code, "502"): grouped by status,
            # the types it came as counted in the group
            group = failures.setdefault(
                f"http_{error.status}" if transient_status(error.status) else error_type,
                {
                    "count": 0,
                    "status": error.status,
                    "example": error.message,
                    "example_task": record.id,
                    "types": {},
                },
            )
            group["count"] += 1
            group["types"][error_type] = group["types"].get(error_type, 0) + 1
        else:
            succeeded += 1
        if isinstance(record.seconds, int | float):
            entry = (float(record.seconds), record.id, str(record.kind))
            if len(slowest) < SLOWEST:
                heapq.heappush(slowest, entry)
            else:
                heapq.heappushpop(slowest, entry)
    wall = 0.0
    logged = account(root / RUNS, live=lock_holder(root) is not None)
    runs = logged.runs
    for events, last_sent in zip(runs, logged.last_sent, strict=True):
        end = next((e for e in events if e.get("event") == "end" and "seconds" in e), None)
        seconds = None if end is None else number(end["seconds"])
        if seconds is None:  # killed, or going on: from its start to its last request (0 s were counted)
            seconds = _since_start(events, last_sent)
        wall += seconds or 0.0  # a log edited by hand may say anything: no number counts 0
    total = scope.total
    current = tasks - (orphaned["tasks"] if scope.include_orphaned else 0)
    return {
        "directory": str(root),
        "manifest": scope.manifest,
        "tasks": tasks,
        "succeeded": succeeded,
        "failed": tasks - succeeded,
        "pending": None if total is None else max(0, total - current),
        "orphaned": orphaned["tasks"],
        "orphaned_failed": orphaned["failed"],
        "orphaned_answers": orphaned["answers"],
        "orphaned_tokens": orphaned["tokens"],
        "orphaned_cost": round(float(orphaned["cost"]), 6),
        "include_orphaned": scope.include_orphaned,
        "attempts": attempts,
        # each task's first attempt, and its first with a changed request, are no retries
        "retries": max(0, attempts - tasks - len(set_aside) - resent),
        # the tasks sent again as their request changed (--rerun-changed): a send each, deliberate
        "resent_changed": resent,
        # of the pending, as status says: failures a retry set aside and was stopped before sending
        # (a retry killed part way showed "0 failed" and no failure at all), and changed tasks
        "retry_pending": sum(waiting.values()),
        "rerun_pending": len(waiting) - sum(waiting.values()),
        "requests": logged.requests,
        "maybe_billed": logged.maybe_billed,
        **maybe_billed_parts(logged),
        "images_missing": images_missing,
        "tokens": total_tokens,
        "cost": round(total_cost, 6),
        "unpriced_answers": dict(unpriced),
        # of the totals, the answers that reported no usage, counted at the task's estimate
        "estimated_answers": estimated["answers"],
        "estimated_tokens": estimated["tokens"],
        "by_kind": {k: {**v, "cost": round(v["cost"], 6)} for k, v in sorted(by_kind.items())},
        "by_model": {k: {**v, "cost": round(v["cost"], 6)} for k, v in sorted(by_model.items())},
        "failures": dict(sorted(failures.items(), key=lambda item: -int(item[1]["count"]))),
        "slowest": [
            {"id": task_id, "kind": kind, "seconds": seconds}
            for seconds, task_id, kind in sorted(slowest, reverse=True)
        ],
        "runs": len(runs),
        "run_seconds": round(wall, 1),
    }


def _other_request(before: str | None, after: str | None) -> bool:
    """Whether a task's line names another request than its line before (both known): it was sent again
    because its request changed."""
    return before is not None and after is not None and before != after


def _since_start(events: list[dict[str, Any]], last_sent: float | None) -> float | None:
    """A run without its own duration (killed, or going on): from its start to its last `sent` line."""
    start = next((e for e in events if e.get("event") == "start"), None)
    at = start.get("at") if start is not None else None
    if last_sent is None or not isinstance(at, str):
        return None
    try:
        began = datetime.fromisoformat(at).timestamp()
    except ValueError:
        return None
    return max(0.0, last_sent - began)


def format_report(found: Mapping[str, Any]) -> str:
    # the tasks with a result line, and the pending ones: "18 tasks (18 succeeded, 102 pending)" read as
    # a sum that did not add up
    tasks = found["tasks"] + (found["pending"] or 0)
    lines = [
        f"{found['directory']}: {tasks:,} tasks ({found['succeeded']:,} succeeded, "
        f"{found['failed']:,} failed"
        + ("" if found["pending"] is None else f", {found['pending']:,} pending")
        + f") in {found['runs']} run{'s' if found['runs'] != 1 else ''}, "
        f"{found['run_seconds']:,.1f} s of runs",
        f"attempts: {found['attempts']:,} ({found['retries']:,} retries"
        + (
            f", {found['resent_changed']:,} re-sent as their request changed"
            if found.get("resent_changed")
            else ""
        )
        + f"), {found['requests']:,} requests "
        f"sent; maybe billed without a saved result: {maybe_billed_said(found, of_requests=False)}",
        f"total: {found['tokens']:,} tokens, {money(found['cost'])}"
        + (
            f" (+ {sum(found['unpriced_answers'].values())} answers of models with no price: "
            f"{', '.join(found['unpriced_answers'])})"
            if found["unpriced_answers"]
            else ""
        ),
    ]
    if found.get("estimated_answers"):  # the server said nothing of their usage: not what it billed
        lines.append(
            f"of which estimated: {found['estimated_tokens']:,} tokens of {found['estimated_answers']:,} "
            "answer(s) that reported no usage, counted at the task's estimate (`estimated` in usage.jsonl); "
            "what the server billed for them is not known here"
        )
    lines += set_aside_lines(found)
    orphaned = orphaned_line(found)
    if orphaned:
        lines.append(
            orphaned.replace("counted above", "in the totals")
            + f" ({found['orphaned_answers']:,} answer{'s' if found['orphaned_answers'] != 1 else ''}, "
            f"{found['orphaned_tokens']:,} tokens, {money(found['orphaned_cost'])})"
        )
    if found["manifest"]:
        lines.append(f"manifest: {found['manifest']}")
    lines += ["", "by kind:"]
    lines += [
        f"  {kind:<10} {v['answers']:>8,} answers {v['tokens']:>14,} tokens  {money(v['cost'])}"
        for kind, v in found["by_kind"].items()
    ]
    lines.append("by model:")
    lines += [
        f"  {model:<24} {v['answers']:>8,} answers {v['tokens']:>14,} tokens  {money(v['cost'])}"
        for model, v in found["by_model"].items()
    ]
    if found["images_missing"]:
        lines.append(
            f"images missing: {found['images_missing']:,} (answers with fewer images than n; "
            "images_missing in their result lines)"
        )
    if found["failures"]:
        lines.append("failures:")
        for kind, group in found["failures"].items():
            status = f" (HTTP {group['status']})" if group["status"] else ""
            types = group.get("types") or {}
            came = (
                f" [as {', '.join(f'{count:,} {name}' for name, count in types.items())}]"
                if set(types) - {kind}
                else ""
            )
            example = f"e.g. {group['example_task']}: {group['example']}"
            lines.append(f"  {group['count']:>6,} {kind}{status}{came}: {example}")
    if found["slowest"]:
        lines.append("slowest tasks:")
        lines += [f"  {s['seconds']:>8.1f} s  {s['kind']:<9} {s['id']}" for s in found["slowest"]]
    return "\n".join(lines)


def format_plan(name: str, plan: Any, prices: PriceTable, heading: str = "") -> list[str]:
    """A checked manifest's tasks by kind, model and endpoint, with their estimated tokens and cost."""
    lines = [heading or f"{name}: {plan.total:,} task{'s' if plan.total != 1 else ''}, valid"]
    width = max((len(model) for _, model, _ in plan.counts), default=5)
    totals = [0, 0.0]
    unpriced: set[str] = set()
    for (kind, model, endpoint), count in sorted(plan.counts.items()):
        lines.append(f"  {kind:<9} {model:<{width}}  {count:>9,}   endpoint {endpoint}")
    if plan.estimates:
        lines.append(
            "estimated (before sending; text at 4 characters a token, image output by size and quality):"
        )
        for (kind, model), (tokens_in, images_in, tokens_out) in sorted(plan.estimates.items()):
            tokens = TokenCounts(tokens_in, tokens_out, tokens_in + tokens_out, images_in)
            cost = prices.cost(model, tokens)
            if cost is None:
                unpriced.add(model)
            totals[0] += tokens.total
            totals[1] += cost or 0.0
            lines.append(f"  {kind:<9} {model:<{width}}  {tokens.total:>13,} tokens  {money(cost)}")
        lines.append(
            f"  total{'':<{width + 5}}  {int(totals[0]):>13,} tokens  {money(totals[1])}"
            + (f" + the models with no price ({', '.join(sorted(unpriced))})" if unpriced else "")
        )
        if not heading:
            lines.append("prices (USD per million tokens: text input / image input / output):")
            lines.extend(prices.describe(model for _, model in plan.estimates))
    return lines
