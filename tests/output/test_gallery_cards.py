"""The page's cards made as a run writes its lines (gallery.Cards): the run's last page, built with them,
is the page built from the lines alone, byte for byte but its build time, and reads none of the lines the
cards were made of; lines that differ from those, or that may name a picture, are read as without cards."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batch.output import gallery, store
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
    return re.sub(r'"built": "[^"]*"', "", page.read_text(encoding="utf-8"))


def written(out: Path, before: list[bytes], during: list[bytes]) -> gallery.Cards:
    """results.jsonl of `before` then `during`, and the cards a run makes of `during` as it writes them."""
    out.mkdir(exist_ok=True)
    results = out / "results.jsonl"
    results.write_bytes(b"".join(before))
    cards = gallery.Cards(out, results.stat().st_size)
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


def page_with_and_without(out: Path, scope: Scope, cards: gallery.Cards, *, taken: bool) -> tuple[str, str]:
    """The page built with the cards (`taken`: whether they hold), and the page built from the lines."""
    assert (cards.taken(out / "results.jsonl") is not None) is taken
    with_cards = without_time(gallery.build(out, scope, cards=cards))
    return with_cards, without_time(gallery.build(out, scope))


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
) -> None:
    """A run, then a run of a longer manifest into the same DIR (its cards start past the first run's
    lines): each run's page, built from its cards, is what `maas-batch gallery DIR` builds from the lines."""
    taken: list[bool] = []
    real = gallery.Cards.taken

    def taking(self: gallery.Cards, path: Path) -> gallery.Cards | None:
        found = real(self, path)
        taken.append(found is not None and len(found._offsets) > 0)
        return found

    monkeypatch.setattr(gallery.Cards, "taken", taking)
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
    assert not [path.name for path in out.iterdir() if path.name.startswith("tmp")]  # the cards' file is gone


def test_a_page_built_apart_makes_no_cards(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From PAGE_APART tasks the last page is built in a process of its own, which has no cards to take:
    the run makes none."""
    made: list[gallery.Cards] = []
    real = gallery.Cards.__init__

    def making(self: gallery.Cards, root: Path, start: int) -> None:
        made.append(self)
        real(self, root, start)

    monkeypatch.setattr(gallery.Cards, "__init__", making)
    monkeypatch.setattr(job, "PAGE_APART", 1)
    manifest = write("tasks:\n  - {kind: chat, id: a, model: gemini-2.5-flash, prompt: hi}\n")
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    assert made == []
    monkeypatch.setattr(job, "PAGE_APART", 20_000)
    assert cli("run", manifest, "--out", tmp_path / "other", env=env_for(sim)).code == 0
    assert len(made) == 1
