"""Task ids: the rule they follow (they name files), and a safe id for a foreign one."""

from __future__ import annotations

import hashlib
import re
from typing import Any

ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,100}")

# How ids the manifest does not give are made. A directory keeps the scheme it was started with, so that a
# resumed run finds its finished tasks under the same ids (batch.output.format).
ASCII_IDS = 1  # expansions' slugs keep ASCII letters only; a task without expansion: <kind>-<hash>
READABLE_IDS = 2  # every script transliterated (anyascii); a task without expansion: <prompt slug>-<hash>
# as READABLE_IDS, but a CSV or JSONL row without an `id` column is named by the first column its task
# uses (in the order the task names them), not by its first column: a row-number column, which every row
# inserted above renumbers, renamed (and so bought again) every row below it, and a JSONL file rewritten
# with its keys in another order every row
USED_COLUMN_IDS = 3
ID_SCHEMES = (ASCII_IDS, READABLE_IDS, USED_COLUMN_IDS)
LATEST_IDS = USED_COLUMN_IDS  # a new directory's
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def valid_id(task_id: Any) -> bool:
    """1-100 characters of A-Z a-z 0-9 . _ -, and not only dots: safe as a file name everywhere."""
    return isinstance(task_id, str) and bool(ID_PATTERN.fullmatch(task_id)) and task_id.strip(".") != ""


def safe_id(foreign: str) -> str:
    """`foreign` itself when it is a valid id; otherwise a readable, stable, file-safe id made from it
    (`row 7/a` -> `row_7_a-3f9c2b1e`), unique because the hash covers the original."""
    if valid_id(foreign):
        return foreign
    readable = _UNSAFE.sub("_", foreign).strip("._")[:80]
    digest = hashlib.sha256(foreign.encode()).hexdigest()[:8]
    return f"{readable}-{digest}" if readable else f"id-{digest}"
