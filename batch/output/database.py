"""`export --format sqlite`: DIR as one SQLite file that `sqlite3` and Datasette open as it is, one table
per kind of line, with typed columns and the raw line beside them (`json`, for what the columns leave out):

- results: one row per task (the CSV's columns, pending tasks included, in manifest order: `position`;
  `billed_cost` what the ledger billed for the task in all), `meta` as JSON;
- usage: one row per billed answer of the ledger;
- attempts: one row per request of the run logs (its `sent` and `done` lines joined), with its run.

The same scope (output.scope) and selection (export.Selection) as the other formats: orphaned tasks' rows
are left out of all three tables unless asked for. Written to a temporary file, renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batch.errors import OutputError
from batch.output.export import EVERYTHING, Selection, bills_of, meta_of, row, selected
from batch.output.scope import Scope, scope_of
from batch.output.store import RUNS, USAGE, read_lines
from batch.running.records import AttemptRecord, UsageRecord, attempt_log_line, number

TABLES = {
    "results": (
        ("position", "INTEGER"),
        ("id", "TEXT"),
        ("custom_id", "TEXT"),
        ("kind", "TEXT"),
        ("status", "TEXT"),
        ("model", "TEXT"),
        ("prompt", "TEXT"),
        ("files", "TEXT"),
        ("text", "TEXT"),
        ("input_tokens", "INTEGER"),
        ("output_tokens", "INTEGER"),
        ("total_tokens", "INTEGER"),
        ("cost", "REAL"),
        ("attempts", "INTEGER"),
        ("error_type", "TEXT"),
        ("error_message", "TEXT"),
        ("seconds", "REAL"),
        ("finished_at", "TEXT"),
        ("orphaned", "INTEGER"),
        ("images_missing", "INTEGER"),
        ("billed_answers", "INTEGER"),
        ("billed_tokens", "INTEGER"),
        ("billed_cost", "REAL"),
        ("meta", "TEXT"),
        ("json", "TEXT"),
    ),
    "usage": (
        ("task_id", "TEXT"),
        ("request_id", "TEXT"),
        ("server_request_id", "TEXT"),
        ("kind", "TEXT"),
        ("model", "TEXT"),
        ("endpoint", "TEXT"),
        ("input_tokens", "INTEGER"),
        ("output_tokens", "INTEGER"),
        ("total_tokens", "INTEGER"),
        ("image_input_tokens", "INTEGER"),
        ("cached_input_tokens", "INTEGER"),
        ("reasoning_tokens", "INTEGER"),
        ("cost", "REAL"),
        ("estimated", "INTEGER"),
        ("at", "TEXT"),
        ("json", "TEXT"),
    ),
    "attempts": (
        ("run", "TEXT"),
        ("request_id", "TEXT"),
        ("task_id", "TEXT"),
        ("sent_at", "REAL"),
        ("outcome", "TEXT"),
        ("status", "INTEGER"),
        ("maybe_billed", "INTEGER"),
        ("error", "TEXT"),
        ("seconds", "REAL"),
        ("json", "TEXT"),
    ),
}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _cell(value: Any) -> Any:
    """A value SQLite can bind, whatever a line edited by hand holds there: a list or a mapping as its JSON
    (it was 'Error binding parameter', exit 74 as if the disk had failed), an integer beyond SQLite's 64
    bits as a float (OverflowError, a traceback), anything else as its text."""
    if value is None or isinstance(value, str | float):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return (
            value if -(2**63) <= value < 2**63 else float(value) if value.bit_length() < 1024 else str(value)
        )
    if isinstance(value, dict | list):
        return _json(value)
    return str(value)


def _number(value: Any, kind: type) -> Any:
    """A value for a typed column: a number of that type, or NULL (for one past any float too: 400 digits,
    in a line edited by hand)."""
    return None if number(value) is None else kind(value)


def _results(root: Path, scope: Scope, selection: Selection) -> Iterator[tuple[Any, ...]]:
    bills = bills_of(root, scope)
    for position, entry in enumerate(selected(root, scope, selection)):
        found = row(entry, bills)
        record = entry.record
        yield (
            position,
            found["id"],
            found["custom_id"],
            found["kind"],
            found["status"],
            found["model"],
            found["prompt"],
            ";".join(found["files"]),
            found["text"],
            _number(found["input_tokens"], int),
            _number(found["output_tokens"], int),
            _number(found["total_tokens"], int),
            _number(found["cost"], float),
            _number(found["attempts"], int) if record is not None else None,
            found["error_type"],
            found["error_message"],
            _number(record.seconds, float) if record is not None else None,
            record.finished_at if record is not None else None,
            int(entry.orphaned),
            _number(found["images_missing"], int),
            found["billed_answers"],
            found["billed_tokens"],
            _number(found["billed_cost"], float),
            _json(dict(meta_of(entry))),
            _json(dict(record.raw)) if record is not None else None,
        )


def _usage(root: Path, scope: Scope, selection: Selection) -> Iterator[tuple[Any, ...]]:
    for line in read_lines(root / USAGE):
        usage = UsageRecord.from_line(line)
        if not scope.counted(usage.task_id) or (selection.kinds and usage.kind not in selection.kinds):
            continue
        counts = usage.counts
        yield (
            usage.task_id,
            usage.request_id,
            usage.server_request_id,
            usage.kind,
            usage.model,
            usage.endpoint,
            counts.input,
            counts.output,
            counts.total,
            counts.image_input,
            counts.cached_input,
            counts.reasoning,
            usage.cost,
            int(usage.estimated),
            usage.at,
            _json(line),
        )


def _attempts(root: Path, scope: Scope) -> Iterator[tuple[Any, ...]]:
    for path in sorted((root / RUNS).glob("*.jsonl")):
        sent: dict[str, tuple[AttemptRecord, dict[str, Any]]] = {}
        for line in read_lines(path):
            record = attempt_log_line(line)
            if not isinstance(record, AttemptRecord):
                continue
            if record.event == "sent":
                sent[record.request_id] = (record, line)
                continue
            first, _ = sent.pop(record.request_id, (None, None))
            task_id = record.task_id or (first.task_id if first is not None else None)
            if task_id is not None and not scope.counted(task_id):
                continue
            yield (
                path.stem,
                record.request_id,
                task_id,
                _number(first.t, float) if first is not None else None,
                record.outcome,
                _number(record.status, int),
                int(record.maybe_billed),
                record.error,
                _number(record.seconds, float),
                _json(line),
            )
        for record, line in sent.values():  # sent, never done: a run going on now, or a killed one
            if record.task_id is None or scope.counted(record.task_id):
                start = (path.stem, record.request_id, record.task_id, _number(record.t, float))
                yield (*start, None, None, None, None, None, _json(line))


def write_database(
    root: Path, path: Path, scope: Scope | None = None, selection: Selection = EVERYTHING
) -> int:
    """Write DIR's results, ledger and attempts into a new SQLite file at `path` (replacing any file
    there, once complete). Returns the number of rows of the results table. OutputError if it cannot."""
    scope = scope or scope_of(root)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        # what is there would be replaced by a file (os.replace), not written to: a device (/dev/stdout),
        # a pipe, the file a link points to
        raise OutputError(
            f"cannot write {path}: it is not a regular file (a link, a device or a pipe), and a database "
            "is written as a file of its own; give the path of a file"
        )
    temporary = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    try:
        with contextlib.closing(sqlite3.connect(temporary)) as db:
            for table, columns in TABLES.items():
                db.execute(f"CREATE TABLE {table} ({', '.join(f'{n} {t}' for n, t in columns)})")
            rows = _insert(db, "results", _results(root, scope, selection))
            # a sharded batch's ledger and attempt logs are in its shards' directories
            folders = [root / part.folder for part in scope.parts] or [root]
            _insert(db, "usage", (row for f in folders for row in _usage(f, scope, selection)))
            _insert(db, "attempts", (row for f in folders for row in _attempts(f, scope)))
            db.execute("CREATE INDEX results_id ON results (id)")
            db.execute("CREATE INDEX usage_task_id ON usage (task_id)")
            db.execute("CREATE INDEX attempts_task_id ON attempts (task_id)")
            db.commit()
        os.replace(temporary, path)
    except sqlite3.Error as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise OutputError(f"cannot write {path}: {exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return rows


def _insert(db: sqlite3.Connection, table: str, values: Iterator[tuple[Any, ...]]) -> int:
    width = len(TABLES[table])
    count = 0

    def padded() -> Iterator[tuple[Any, ...]]:
        nonlocal count
        for value in values:
            count += 1
            yield tuple(map(_cell, value)) + (None,) * (width - len(value))

    db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * width)})", padded())
    return count
