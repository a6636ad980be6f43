"""The line formats of DIR, written and read here only: a task's result line (results.jsonl), a billed
answer's ledger line (usage.jsonl) and an attempt's lines in the run log (runs/<run>.jsonl).

Users' pipelines read these files: the keys and their order are a contract. `to_line` builds a line in
that order; `from_line` reads one back, leniently (a hand-edited line with a missing or odd field
reads as the readers always read it: a missing number is 0, a mapping that is not one is empty).
Pure: the files are read and written by output.store.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeGuard, TypeVar

from batch import codec
from batch.kind import TokenCounts

ID_PREFIX = b'{"id": "'
STATUS_MARK = b'"status": "'  # its first match after the id is the line's own status (then kind)
# a line's last key, as ResultRecord.to_line writes it: what was sent, as 16 hex digits (request_digest)
REQUEST_MARK = b', "request_sha256": "'
REQUEST_TAIL = len(REQUEST_MARK) + 16 + len(b'"}\n')
_HEX = re.compile("[0-9a-f]{16}")
_HEX_BYTES = re.compile(b"[0-9a-f]{16}")


_this_second: tuple[int, str] = (-1, "")  # the second last stamped, and its date and time formatted


def now() -> str:
    """The time stamp of a line: UTC, ISO 8601, milliseconds, as `datetime.isoformat` writes it. The
    date and time are formatted once a second: two stamps a task, each a datetime, cost more."""
    global _this_second
    second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    known, formatted = _this_second
    if second != known:
        formatted = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _this_second = (second, formatted)
    return f"{formatted}.{nanoseconds // 1_000_000:03d}+00:00"


def _int(value: Any) -> int:
    """A count as a line holds it; 0 for anything that is not one (a line edited by hand, or torn), an
    integer past any float too (400 digits: no price or sum of it would be a number)."""
    if type(value) is int and -_PLAIN < value < _PLAIN:
        return value  # as the tool writes it: the usual line, without the checks below
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if number(value) is not None else 0
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str):  # "12", as a hand-edited line may hold it
        try:
            return _int(int(value.strip()))
        except ValueError:
            return 0
    return 0


def number(value: Any) -> float | None:
    """A cost or a duration, or None for anything that is not a finite number (an integer of 400 digits,
    in a line edited by hand, is none: no sum or price of it would be either)."""
    if type(value) is float:  # as the tool writes it: the usual line, without the checks below
        return value if math.isfinite(value) else None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return value if math.isfinite(value) else None
    except OverflowError:  # an int past any float
        return None


_PLAIN = 2**63  # a count the tool writes is less: one past it is looked at (a float may not hold it)


def _counts(usage: Mapping[str, Any]) -> dict[str, int | float]:
    """A line's usage: its token counts, without what is not a number."""
    counts = dict(usage)
    for key, value in counts.items():
        if type(key) is not str or type(value) is not int or not -_PLAIN < value < _PLAIN:
            return {str(key): value for key, value in usage.items() if number(value) is not None}
    return counts  # as the tool writes it: the usual line, read without a call a count


def _strings(value: Any) -> tuple[str, ...]:
    """A list of names (files, inputs), or none for anything that is not a list."""
    if not value:  # the usual line's: no files, no inputs
        return ()
    return tuple(str(item) for item in value) if isinstance(value, list | tuple) else ()


def request_digest(value: Any) -> str | None:
    """A request digest as the tool writes one (16 lowercase hex digits), or None."""
    if isinstance(value, str) and len(value) == 16 and value.isascii() and _HEX.fullmatch(value):
        return value
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if _is_mapping(value) else {}


def _is_mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    """isinstance(value, Mapping), told at once for a line's usual values (a dict, None): the check of
    an abstract class costs three times a plain one."""
    return type(value) is dict or (value is not None and isinstance(value, Mapping))


# a line's fields read as ResultRecord.from_line reads them, for a reader of a few of them alone (the
# card of a line written, output.cards.line_card)
as_count, as_counts, as_mapping, as_strings, is_mapping = _int, _counts, _mapping, _strings, _is_mapping

_Made = TypeVar("_Made")


def made(cls: type[_Made], fields: dict[str, Any]) -> _Made:
    """An instance of a frozen dataclass given every one of its fields, built without its __init__,
    which sets each field through object.__setattr__: a ResultRecord (24 fields) costs 7 us that way,
    against 1.7 for `fields` (a dict of its own) made its __dict__. For the records made once a line:
    a result line read back (the page, report, export) and each task's result and ledger lines written
    (batch.running.bookkeeping); tests/running/test_records.py checks that the fields are all there."""
    instance = object.__new__(cls)
    object.__setattr__(instance, "__dict__", fields)
    return instance


