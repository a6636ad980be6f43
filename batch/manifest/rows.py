"""The rows of the files a manifest expands over (CSV and JSONL records, prompt lines): each line read in
bounded pieces, so a line of gigabytes or a file with no line end costs a bounded amount of memory, and
every problem located by file and line."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from batch.errors import Problem
from batch.manifest.fields import type_name
from batch.manifest.regular import open_regular
from batch.manifest.repeats import REPEATED, repeated_key

MAX_RECORD_LINE = 64 * 2**20
MAX_CSV_LINE = 16 * 2**20  # a CSV's fields are 128 KB at most (the csv module's limit): a row is far less


class LineTooLong(Exception):
    """A line of a CSV file over MAX_CSV_LINE bytes (it is never read whole)."""


def text_lines(handle: BinaryIO, name: str) -> Iterator[str]:
    """The lines of a UTF-8 file (a leading BOM dropped), each at most MAX_CSV_LINE bytes in memory."""
    first = True
    for line in bounded_lines(handle, MAX_CSV_LINE):
        if line is None:
            raise LineTooLong(f"the line is longer than {MAX_CSV_LINE // 2**20} MB")
        text = line.decode("utf-8")
        yield text.removeprefix("\ufeff") if first else text
        first = False


def csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | Problem]]:
    with open_regular(path) as handle:
        reader = csv.DictReader(text_lines(handle, str(path)))
        try:
            columns = [name for name in reader.fieldnames or () if name]
            twice = sorted({name for name in columns if columns.count(name) > 1})
            if twice:  # DictReader keeps the last column of a name: the first one's values would be lost
                message = f"the header names the column {twice[0]!r} twice: each column needs its own name"
                yield reader.line_num, Problem(str(path), reader.line_num, message)
                return
            for row in reader:
                if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
                    continue
                if None in row:
                    yield (
                        reader.line_num,
                        Problem(
                            str(path), reader.line_num, "the row has more values than the header has columns"
                        ),
                    )
                    continue
                # DictReader's value for a column the row stops short of (a header's trailing comma names
                # a column of no name, which no task reads: not missed)
                missing = [key for key, value in row.items() if key and value is None]
                if missing:
                    message = (
                        f"the row has fewer values than the header has columns (no {missing[0]!r}"
                        + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                        + "): an empty value is written with its comma"
                    )
                    yield reader.line_num, Problem(str(path), reader.line_num, message)
                    continue
                yield reader.line_num, {key: value for key, value in row.items() if key}
        except (UnicodeDecodeError, csv.Error) as exc:
            yield reader.line_num, Problem(str(path), reader.line_num, f"cannot be read as CSV: {exc}")
        except LineTooLong as exc:
            yield reader.line_num + 1, Problem(str(path), reader.line_num + 1, str(exc))


def bounded_lines(handle: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """The lines of a file, each read with at most `limit` bytes in memory; None for a longer line (the
    rest of which is skipped)."""
    while raw := handle.readline(limit + 1):
        if len(raw) > limit and not raw.endswith(b"\n"):
            del raw  # not held while the rest is skipped, a MiB at a time
            while (rest := handle.readline(2**20)) and not rest.endswith(b"\n"):
                pass
            yield None
        else:
            yield raw


def jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | Problem]]:
    with open_regular(path) as handle:
        for number, raw in enumerate(bounded_lines(handle, MAX_RECORD_LINE), start=1):
            if raw is None:
                yield (
                    number,
                    Problem(str(path), number, f"the line is longer than {MAX_RECORD_LINE // 2**20} MB"),
                )
                continue
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                yield number, Problem(str(path), number, f"not valid JSON: {exc}")
                continue
            except RecursionError:
                yield number, Problem(str(path), number, "not valid JSON: nested too deeply")
                continue
            if not isinstance(record, dict):
                yield (
                    number,
                    Problem(str(path), number, f"a record must be a JSON object, not {type_name(record)}"),
                )
                continue
            if (twice := repeated_key(raw, record)) is not None:
                yield number, Problem(str(path), number, REPEATED, field=twice)
                continue
            yield number, record
