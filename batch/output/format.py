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

from batch.errors import OutputError
from batch.manifest.ids import ASCII_IDS, ID_SCHEMES, LATEST_IDS
from batch.output.files import reason, write_atomic
from batch.output.store import RESULTS, RUNS

FORMAT = ".format"


def id_scheme(root: Path) -> int:
    """The id scheme of DIR: the one it records; for a directory of an older version (results or run
    logs, no record), ASCII ids; for a new or empty one, the latest. OutputError for a record this
    version cannot read (a newer version's scheme, a damaged file): resumed under other ids, every
    finished task would be bought again."""
    path = root / FORMAT
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        text = None
    except OSError as exc:
        raise OutputError(f"cannot read {path}: {reason(exc)}") from exc
    if text is None:
        if _has_results(root) or any((root / RUNS).glob("*.jsonl")):
            return ASCII_IDS
        return LATEST_IDS
    try:
        recorded = json.loads(text).get("ids")
    except (ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded in ID_SCHEMES:
        return recorded
    from batch import __version__

    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded > max(ID_SCHEMES):
        raise OutputError(
            f"{path} says the ids of {root} are made by scheme {recorded}, which maas-batch {__version__} "
            "does not know: a newer version started it. Upgrade to resume it (under other ids, every "
            "finished task would be bought again)"
        )
    raise OutputError(
        f"{path} is damaged ({text[:80]!r}): it records how {root}'s ids are made, one of "
        f'{{"ids": {ID_SCHEMES[0]}}} to {{"ids": {ID_SCHEMES[-1]}}}; resumed under other ids, every '
        "finished task would be bought again"
    )


def remember(root: Path, scheme: int) -> None:
    """Record DIR's id scheme, once (call while holding DIR's lock)."""
    if not (root / FORMAT).exists():
        write_atomic(root / FORMAT, json.dumps({"ids": scheme}).encode() + b"\n")


def _has_results(root: Path) -> bool:
    try:
        return (root / RESULTS).stat().st_size > 0
    except OSError:
        return False