@dataclass(frozen=True)
class ErrorInfo:
    """`error` of a failed task's result line."""

    type: str | None
    status: int | None
    message: str | None

    def to_line(self) -> dict[str, Any]:
        return {"type": self.type, "status": self.status, "message": self.message}

    @classmethod
    def from_line(cls, value: Any) -> ErrorInfo | None:
        if value is None:  # the usual line's: a task that succeeded
            return None
        found = _mapping(value)
        if not found:
            return None
        return cls(found.get("type"), found.get("status"), found.get("message"))


class TaskUsage(NamedTuple):
    """`usage` of a result line: the task's billed answers summed. A named tuple, not a frozen dataclass:
    made once a task, only to be written out."""

    input_tokens: int
    output_tokens: int
    total_tokens: int

    def to_line(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }


_RESULT_KEYS = frozenset(
    (
        "id",
        "kind",
        "status",
        "model",
        "custom_id",
        "prompt",
        "params",
        "inputs",
        "files",
        "text",
        "images_missing",
        "answer_file",
        "request_id",
        "usage",
        "cost",
        "attempts",
        "maybe_billed",
        "error",
        "meta",
        "endpoint",
        "seconds",
        "finished_at",
        "request_sha256",
    )
)


@dataclass(frozen=True)
class ResultRecord:
    """One line of results.jsonl: the moment a task counts as finished."""

    id: str
    kind: str | None
    status: str | None
    model: str | None
    prompt: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    usage: Mapping[str, Any] | None = None  # TaskUsage.to_line() as written
    cost: float | None = None
    attempts: int = 0
    endpoint: str | None = None
    seconds: float | None = None
    finished_at: str | None = None
    custom_id: str | None = None
    inputs: tuple[str, ...] = ()  # absolute paths of the task's input files
    text: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # the kind's own fields (texts, tool_calls...)
    images_missing: int = 0
    answer_file: str | None = None  # DIR/answers/...: the raw body of a paid answer that was not usable
    request_id: str | None = None  # the server's id of the answer kept
    maybe_billed: int = 0
    error: ErrorInfo | None = None
    meta: Mapping[str, Any] | None = None
    # the first 16 hex digits of the sha256 of what was sent (the task's kind, endpoint, fields and input
    # files' bytes: TaskSpec.request): a task whose id is its own is found changed since it ran by it
    request_sha256: str | None = None
    # the line as read, every field of it (unknown ones too), for a reader that passes it on whole (the
    # jsonl export); empty for a record built to be written
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def texts(self) -> list[Any]:
        """The answer's text per choice: `texts` (n > 1), else [`text`]."""
        texts = self.extra.get("texts")
        return texts if isinstance(texts, list) and texts else [self.text]

    @property
    def finish_reasons(self) -> list[Any]:
        """The finish reason per choice: `finish_reasons`, else [`finish_reason`]."""
        found = self.extra.get("finish_reasons")
        return found if isinstance(found, list) else [self.extra.get("finish_reason")]

    @property
    def tool_calls_per_choice(self) -> list[Any]:
        """Tool calls by choice: `tool_calls_per_choice`, else `tool_calls` (choice 0's list; in older
        result lines, already a list of lists)."""
        per_choice = self.extra.get("tool_calls_per_choice")
        if isinstance(per_choice, list):
            return per_choice
        calls = self.extra.get("tool_calls")
        if not isinstance(calls, list) or not calls:
            return []
        return calls if all(isinstance(item, list) for item in calls) else [calls]

    @property
    def reasoning(self) -> str | None:
        reasoning = self.extra.get("reasoning")
        return reasoning if isinstance(reasoning, str) else None

    def to_line(self) -> dict[str, Any]:
        """The line, its keys in the order users' pipelines know (optional keys only when set)."""
        line: dict[str, Any] = {"id": self.id, "kind": self.kind, "status": self.status, "model": self.model}
        if self.custom_id is not None:
            line["custom_id"] = self.custom_id
        line["prompt"] = self.prompt
        line["params"] = self.params
        if self.inputs:
            line["inputs"] = list(self.inputs)
        line["files"] = list(self.files)
        if self.text is not None:
            line["text"] = self.text
        line.update(self.extra)
        optional = (
            ("images_missing", self.images_missing or None),
            ("answer_file", self.answer_file),
            ("request_id", self.request_id),
        )
        line.update((key, value) for key, value in optional if value is not None)
        line["usage"] = self.usage
        line["cost"] = self.cost
        line["attempts"] = self.attempts
        if self.maybe_billed:
            line["maybe_billed"] = self.maybe_billed
        if self.error is not None:
            line["error"] = self.error.to_line()
        if self.meta:
            line["meta"] = self.meta
        line["endpoint"] = self.endpoint
        line["seconds"] = self.seconds
        line["finished_at"] = self.finished_at
        if self.request_sha256 is not None:
            line["request_sha256"] = self.request_sha256  # last: the checkpoint's fast scan reads it there
        return line

    @classmethod
    def from_line(cls, line: Mapping[str, Any]) -> ResultRecord:
        text = line.get("text")
        meta = line.get("meta")
        usage = line.get("usage")
        return made(
            cls,
            {
                "id": str(line.get("id")),
                "kind": line.get("kind"),
                "status": line.get("status"),
                "model": line.get("model"),
                "prompt": line.get("prompt"),
                "params": _mapping(line.get("params")),
                "files": _strings(line.get("files")),
                "usage": _counts(usage) if _is_mapping(usage) else None,
                "cost": number(line.get("cost")),
                "attempts": _int(line.get("attempts")),
                "endpoint": line.get("endpoint"),
                "seconds": number(line.get("seconds")),
                "finished_at": line.get("finished_at"),
                "custom_id": line.get("custom_id"),
                "inputs": _strings(line.get("inputs")),
                "text": text if isinstance(text, str) else None,
                "extra": {key: value for key, value in line.items() if key not in _RESULT_KEYS},
                "images_missing": _int(line.get("images_missing")),
                "answer_file": line.get("answer_file"),
                "request_id": line.get("request_id"),
                "maybe_billed": _int(line.get("maybe_billed")),
                "error": ErrorInfo.from_line(line.get("error")),
                "meta": meta if _is_mapping(meta) else None,
                "request_sha256": request_digest(line.get("request_sha256")),
                "raw": line,
            },
        )


