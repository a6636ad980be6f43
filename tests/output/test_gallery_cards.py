"""The page's cards made as a run writes its lines (output.cards.Cards): the run's last page, built with them,
is the page built from the lines alone, byte for byte but its build time, and reads none of the lines the
cards were made of; lines that differ from those, or that may name a picture, are read as without cards."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batch.output import cards as cards_module
from batch.output import gallery, store
from batch.output.cards import Cards
from batch.output.scope import Scope
from batch.running import job
from batch.running.idset import digest
from batch.running.order import Order
from batch.running.records import ResultRecord
from batch.simulator import RunningSimulator
from tests.conftest import Outcome, env_for, make_image


def chat(task: str, status: str = "succeeded", **fields: Any) -> bytes:
    """A result line as the tool writes it."""
    record = ResultRecord(task, "chat", status, "gemini-2.5-flash", prompt=f"about {task}", text="ok")
    return (json.dumps({**record.to_line(), **fields}) + "\n").encode()


def without_time(page: Path) -> str:
    """The page less the moment it was built."""
    text, found = re.subn(r'"built": ?"[^"]*"', '"built": "-"', page.read_text(encoding="utf-8"))
    assert found == 1, "the page's build time"
    return text


def written(out: Path, before: list[bytes], during: list[bytes]) -> Cards:
    """results.jsonl of `before` then `during`, and the cards a run makes of `during` as it writes them."""
    out.mkdir(exist_ok=True)
    results = out / "results.jsonl"
    results.write_bytes(b"".join(before))
    cards = Cards(out, results.stat().st_size)
    for raw in during:
        offset = results.stat().st_size
        with results.open("ab") as handle:
            handle.write(raw)
        cards.add(offset, raw)
    return cards


def items_of(page: str) -> dict[str, dict[str, Any]]:
    """The page's cards, by task."""
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert found, "the page's data block"
    return {item["id"]: item for item in json.loads(found.group(1))["items"]}


def page_with_and_without(out: Path, scope: Scope, cards: Cards, *, taken: bool) -> tuple[str, str]:
    """The page built with the cards, and the page built from the lines; `taken`: whether the first build
    took the cards (they held)."""
    real = cards.taken
    took: list[bool] = []

    def taking(path: Path) -> Cards | None:
        found = real(path)
        took.append(found is not None)
        return found

    cards.taken = taking  # type: ignore[method-assign]
    with_cards = without_time(gallery.build(out, scope, cards=cards))
    assert took == [taken]
    return with_cards, without_time(gallery.build(out, scope))


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[Cards]:
    """Every Cards made from now on, in this list."""
    found: list[Cards] = []
    real = Cards.__init__

    def making(self: Cards, *args: Any) -> None:
        found.append(self)
        real(self, *args)

    monkeypatch.setattr(Cards, "__init__", making)
    return found


ORDER = ["a", "b", "c", "d", "e", "f"]  # "f" has no line: pending
BEFORE = [chat("a"), chat("b", "failed", error={"type": "x", "status": 500, "message": "m"}), chat("c")]
DURING = [
    chat("b"),  # the failure retried: its line now
    chat("d", text="first"),
    b'{"id": "e", "files": [], "status": "succ\n',  # damaged: not a task's last line
    chat("d", text="second"),  # a task's later line wins
    b'{"no id": 1, "files": []}\n',  # not a task's line
    chat("e", kind={"toString": 1}, cost="cheap", usage={"total_tokens": "many", "input_tokens": 7}),
    chat("gone"),  # orphaned: no task of the manifest
]


