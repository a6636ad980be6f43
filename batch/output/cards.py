"""A task's card on the page (DIR/index.html, output.gallery): what the page shows of one task, bounded
whatever its result line holds, as the page's JSON; and the cards a run makes as it writes its result
lines (Cards), which its last page then takes rather than read every line again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any

from batch import codec
from batch.manifest.regular import open_regular
from batch.output.files import TMP_SUFFIX
from batch.output.scope import Entry, Task, may_name_pictures
from batch.output.store import THUMBS, parse_record, reads_back, thumbnail_name
from batch.running.idset import LineOffsets, digest
from batch.running.records import (
    ErrorInfo,
    ResultRecord,
    as_count,
    as_mapping,
    as_strings,
    is_mapping,
    number,
)

log = logging.getLogger("batch.output.cards")

TEXT_SHOWN = 2000  # characters of a prompt or an error
ANSWER_SHOWN = 20_000  # characters of an answer: the larger view shows it whole, up to this
SPILL_MOST = 64 << 20  # bytes of the cards a run makes as it writes its lines (Cards): past it, none
PARAMS_SHOWN = 50  # keys of a task's params on its card; a CSV of a million columns must not fill memory
VALUE_SHOWN = 500  # characters of one param's value
INPUTS_SHOWN = 16  # input pictures of one card (the API takes at most 16)


def input_thumb_name(path: str) -> str:
    """Where the thumbnail of an input file (outside DIR) goes inside DIR, so that the page needs nothing
    else."""
    return f"{THUMBS}/inputs/{hashlib.sha1(path.encode()).hexdigest()[:16]}.webp"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def as_text(value: Any) -> str:
    """A value as the page's text: a string as it is, anything else as Python writes it."""
    return value if isinstance(value, str) else _cut(str(value), TEXT_SHOWN)


def _in_dir(name: str) -> bool:
    """Whether a name a result line gives a file is one inside DIR: relative, without `..` or a scheme."""
    if not isinstance(name, str) or not name or "://" in name or ":" in name.split("/")[0]:
        return False
    plain = os.path.normpath(name)
    return not os.path.isabs(plain) and plain != ".." and not plain.startswith("../")


_AS_TEXT = (str, dict, list)  # a param's values shown as text (a tuple: `str | dict | list` is made anew)


def _shown(params: Mapping[str, Any]) -> dict[str, Any]:
    """A task's params as its card shows them."""
    shown = {
        _cut(str(key), 100): _cut(as_text(value), VALUE_SHOWN) if isinstance(value, _AS_TEXT) else value
        for key, value in islice(params.items(), PARAMS_SHOWN)
    }
    if len(params) > PARAMS_SHOWN:
        shown["..."] = f"{len(params) - PARAMS_SHOWN:,} more"
    return shown


def _card(record: ResultRecord) -> dict[str, Any]:
    """What the page shows of one task, bounded whatever the record holds; its `files` and `inputs` name
    the pictures whose thumbnails `_finish` adds. (`line_card` makes the same from a line's own fields.)"""
    usage = record.usage or {}
    error = record.error
    return {
        # text where the page shows text: an object there (a line edited by hand: {"toString": 1}) broke
        # the page's script, and no card was drawn
        "id": record.id,
        "kind": as_text(record.kind),
        "status": as_text(record.status),
        "model": None if record.model is None else as_text(record.model),
        "prompt": _cut(str(record.prompt or ""), TEXT_SHOWN),
        "params": _shown(record.params),
        # the page links a file by its name in DIR: one a line names elsewhere (absolute, `..`, a URL) is no
        # file of the run's, and no link of the page, which works from disk with no network
        "files": [name for name in record.files[:INPUTS_SHOWN] if _in_dir(name)],
        "inputs": list(record.inputs[:INPUTS_SHOWN]),
        "text": None if record.text is None else _cut(record.text, ANSWER_SHOWN),
        "tokens": usage.get("total_tokens"),
        "cost": record.cost,
        "attempts": record.attempts,
        "seconds": record.seconds,
        "error": _cut(f"{error.type}: {error.message}", TEXT_SHOWN) if error else None,
    }