@dataclass(frozen=True)
class UsageRecord:
    """One line of usage.jsonl, the ledger: a billed answer, written before anything is done with it."""

    task_id: str
    request_id: str | None
    server_request_id: str | None
    kind: str | None
    model: str | None
    endpoint: str | None
    counts: TokenCounts
    cost: float | None  # US dollars at the prices of the run that wrote it; None: no price
    usage: Mapping[str, Any] | None  # as the answer reported it; None: it said nothing
    at: str | None = None
    estimated: bool = False  # the answer reported no usage it could be read by: counted at its estimate
    # the request it answered, as the task's result line names it (TaskSpec.request): which request a
    # paid answer a killed run kept was for (runlog.KeptAnswer)
    request_sha256: str | None = None

    @property
    def repriced_counts(self) -> TokenCounts:
        """The counts a reader prices the line with again (budgets, `report --reprice`): the same the run
        priced it with, cached input apart (a line written before that split has none: priced as then)."""
        return self.counts

    def to_line(self) -> dict[str, Any]:
        counts = self.counts
        line: dict[str, Any] = {
            "task_id": self.task_id,
            "request_id": self.request_id,
            "server_request_id": self.server_request_id,
            "kind": self.kind,
            "model": self.model,
            "endpoint": self.endpoint,
            "input_tokens": counts.input,
            "output_tokens": counts.output,
            "total_tokens": counts.total,
            "image_input_tokens": counts.image_input,
            "cached_input_tokens": counts.cached_input,
            "reasoning_tokens": counts.reasoning,
            "cost": None if self.cost is None else round(self.cost, 10),
            "usage": self.usage,
            "at": self.at,
        }
        if self.estimated:
            line["estimated"] = True
        if self.request_sha256 is not None:
            line["request_sha256"] = self.request_sha256
        return line

    @classmethod
    def from_line(cls, line: Mapping[str, Any]) -> UsageRecord:
        cost = number(line.get("cost"))
        usage = line.get("usage")
        return cls(
            task_id=str(line.get("task_id")),
            request_id=line.get("request_id"),
            server_request_id=line.get("server_request_id"),
            kind=line.get("kind"),
            model=line.get("model"),
            endpoint=line.get("endpoint"),
            counts=TokenCounts(
                _int(line.get("input_tokens")),
                _int(line.get("output_tokens")),
                _int(line.get("total_tokens")),
                _int(line.get("image_input_tokens")),
                _int(line.get("cached_input_tokens")),
                _int(line.get("reasoning_tokens")),
            ),
            cost=None if cost is None else float(cost),
            usage=usage if isinstance(usage, Mapping) else None,
            at=line.get("at"),
            estimated=line.get("estimated") is True,
            request_sha256=request_digest(line.get("request_sha256")),
        )


