"""`export`: a directory's results for another program, one line (or row) per task, read and written one
task at a time: the manifest's tasks in manifest order, pending ones included, orphaned lines left out
unless asked for (output.scope); `Selection` keeps the statuses and kinds asked for.

- csv: the flat columns a spreadsheet or a join wants (`cost` the result line's, `billed_cost` all the
  ledger billed for the task), and one `meta.<key>` column per meta key; LF line
  ends, numbers as plain decimals (0.0000717, never 7.17e-05), text that a spreadsheet would run as a
  formula (`=...`, `+`, `-`, `@`, a tab or CR first) behind a `'`.
- jsonl: every field of each result line as it was written (`text`, `texts`, `finish_reason(s)`,
  `tool_calls`, `reasoning`, `images_missing`, `request_id`, ...), plus the flat columns of the CSV.
- sqlite: see output.database.
- openai: the OpenAI Batch *output* format, `{"id", "custom_id", "response": {"status_code", "request_id",
  "body"}, "error"}`, the body rebuilt in the API's own answer shape, images read back from DIR (or from
  the store of an s3:// output); finished tasks only (the format has no pending line). An image is
  streamed from its file into the line, so no more than one image's bytes are held at a time (from a
  store: one task's images).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import logging
import mimetypes
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from batch.kind import builtin_registry
from batch.output.bills import TaskBills, task_bills
from batch.output.scope import Entry, Scope, entries, scope_of
from batch.running.records import ErrorInfo, ResultRecord

log = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl", "openai", "sqlite")
STATUSES = ("succeeded", "failed", "pending")
EXPORT_COLUMNS = [
    "id",
    "custom_id",
    "kind",
    "status",
    "model",
    "files",
    "text",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cost",
    "attempts",
    "error_type",
    "error_message",
    "prompt",
    # images paid for and not saved (a link lost, fewer than n sent): a task "succeeded" with fewer
    "images_missing",
    # what the task cost in all, from the ledger (output.bills): `cost` is its result line's, what the run
    # that wrote it paid; these count every answer billed for it, in every run (a failure retried since,
    # a line --rerun-changed set aside, a killed run's answer), so that the column sums to report's cost
    "billed_answers",
    "billed_tokens",
    "billed_cost",
]
CHUNK = 3 * 2**18  # bytes of an image encoded at a time: a multiple of 3, so the pieces join cleanly


@dataclass(frozen=True)
class Selection:
    """The rows asked for: by status (STATUSES) and by kind; empty keeps all. With kinds asked for,
    `seen` gathers the kinds of the entries looked at (a kind asked for that none has: a typo, said)."""

    statuses: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()
    seen: set[str] = field(default_factory=set, compare=False, hash=False, repr=False)

    def wants(self, entry: Entry) -> bool:
        if not self.kinds:
            return not self.statuses or entry.status in self.statuses
        if entry.kind is not None:
            self.seen.add(entry.kind)
        return entry.kind in self.kinds and (not self.statuses or entry.status in self.statuses)


EVERYTHING = Selection()


def selected(root: Path, scope: Scope | None, selection: Selection) -> Iterator[Entry]:
    """The entries (output.scope) of DIR that `selection` keeps."""
    for entry in entries(root, scope or scope_of(root)):
        if selection.wants(entry):
            yield entry


def export(
    root: Path,
    fmt: str,
    stream: IO[str],
    scope: Scope | None = None,
    selection: Selection = EVERYTHING,
    fetch: Callable[[str], bytes | None] | None = None,
) -> int:
    """Write DIR's tasks to `stream` in `fmt` (csv, jsonl or openai). Returns the number of rows (lines).
    `fetch`: how openai reads an image by its name in DIR, if not from DIR on disk (an s3:// output)."""
    if fmt == "jsonl":
        return _jsonl(root, stream, scope, selection)
    if fmt == "openai":
        return _openai(root, stream, scope, selection, fetch)
    return _csv(root, stream, scope, selection)


def plain(value: Any) -> Any:
    """A float as a plain decimal (7.17e-05 as 0.0000717), for tools that do not read exponents."""
    if isinstance(value, float) and value == value and value not in (float("inf"), float("-inf")):
        return format(Decimal(repr(value)), "f")
    return value


def row(entry: Entry, bills: TaskBills | None = None) -> dict[str, Any]:
    """The flat columns of one task: its result line's, or a pending task's id, kind, model and prompt;
    with `bills` (DIR's ledger), what the task cost in all (a pending task may have cost already)."""
    if entry.record is not None:
        found = _row(entry.record)
    else:
        task = entry.task
        assert task is not None
        found = dict.fromkeys(EXPORT_COLUMNS)
        found.update(
            id=task.id,
            custom_id=task.custom_id,
            kind=task.kind,
            status="pending",
            model=task.model,
            files=[],
            prompt=task.prompt,
        )
    if bills is not None:
        bill = bills.of(entry.id)
        found.update(billed_answers=bill.answers, billed_tokens=bill.tokens, billed_cost=bill.cost)
    return found


def bills_of(root: Path, scope: Scope | None) -> TaskBills:
    """The ledger's bill of each task of DIR (of each shard's ledger, for a sharded DIR)."""
    scope = scope or scope_of(root)
    return task_bills([root / part.folder for part in scope.parts] if scope.parts else [root])


def meta_of(entry: Entry) -> Mapping[str, Any]:
    if entry.record is not None:
        return entry.record.meta or {}
    return entry.task.meta if entry.task is not None else {}


def _row(record: ResultRecord) -> dict[str, Any]:
    usage = record.usage or {}
    error = record.error
    return {
        "id": record.id,
        "custom_id": record.custom_id,
        "kind": record.kind,
        "status": record.status,
        "model": record.model,
        "files": list(record.files),
        "text": record.text,
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": usage.get("output_tokens"),
        "total_tokens": usage.get("total_tokens"),
        "cost": record.cost,
        "attempts": record.attempts,
        "error_type": error.type if error else None,
        "error_message": error.message if error else None,
        "prompt": record.prompt,
        "images_missing": record.images_missing or None,
        "billed_answers": None,
        "billed_tokens": None,
        "billed_cost": None,
    }


def _jsonl(root: Path, stream: IO[str], scope: Scope | None, selection: Selection) -> int:
    """Each result line whole (no field is left behind), with the CSV's flat columns where it lacks them;
    a pending task's line has those columns, its params, inputs and meta."""
    rows = 0
    bills = bills_of(root, scope)
    for entry in selected(root, scope, selection):
        record = entry.record
        line: dict[str, Any] = dict(record.raw) if record is not None else {}
        if entry.task is not None and record is None:
            line.update(params=entry.task.params, inputs=list(entry.task.inputs))
        for key, value in row(entry, bills).items():
            line.setdefault(key, value)
        line["files"] = list(record.files) if record is not None else []
        line["meta"] = dict(meta_of(entry))
        stream.write(json.dumps(line, ensure_ascii=False) + "\n")
        rows += 1
    return rows


def _csv(root: Path, stream: IO[str], scope: Scope | None, selection: Selection) -> int:
    scope = scope or scope_of(root)
    meta_keys: dict[str, None] = {}
    for entry in selected(root, scope, selection):  # a first pass for the columns: meta keys differ
        meta_keys.update(dict.fromkeys(str(k) for k in meta_of(entry)))
    writer = csv.DictWriter(
        _LfRows(stream), fieldnames=EXPORT_COLUMNS + [f"meta.{k}" for k in meta_keys], lineterminator="\r\n"
    )
    writer.writeheader()
    rows = 0
    bills = bills_of(root, scope)
    for entry in selected(root, scope, selection):
        found = row(entry, bills)
        found["files"] = ";".join(found["files"])
        for key, value in meta_of(entry).items():
            found[f"meta.{key}"] = (
                value if isinstance(value, str | int | float) or value is None else json.dumps(value)
            )
        writer.writerow({key: plain(inert(value)) for key, value in found.items()})
        rows += 1
    return rows


class _LfRows:
    """Rows written with CRLF ends, each end written as LF. The csv module quotes a field holding a
    character of the line end only: with LF alone, a CR inside a text (a server's message) went out bare,
    and csv readers and spreadsheets took it for the row's end, the rest of the text a row of its own
    (its first cell, `=...`, run as a formula). csv writes each row in one call."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, row: str) -> int:
        return self.stream.write(row[:-2] + "\n" if row.endswith("\r\n") else row)


# What a spreadsheet reads as the start of a formula (OWASP's list for CSV injection): a cell of text that
# begins with one of them, an answer's text say, would run when the CSV is opened.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def inert(value: Any) -> Any:
    """A CSV cell's text that a spreadsheet would run as a formula, with a `'` in front (OWASP's way): a
    prompt, a server's answer or error message, a meta value. Numbers, and text that is only a number
    (a meta column's "-5"), are left as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


# -- the OpenAI Batch output format ------------------------------------------------------------------


class _Files:
    """Image files to be streamed into a line: each stands in the line as a marker string until written.
    `fetch` reads a file of DIR by its name there (an s3:// output's, from the store); without it, from
    DIR on disk, one chunk at a time."""

    def __init__(self, root: Path, fetch: Callable[[str], bytes | None] | None = None) -> None:
        self.root = root.resolve()
        self.fetch = fetch
        self.token = secrets.token_hex(8)  # no answer text can hold a marker by chance
        self.pattern = re.compile(rf"\\u0000{self.token}:(\d+)\\u0000")
        self.pending: list[tuple[Path | bytes, str]] = []
        self.fetched: dict[Path, bytes] = {}  # a line's files read from the store, until it is written

    def marker(self, path: Path, prefix: str = "") -> str:
        """The string to put where the file's base64 (after `prefix`) goes."""
        self.pending.append((self.fetched.get(path, path), prefix))
        return f"\x00{self.token}:{len(self.pending) - 1}\x00"

    def existing(self, record: ResultRecord) -> list[Path]:
        """The record's saved files that are still in DIR (a missing one is left out, and said)."""
        found, root = [], self.root
        for name in record.files:
            path = (root / name).resolve()
            if path.is_relative_to(root) and self._has(path):
                found.append(path)
            else:
                where = "the store" if self.fetch is not None else root
                log.warning("%s: %s is not in %s; its line has one image fewer", record.id, name, where)
        return found

    def _has(self, path: Path) -> bool:
        if self.fetch is None:
            return path.is_file()
        data = self.fetch(path.relative_to(self.root).as_posix())
        if data is not None:
            self.fetched[path] = data
        return data is not None

    def write(self, text: str, stream: IO[str]) -> None:
        """`text` (one JSON line) with each marker replaced by its file's base64, one piece at a time."""
        pieces = self.pattern.split(text)
        stream.write(pieces[0])
        for index in range(1, len(pieces), 2):
            source, prefix = self.pending[int(pieces[index])]
            stream.write(prefix)
            for chunk in _base64_chunks(source):
                stream.write(chunk)
            stream.write(pieces[index + 1])
        self.pending.clear()
        self.fetched.clear()


def _base64_chunks(source: Path | bytes) -> Iterator[str]:
    if isinstance(source, bytes):
        for start in range(0, len(source), CHUNK):
            yield base64.b64encode(source[start : start + CHUNK]).decode("ascii")
        return
    with source.open("rb") as file:
        while chunk := file.read(CHUNK):
            yield base64.b64encode(chunk).decode("ascii")


def _openai(
    root: Path,
    stream: IO[str],
    scope: Scope | None,
    selection: Selection,
    fetch: Callable[[str], bytes | None] | None = None,
) -> int:
    files = _Files(root, fetch)
    chat_shaped = {
        name for name, kind in builtin_registry().items() if kind.openai_answer_object == "chat.completion"
    }
    rows = 0
    for entry in selected(root, scope, selection):
        if entry.record is None:  # pending: the OpenAI Batch output format has no line for it
            continue
        line = openai_line(entry.record, files, chat_shaped)
        files.write(json.dumps(line, ensure_ascii=False) + "\n", stream)
        rows += 1
    return rows


def openai_line(record: ResultRecord, files: _Files, chat_shaped: set[str]) -> dict[str, Any]:
    """One task's line of an OpenAI Batch output file; the kinds in `chat_shaped` answer with a
    `chat.completion`, the others with an images body."""
    task_id = record.id
    request_id = record.request_id if isinstance(record.request_id, str) else ""
    line: dict[str, Any] = {
        "id": "batch_req_" + hashlib.sha256(task_id.encode()).hexdigest()[:32],
        "custom_id": str(record.custom_id or task_id),
    }
    if record.failed:
        error = record.error or ErrorInfo(None, None, None)
        code = str(error.type or "unknown_error")
        message = str(error.message or "")
        status = error.status
        line["response"] = (
            {
                "status_code": status,
                "request_id": request_id,
                "body": {"error": {"message": message, "type": code, "param": None, "code": code}},
            }
            if isinstance(status, int) and not isinstance(status, bool) and status >= 400
            else None
        )
        line["error"] = {"code": code, "message": message}
        return line
    created = _timestamp(record.finished_at)
    images = files.existing(record)
    if isinstance(record.kind, str) and record.kind in chat_shaped:  # a list there: no kind, not a crash
        body = _chat_completion(record, created, request_id or "chatcmpl-" + line["id"][10:], images, files)
    else:
        body = {
            "created": created,
            "data": [{"b64_json": files.marker(path)} for path in images],
            "usage": _image_usage(record.usage),
        }
    line["response"] = {"status_code": 200, "request_id": request_id, "body": body}
    line["error"] = None
    return line


def _chat_completion(
    record: ResultRecord, created: int, answer_id: str, images: list[Path], files: _Files
) -> dict[str, Any]:
    """A `chat.completion` object: a choice per text (`texts` when n > 1), with its finish reason and tool
    calls (or deprecated function call); the reasoning and any images saved from the answer go with the
    first choice."""
    texts, finish, calls = record.texts, record.finish_reasons, record.tool_calls_per_choice
    # a call made the deprecated way (`function_call`, the answer to `functions`), per choice
    legacy = record.extra.get("function_call_per_choice")
    legacy = legacy if isinstance(legacy, list) else [record.extra.get("function_call")]
    choices = []
    for index, text in enumerate(texts):
        message: dict[str, Any] = {"role": "assistant", "content": text if isinstance(text, str) else None}
        if index < len(calls) and calls[index]:
            message["tool_calls"] = calls[index]
        if index < len(legacy) and isinstance(legacy[index], Mapping):
            message["function_call"] = legacy[index]
        if index == 0 and record.reasoning is not None:
            message["reasoning_content"] = record.reasoning
        if index == 0 and images:
            message["images"] = [
                {"type": "image_url", "image_url": {"url": files.marker(path, _data_url_prefix(path))}}
                for path in images
            ]
        choices.append(
            {
                "index": index,
                "message": message,
                "finish_reason": finish[index] if index < len(finish) else None,
                "logprobs": None,
            }
        )
    return {
        "id": answer_id,
        "object": "chat.completion",
        "created": created,
        "model": record.model,
        "choices": choices,
        "usage": _chat_usage(record.usage),
    }


def _chat_usage(usage: Any) -> dict[str, Any]:
    usage = usage if isinstance(usage, Mapping) else {}
    found: dict[str, Any] = {
        "prompt_tokens": int(usage.get("input_tokens") or 0),
        "completion_tokens": int(usage.get("output_tokens") or 0),
        "total_tokens": int(usage.get("total_tokens") or 0),
    }
    if isinstance(usage.get("cached_tokens"), int):
        found["prompt_tokens_details"] = {"cached_tokens": usage["cached_tokens"]}
    if isinstance(usage.get("reasoning_tokens"), int):
        found["completion_tokens_details"] = {"reasoning_tokens": usage["reasoning_tokens"]}
    return found


def _image_usage(usage: Any) -> dict[str, Any]:
    usage = usage if isinstance(usage, Mapping) else {}
    return {key: int(usage.get(key) or 0) for key in ("input_tokens", "output_tokens", "total_tokens")}


def _data_url_prefix(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,"


def _timestamp(value: Any) -> int:
    """Unix seconds of an ISO time (the result line's `finished_at`), or 0."""
    try:
        return int(datetime.fromisoformat(str(value)).timestamp())
    except ValueError:
        return 0