def _pending_card(task: Task) -> dict[str, Any]:
    """The card of a task not run yet: what it will ask."""
    return _card(
        ResultRecord(
            task.id,
            task.kind,
            "pending",
            task.model,
            prompt=task.prompt,
            params=task.params,
            inputs=task.inputs,
        )
    )


def entry_card(entry: Entry) -> dict[str, Any]:
    record = entry.record
    if record is None:
        assert entry.task is not None
        return _pending_card(entry.task)
    card = _card(record)
    card["finished_at"] = record.finished_at
    if entry.orphaned:
        card["orphaned"] = True
    return card


def _finish(card: dict[str, Any], made: set[str]) -> dict[str, Any]:
    """A card with its thumbnails: `made` holds the ones that exist."""
    thumbs = [
        name if name in made else None
        for name in (f"{THUMBS}/{thumbnail_name(Path(relative).name)}" for relative in card["files"])
    ]
    inputs = [name for name in (input_thumb_name(p) for p in card["inputs"]) if name in made]
    return {**card, "thumbs": thumbs, "inputs": inputs}


def card_json(entry: Entry, made: set[str]) -> bytes:
    """An entry's card as the page holds it."""
    return page_json(_finish(entry_card(entry), made))


def line_card(line: Mapping[str, Any]) -> dict[str, Any]:
    """`_finish(entry_card(Entry(ResultRecord.from_line(line), None)), set())` of a line read from JSON
    (its keys strings), read from the line's own fields by the record's own readers, without the record's
    other fields (a card made as its line is written, Cards: the 55,000 instructions of a chat line's
    record not spent). With no thumbnail made: tests/output/test_gallery_cards.py checks that the two are
    the same."""
    usage = line.get("usage")
    text = line.get("text")
    model = line.get("model")
    error = line.get("error")
    if error is not None:
        error = ErrorInfo.from_line(error)
    files = [name for name in as_strings(line.get("files"))[:INPUTS_SHOWN] if _in_dir(name)]
    # as_counts(usage).get("total_tokens") for a mapping of string keys (JSON's): the counts it keeps
    tokens = usage.get("total_tokens") if is_mapping(usage) else None
    return {
        "id": str(line.get("id")),
        "kind": as_text(line.get("kind")),
        "status": as_text(line.get("status")),
        "model": None if model is None else as_text(model),
        "prompt": _cut(str(line.get("prompt") or ""), TEXT_SHOWN),
        "params": _shown(as_mapping(line.get("params"))),
        "files": files,
        "inputs": [],  # the thumbnails of its inputs that were made: none
        "text": _cut(text, ANSWER_SHOWN) if isinstance(text, str) else None,
        "tokens": None if number(tokens) is None else tokens,
        "cost": number(line.get("cost")),
        "attempts": as_count(line.get("attempts")),
        "seconds": number(line.get("seconds")),
        "error": _cut(f"{error.type}: {error.message}", TEXT_SHOWN) if error else None,
        "finished_at": line.get("finished_at"),
        "thumbs": [None] * len(files),  # none made
    }


def tokens_of(record: ResultRecord) -> int:
    """A task's tokens, as the page's header sums them."""
    return int((record.usage or {}).get("total_tokens") or 0)


def cost_of(record: ResultRecord) -> float:
    """A task's cost, as the page's header sums it."""
    return record.cost if isinstance(record.cost, int | float) else 0.0


def page_json(value: Any) -> bytes:
    """JSON for inside the page's script: "<" only occurs inside JSON strings, where \\u003c means the
    same, so no prompt can end the script."""
    return codec.dumps(value).replace(b"<", b"\\u003c")


