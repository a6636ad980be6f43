"""DIR/.format: what a directory's contents follow, so that later versions of the tool read it as it was
written. Today one thing: how the ids that manifests do not give were made (batch.manifest.ids).

A resumed run must find its finished tasks under the ids they were saved with. A directory started before
readable ids existed (results, no .format) keeps the ASCII ids; one that records a scheme keeps it; a new
one gets the latest. The file is
written by the first run that holds DIR's lock and never changed after.
"""

from __future__ import annotations

import json
from pathlib import Path

from batch.manifest.ids import ASCII_IDS, ID_SCHEMES, LATEST_IDS
from batch.output.files import write_atomic
from batch.output.store import RESULTS, RUNS

FORMAT = ".format"


def id_scheme(root: Path) -> int:
    """The id scheme of DIR: the one it records; for a directory of an older version (results or run
    logs, no record), ASCII ids; for a new or empty one, the latest."""
    try:
        recorded = json.loads((root / FORMAT).read_text(encoding="utf-8")).get("ids")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded in ID_SCHEMES:
        return int(recorded)
    if _has_results(root) or any((root / RUNS).glob("*.jsonl")):
        return ASCII_IDS
    return LATEST_IDS


def remember(root: Path, scheme: int) -> None:
    """Record DIR's id scheme, once (call while holding DIR's lock)."""
    if not (root / FORMAT).exists():
        write_atomic(root / FORMAT, json.dumps({"ids": scheme}).encode() + b"\n")


def _has_results(root: Path) -> bool:
    try:
        return (root / RESULTS).stat().st_size > 0
    except OSError:
        return False