@pytest.mark.parametrize("orphaned", [False, True])
@pytest.mark.parametrize("before", [[], BEFORE], ids=["fresh", "resumed"])
def test_the_page_built_with_the_cards_is_the_page_built_from_the_lines(
    before: list[bytes], orphaned: bool, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cards = written(out, before, DURING)
    scope = Scope(order=Order([digest(task) for task in ORDER]), include_orphaned=orphaned)
    with_cards, from_lines = page_with_and_without(out, scope, cards, taken=True)
    assert with_cards == from_lines
    texts = {task: (item["status"], item["text"]) for task, item in items_of(with_cards).items()}
    assert texts["d"] == ("succeeded", "second") and texts["b"] == ("succeeded", "ok")
    assert ("gone" in texts) is orphaned


def test_the_page_built_with_the_cards_reads_none_of_their_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    cards = written(out, [], [chat(task) for task in ORDER])
    parsed: list[bytes] = []
    real = store.parse_record

    def counting(raw: bytes) -> Any:
        parsed.append(raw)
        return real(raw)

    monkeypatch.setattr(store, "parse_record", counting)
    scope = Scope(order=Order([digest(task) for task in ORDER]))
    items = items_of(gallery.build(out, scope, cards=cards).read_text(encoding="utf-8"))
    assert list(items) == ORDER
    assert parsed == []
    gallery.build(out, scope)
    assert len(parsed) == 2 * len(ORDER)  # without cards: the index's pass, then the cards'


@pytest.mark.parametrize("change", ["a byte", "a line written past them", "the file replaced"])
def test_cards_of_lines_that_are_no_longer_there_are_not_taken(change: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cards = written(out, [chat("a")], [chat("b"), chat("c")])
    results = out / "results.jsonl"
    data = results.read_bytes()
    if change == "a byte":
        results.write_bytes(data.replace(b'"text": "ok"', b'"text": "no"'))  # the same length
    elif change == "a line written past them":
        results.write_bytes(data + chat("d"))
    else:
        results.write_bytes(chat("a") + chat("c", text="ko") + chat("b"))  # as long, in another order
    scope = Scope(order=Order([digest(task) for task in "abcd"]))
    with_cards, from_lines = page_with_and_without(out, scope, cards, taken=False)
    assert with_cards == from_lines  # with the cards taken, the page would show what they were made of


def test_a_line_that_may_name_a_picture_ends_the_cards(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_image(out / "images" / "b.png", (32, 24))
    cards = written(out, [], [chat("a"), chat("b", files=["images/b.png"]), chat("c")])
    scope = Scope(order=Order([digest(task) for task in "abc"]))
    items = items_of(gallery.build(out, scope, cards=cards).read_text(encoding="utf-8"))
    assert items["b"]["thumbs"] and (out / items["b"]["thumbs"][0]).is_file()
    assert (items["a"]["thumbs"], items["c"]["thumbs"]) == ([], [])


def test_a_line_the_cards_cannot_hold_ends_them_and_the_page_still_counts_it(tmp_path: Path) -> None:
    """A count past 64 bits (a line edited by hand, or an answer's own) does not fit the cards' arrays:
    no card is made from there on, the line is read at the end, and `add` raises nothing."""
    out = tmp_path / "out"
    cards = written(out, [], [chat("a"), chat("b", usage={"total_tokens": 2**70}), chat("c")])
    scope = Scope(order=Order([digest(task) for task in "abc"]))
    with_cards, from_lines = page_with_and_without(out, scope, cards, taken=False)
    assert with_cards == from_lines
    assert items_of(from_lines)["b"]["tokens"] == 2**70


def test_a_runs_last_page_is_built_with_its_cards_and_is_the_gallery_commands_page(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    made: list[Cards],
) -> None:
    """A run, then a run of a longer manifest into the same DIR (its cards start past the first run's
    lines): each run's page, built from its cards, is what `maas-batch gallery DIR` builds from the lines."""
    taken: list[bool] = []
    real = Cards.taken

    def taking(self: Cards, path: Path) -> Cards | None:
        found = real(self, path)
        taken.append(found is not None and len(found._offsets) > 0)
        return found

    monkeypatch.setattr(Cards, "taken", taking)
    out = tmp_path / "out"
    prompts = [
        f"  - {{kind: chat, id: t{i}, model: gemini-2.5-flash, prompt: question {i}}}" for i in range(12)
    ]
    for count in (7, 12):
        manifest = write("tasks:\n" + "\n".join(prompts[:count]) + "\n", f"m{count}.yaml")
        assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
        assert taken.pop() is True
        after_run = without_time(out / "index.html")
        assert cli("gallery", out).code == 0
        assert without_time(out / "index.html") == after_run
        assert [item["status"] for item in items_of(after_run).values()] == ["succeeded"] * count
    assert made and all(cards._spill is None for cards in made)  # each run's cards closed, their file gone
    assert all(cards._later is not None for cards in made)  # made after the answers at hand went on


def test_a_page_built_apart_makes_no_cards(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    made: list[Cards],
) -> None:
    """From PAGE_APART tasks the last page is built in a process of its own, which has no cards to take:
    the run makes none."""
    monkeypatch.setattr(job, "PAGE_APART", 1)
    manifest = write("tasks:\n  - {kind: chat, id: a, model: gemini-2.5-flash, prompt: hi}\n")
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    assert made == []
    monkeypatch.setattr(job, "PAGE_APART", 20_000)
    assert cli("run", manifest, "--out", tmp_path / "other", env=env_for(sim)).code == 0
    assert len(made) == 1


FULL = Path("/dev/full")  # every write fails with ENOSPC


@pytest.mark.skipif(not FULL.exists(), reason="no /dev/full here")
@pytest.mark.parametrize("count", [3, 60], ids=["fails at the end", "fails as the run writes"])
def test_a_full_disk_under_the_cards_leaves_the_run_and_the_page_as_without_them(
    count: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cards' file is buffered: a full disk failed its flush in `add`, and again in the close after it,
    out of the results journal's write (the run ended in a traceback), or in `taken` (the page was lost).
    Now the line is written, the cards stop, and the page reads the lines."""
    monkeypatch.setattr(cards_module.tempfile, "TemporaryFile", lambda **_: FULL.open("r+b"))
    out = tmp_path / "out"
    out.mkdir()
    journal = store.Journal(out / "results.jsonl", fsync=False)
    journal.open()
    cards = Cards(out, journal.size)
    journal.tap = cards.add
    tasks = [f"t{i}" for i in range(count)]
    for task in tasks:  # 60 cards of some 400 bytes pass the file's 8 KB buffer: its flush fails
        journal.write_bytes(chat(task, prompt="p" * 200))
    journal.close()
    assert journal.tap is not None  # the cards stopped themselves: nothing raised
    scope = Scope(order=Order([digest(task) for task in tasks]))
    with_cards, from_lines = page_with_and_without(out, scope, cards, taken=False)
    assert with_cards == from_lines and list(items_of(with_cards)) == tasks


def test_a_view_of_the_journal_that_raises_is_dropped_and_the_line_is_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = store.Journal(tmp_path / "results.jsonl", fsync=False)
    journal.open()
    told: list[int] = []

    def tap(offset: int, raw: bytes, written: Any) -> None:
        told.append(offset)
        raise RuntimeError("a view's bug")

    journal.tap = tap
    journal.write_bytes(chat("a"))
    journal.write_bytes(chat("b"))
    journal.close()
    assert told == [0] and journal.tap is None
    assert [json.loads(line)["id"] for line in (tmp_path / "results.jsonl").read_text().splitlines()] == [
        "a",
        "b",
    ]
    assert "a view of its lines failed (a view's bug)" in caplog.text


def test_cards_cut_short_under_the_page_are_read_from_the_lines(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cards = written(out, [], [chat(task, text=task * 50) for task in "abcd"])
    scope = Scope(order=Order([digest(task) for task in "abcd"]))
    real = cards.taken

    def cut(path: Path) -> Cards | None:
        found = real(path)
        assert found is not None and found._spill is not None
        os.ftruncate(found._spill.fileno(), int(found._ends[1]) + 10)  # the third card cut short
        return found

    cards.taken = cut  # type: ignore[method-assign]
    with_cards = without_time(gallery.build(out, scope, cards=cards))
    assert with_cards == without_time(gallery.build(out, scope))
    assert items_of(with_cards)["d"]["text"] == "d" * 50


@pytest.mark.skipif(not FULL.exists(), reason="no /dev/full here")
def test_a_run_whose_cards_meet_a_full_disk_ends_as_without_them(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It ended with exit 1 and an ExceptionGroup's traceback after a few lines, its requests in flight
    cancelled and no page written."""
    monkeypatch.setattr(cards_module.tempfile, "TemporaryFile", lambda **_: FULL.open("r+b"))
    prompt = "p" * 300  # 40 cards pass the file's 8 KB buffer
    manifest = write(
        "tasks:\n"
        + "".join(
            f"  - {{kind: chat, id: t{i}, model: gemini-2.5-flash, prompt: {prompt}}}\n" for i in range(40)
        )
    )
    out = tmp_path / "out"
    done = cli("run", manifest, "--out", out, env=env_for(sim))
    assert done.code == 0, done.err
    assert "40 succeeded" in done.out and "Traceback" not in done.err
    after_run = without_time(out / "index.html")
    assert cli("gallery", out).code == 0
    assert without_time(out / "index.html") == after_run and len(items_of(after_run)) == 40


def test_cards_made_later_wait_for_their_turn_and_are_taken_only_once_drained(tmp_path: Path) -> None:
    """In a run, a line's card is made after the answers that came with it have gone on (the loop's
    call_soon), not in the middle of them: a wave of 64 answers made 64 cards before its last answer's
    worker sent its next request."""
    out = tmp_path / "out"
    out.mkdir()
    results = out / "results.jsonl"
    results.write_bytes(b"")
    asked: list[Callable[[], None]] = []
    cards = Cards(out, 0, asked.append)
    for task in "abc":
        offset = results.stat().st_size
        raw = chat(task)
        with results.open("ab") as handle:
            handle.write(raw)
        cards.add(offset, raw)
    assert len(asked) == 1 and len(cards._offsets) == 0  # one call asked for; no card made yet
    asked.pop()()  # the loop comes to it
    assert len(cards._offsets) == 3
    cards.add(results.stat().st_size, chat("d"))  # written, then not drained: the cards are not taken
    with results.open("ab") as handle:
        handle.write(chat("d"))
    scope = Scope(order=Order([digest(task) for task in "abcd"]))
    with_cards, from_lines = page_with_and_without(out, scope, cards, taken=False)
    assert with_cards == from_lines and list(items_of(with_cards)) == list("abcd")


def test_the_cards_file_of_a_killed_run_is_swept_where_it_has_a_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the system cannot make an unnamed file (Windows, some network file systems), the cards' file
    has a name in DIR until it is closed: a run killed meanwhile leaves it, and the next run's sweep of
    temporary files removes it."""
    import tempfile

    named: list[Path] = []

    def with_a_name(**where: Any) -> Any:
        handle = tempfile.NamedTemporaryFile(delete=False, **where)  # noqa: SIM115
        named.append(Path(handle.name))
        return handle

    monkeypatch.setattr(cards_module.tempfile, "TemporaryFile", with_a_name)
    out = tmp_path / "out"
    out.mkdir()
    cards = Cards(out, 0)  # the run is killed: never closed
    assert named and named[0].parent == out and named[0].exists()
    folder = store.OutputDir(out, fsync=False)
    folder.open()
    folder.close()
    assert not named[0].exists()
    cards.close()