@dataclass(frozen=True, slots=True)
class Card:
    """A task's card made as the run wrote its line (Cards), with what the page's header counts of it."""

    json: bytes
    status: str  # the key of `statuses`
    count: str  # the key of `counts`: "<kind>/<status>"
    tokens: int
    cost: float


class Cards:
    """The page's cards of the result lines a run writes, each made soon after its line is written (the
    results journal's `tap`): the run's last page (`gallery.build(..., cards=)`) then puts them in order,
    rather than read and parse every line again once the last answer is in (0.15 s at the end of a run of
    5,000 chat tasks, BENCHMARKS.md). A card is made from the line's bytes by the code the page makes it
    with, and `gallery.build` takes the cards only where results.jsonl, from `start`, holds the very bytes
    they were made of (their crc32). After a line that may name a picture (a card's thumbnails are known
    only at the end), a line written without them, SPILL_MOST bytes of cards, or anything unexpected, no
    card is made or taken: the page reads the lines, as it does without cards. The cards wait in an
    unnamed temporary file in DIR; about 40 bytes a line are held. `add` and `drain` are called by the
    thread that writes the lines; `taken` once they are all written and drained."""

    def __init__(
        self, root: Path, start: int, later: Callable[[Callable[[], None]], object] | None = None
    ) -> None:
        """`later`: schedules a call after the work at hand (the run's loop's call_soon): a line's card is
        then made once the answers that came with it have had their next requests sent, not before (a
        wave of 64 answers made 64 cards before its last answer's worker went on: 0.7% of C/L). None:
        made at once."""
        self.start = start  # results.jsonl's size when the cards began: the lines after it are theirs
        self.end = start
        self._crc = 0
        # unnamed where the system can (Linux); elsewhere named as the next run's sweep removes a killed
        # run's temporary files (.*.tmp)
        spill = tempfile.TemporaryFile(dir=root, prefix=".cards.", suffix=TMP_SUFFIX)  # noqa: SIM115
        self._spill: IO[bytes] | None = spill
        self._offsets = array("Q")  # of each line with a card, in results.jsonl: increasing
        self._keys = array("Q")  # its id's digest
        self._ends = array("Q")  # where its card ends in the spill (it starts where the one before ended)
        self._tokens = array("q")
        self._costs = array("d")
        self._labels = array("H")  # the card's (status, count) keys, in `_known`
        self._known: dict[tuple[str, str], int] = {}
        self._names: list[tuple[str, str]] = []
        self._later = later
        # lines written whose cards are not made yet (and their records, if known)
        self._waiting: list[tuple[int, bytes, Mapping[str, Any] | None]] = []

    def add(self, offset: int, raw: bytes, written: Mapping[str, Any] | None = None) -> None:
        """The line `raw`, written at `offset` of results.jsonl (encoded from `written`, if given): its
        card made at once, or `later`. Never raises: the page is a view. The card is made from `written`
        where it reads back from `raw` as itself (store.reads_back: the line the page would parse), else
        from `raw` parsed; `written` must not change meanwhile (TaskFinished's record: a Mapping)."""
        if self._spill is None:
            return
        if self._later is None:
            self._made((offset, raw, written))
            return
        self._waiting.append((offset, raw, written))
        if len(self._waiting) == 1:
            try:
                self._later(self.drain)
            except Exception as exc:  # no loop to ask (closed): at once
                log.debug("cards made at once: %s", exc)
                self._later = None
                self.drain()

    def drain(self) -> None:
        """Make the cards of the lines still waiting (in the thread that writes the lines)."""
        waiting, self._waiting = self._waiting, []
        self._made(*waiting)

    def _made(self, *lines: tuple[int, bytes, Mapping[str, Any] | None]) -> None:
        for offset, raw, written in lines:
            if self._spill is None:
                return
            try:
                self._add(offset, raw, written)
            except Exception as exc:  # a line the page then reads itself, as without cards
                log.debug("no more cards made as lines are written: %s", exc)
                self.close()

    def _add(self, offset: int, raw: bytes, written: Mapping[str, Any] | None) -> None:
        line = written if written is not None and reads_back(written) else None
        # what may_name_pictures tells of the bytes, told of the line itself where it is known
        pictures = may_name_pictures(raw) if line is None else line.get("files") or line.get("inputs")
        if offset != self.end or pictures:
            self.close()
            return
        self.end = offset + len(raw)
        self._crc = zlib.crc32(raw, self._crc)
        if line is None:
            line = parse_record(raw)
        if line is None or not isinstance(line.get("id"), str):
            return  # not a task's line: the page's index passes it by too
        found = line_card(line)  # no picture: no thumbnail either
        card = page_json(found)
        assert self._spill is not None
        ends = self._ends
        at = ends[-1] if ends else 0
        if at + len(card) > SPILL_MOST:
            self.close()
            return
        status = str(line.get("status"))  # as Entry.status and .kind read the record
        label = (status, f"{line.get('kind')}/{status}")
        known = self._known.get(label)
        if known is None:
            known = self._known[label] = len(self._names)
            self._names.append(label)
        # as tokens_of and cost_of read the record
        cost = found["cost"]
        tokens, cost = int(found["tokens"] or 0), float(cost if isinstance(cost, int | float) else 0.0)
        self._labels.append(known)  # past 65,535 (status, kind) pairs: OverflowError, no cards
        self._tokens.append(tokens)
        self._costs.append(cost)
        self._spill.write(card)
        ends.append(at + len(card))
        self._offsets.append(offset)
        self._keys.append(digest(found["id"]))

    def taken(self, path: Path) -> Cards | None:
        """These cards, for the page of `path` (results.jsonl), if it holds from `start` the very lines
        they were made of; else None. No line is added after; call `drain` first where they wait for
        `later` (the thread that writes the lines makes them)."""
        if self._waiting:  # not drained: the page reads the lines
            self.close()
        spill = self._spill
        self._spill = None  # add() makes no more
        if spill is None:
            return None
        crc = size = 0
        try:
            with open_regular(path) as handle:
                handle.seek(self.start)
                while chunk := handle.read(1 << 20):
                    crc = zlib.crc32(chunk, crc)
                    size += len(chunk)
            spill.flush()  # a full disk: the page reads the lines
        except OSError:
            self._spill = spill
            self.close()
            return None
        self._spill = spill
        if size != self.end - self.start or crc != self._crc:
            self.close()
            return None
        return self

    def index(self, offsets: LineOffsets) -> None:
        """Add the lines the cards were made of to `offsets` (the index of the lines before `start`)."""
        for key, offset in zip(self._keys, self._offsets, strict=True):
            offsets.add(key, offset)

    def card_at(self, offset: int) -> Card | None:
        """The card of the line at `offset` of results.jsonl, None if it has none."""
        spill = self._spill
        found = bisect_left(self._offsets, offset)
        if spill is None or found == len(self._offsets) or self._offsets[found] != offset:
            return None
        start = self._ends[found - 1] if found else 0
        try:
            spill.seek(start)
            card = spill.read(self._ends[found] - start)
        except OSError as exc:  # a disk failing under it: this line and the rest are read from the lines
            log.debug("the page's cards cannot be read: %s", exc)
            self.close()
            return None
        if len(card) != self._ends[found] - start:  # the file cut short under it: the same
            self.close()
            return None
        status, count = self._names[self._labels[found]]
        return Card(card, status, count, self._tokens[found], self._costs[found])

    def close(self) -> None:
        """Let go of the cards (their temporary file is removed as it closes). Never raises: a buffer that
        a full disk cannot take is dropped with the file."""
        spill, self._spill = self._spill, None
        if spill is not None:
            with contextlib.suppress(OSError):
                spill.close()
        for held in (self._offsets, self._keys, self._ends, self._tokens, self._costs, self._labels):
            del held[:]
        self._known.clear()
        self._names.clear()
        self._waiting = []