@dataclass(frozen=True)
class AttemptRecord:
    """A line of a run's attempt log: `sent` before a request leaves, `done` when its fate is known."""

    event: str  # "sent" | "done"
    request_id: str
    task_id: str | None = None
    outcome: str | None = None  # of "done": answered | error | failed | broken | cancelled | interrupted
    # | unsent (the store could not take its `sent` line)
    status: int | None = None
    maybe_billed: bool = False
    error: str | None = None
    seconds: float | None = None
    t: float | None = None  # of "sent": epoch seconds

    def to_line(self) -> dict[str, Any]:
        if self.event == "sent":
            return {"event": "sent", "request_id": self.request_id, "task_id": self.task_id, "t": self.t}
        line: dict[str, Any] = {"event": "done", "request_id": self.request_id}
        if self.task_id is not None:
            line["task_id"] = self.task_id
        line["outcome"] = self.outcome
        optional = (
            ("status", self.status),
            ("maybe_billed", True if self.maybe_billed else None),
            ("error", self.error or None),
            ("seconds", self.seconds),
        )
        line.update((key, value) for key, value in optional if value is not None)
        return line

    @classmethod
    def from_line(cls, line: Mapping[str, Any]) -> AttemptRecord:
        return cls(
            event=str(line.get("event")),
            request_id=str(line.get("request_id")),
            task_id=None if line.get("task_id") is None else str(line.get("task_id")),
            outcome=line.get("outcome"),
            status=line.get("status"),
            maybe_billed=line.get("maybe_billed") is True,
            error=line.get("error"),
            seconds=line.get("seconds"),
            t=line.get("t"),
        )


@dataclass(frozen=True)
class RunRecord:
    """A run's own line in its attempt log: `start` (what the run was given) or `end` (how it ended)."""

    event: str  # "start" | "end"
    at: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)  # the rest, in the line's order

    def to_line(self) -> dict[str, Any]:
        return {"event": self.event, "at": self.at, **self.fields}

    @classmethod
    def from_line(cls, line: Mapping[str, Any]) -> RunRecord:
        at = line.get("at")
        return cls(
            event=str(line.get("event")),
            at=at if isinstance(at, str) else None,
            fields={key: value for key, value in line.items() if key not in ("event", "at")},
        )


def attempt_log_line(line: Mapping[str, Any]) -> AttemptRecord | RunRecord | None:
    """A line of a run's attempt log, read by its event: None for a line that is none of them."""
    event = line.get("event")
    if event in ("sent", "done"):
        return AttemptRecord.from_line(line)
    if event in ("start", "end"):
        return RunRecord.from_line(line)
    return None


def requested_entry(raw: bytes) -> tuple[str, str] | None:
    """(id, request_sha256) of one raw line of results.jsonl (its newline included), or None if it is no
    result or names no request (a line of an earlier version). Fast for the lines `ResultRecord.to_line`
    writes: the digest is their last key; any other line is parsed."""
    tail = raw[-REQUEST_TAIL:]
    if tail.startswith(REQUEST_MARK) and tail.endswith(b'"}\n'):
        named, request = _written_id(raw), tail[len(REQUEST_MARK) : -3]
        if named is not None and _HEX_BYTES.fullmatch(request):
            return named, request.decode()
    if REQUEST_MARK[2:] not in raw:  # no line without the key's name can name a request
        return None
    line = _parsed_result(raw)
    found = None if line is None else request_digest(line.get("request_sha256"))
    return None if found is None or line is None else (line["id"], found)


def _written_id(raw: bytes) -> str | None:
    """The id a line starts with, as ResultRecord.to_line writes it ([A-Za-z0-9._-]); None for any other
    line: an escape (`\\u0061`) or a byte that is not ASCII, in a line edited by hand or damaged, is for
    the parser to read or to refuse."""
    if not raw.startswith(ID_PREFIX):
        return None
    end = raw.find(b'"', len(ID_PREFIX))
    named = raw[len(ID_PREFIX) : end]
    if end < 0 or b"\\" in named or not named.isascii():
        return None
    return named.decode()


def _parsed_result(raw: bytes) -> dict[str, Any] | None:
    """A line parsed, if it is a result: an object with a string id."""
    try:
        line = codec.loads(raw)
    except (ValueError, RecursionError):
        return None
    return line if isinstance(line, dict) and isinstance(line.get("id"), str) else None


def finished_entry(raw: bytes) -> tuple[str, bool] | None:
    """(id, failed) of one raw line of results.jsonl, or None if it is not a result. Fast: the lines
    `ResultRecord.to_line` writes start with the id, so most need no JSON parsing; any other line is
    parsed and read by `ResultRecord.from_line`."""
    named = _written_id(raw)
    if named is not None:
        status = raw.find(STATUS_MARK, len(ID_PREFIX) + len(named))
        if status > 0:
            return named, raw.startswith(b'failed"', status + len(STATUS_MARK))
    line = _parsed_result(raw)
    if line is None:
        return None
    record = ResultRecord.from_line(line)
    return record.id, record.failed
