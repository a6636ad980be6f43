"""DIR/index.html: what it holds, that it needs nothing but DIR, and, in a real headless Chromium, that its
thumbnails load and its filters work."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from batch.errors import OutputError
from batch.output import cards, gallery
from batch.output.scope import Scope, index, scope_of
from batch.simulator import RunningSimulator
from tests.browser import Page, chromium, find_chromium
from tests.conftest import Outcome, env_for, make_image, results

CHROMIUM = find_chromium()
# Skipped without a browser, except where REQUIRE_CHROMIUM is set (.ci/run, which installs it).
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("REQUIRE_CHROMIUM"),
    reason="no chromium on this machine (apt-get install chromium; .ci/run does)",
)
HOSTILE = "a lake </script><script>document.title='pwned'</script> TITLE /*DATA*/ <!--"


@pytest.fixture
def run_dir(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> Path:
    """A real run: images (one task with two), an edit with its input, a chat about a picture, a failure."""
    make_image(tmp_path / "photos" / "cat.png", (96, 64), color=(30, 120, 200))
    manifest = write(f"""
        defaults: {{model: gpt-image-1, size: 1024x1024, quality: low}}
        tasks:
          - {{kind: generate, id: fox, prompt: a red fox in snow}}
          - {{kind: generate, id: pair, prompt: two teal owls, n: 2}}
          - {{kind: generate, id: hostile, prompt: "{HOSTILE}"}}
          - {{kind: edit, id: hat, prompt: give the cat a hat, image: photos/cat.png}}
          - {{kind: chat, id: describe, model: gemini-2.5-flash, prompt: what is this?, images: [photos/cat.png]}}
          - {{kind: generate, id: refused, prompt: something forbidden}}
    """)
    out = tmp_path / "out"
    outcome = cli("run", manifest, "--out", out, env=env_for(sim))
    assert outcome.code == 1, outcome.err  # the refused one
    return out


def page_data(page: Path) -> dict[str, Any]:
    text = page.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S)
    assert match, "the page's data block"
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def test_the_page_holds_every_task_with_its_thumbnails_and_needs_nothing_outside_dir(run_dir: Path) -> None:
    page = run_dir / "index.html"
    text = page.read_text(encoding="utf-8")
    assert (
        not re.search(r"""(src|href)=["']?(https?:)?//""", text) and "http://" not in text.split("<script")[0]
    )
    assert "https://" not in text
    data = page_data(page)
    items = {item["id"]: item for item in data["items"]}
    assert set(items) == set(results(run_dir)) and data["total"] == 6
    assert items["pair"]["files"] == ["images/pair~1.png", "images/pair~2.png"]
    for item in items.values():
        for thumb in item["thumbs"]:
            assert thumb and (run_dir / thumb).is_file()
            with Image.open(run_dir / thumb) as image:
                assert image.format == "WEBP" and max(image.size) <= 320
    assert items["fox"]["prompt"] == "a red fox in snow" and items["fox"]["params"]["quality"] == "low"
    assert items["fox"]["tokens"] > 0 and items["fox"]["cost"] > 0
    [input_thumb] = items["describe"]["inputs"]  # the chat's picture, copied small into DIR
    assert input_thumb.startswith("thumbs/inputs/") and (run_dir / input_thumb).is_file()
    assert items["describe"]["text"] and items["hat"]["inputs"]
    assert "safety system" in items["refused"]["error"] and items["refused"]["thumbs"] == []
    # a prompt cannot end the data block, nor be taken for the page's markers
    assert items["hostile"]["prompt"] == HOSTILE
    assert text.count("</script>") == 2 and "<title>out: maas-batch</title>" in text


def test_gallery_command_makes_missing_thumbnails_again(cli: Callable[..., Outcome], run_dir: Path) -> None:
    shutil.rmtree(run_dir / "thumbs")
    (run_dir / "index.html").unlink()
    outcome = cli("gallery", run_dir)
    assert outcome.code == 0, outcome.err
    items = {item["id"]: item for item in page_data(run_dir / "index.html")["items"]}
    assert all((run_dir / thumb).is_file() for thumb in items["pair"]["thumbs"])
    assert items["describe"]["inputs"]  # its input file is still where the manifest said
    assert cli("gallery", run_dir.parent / "nowhere").code == 64


def test_a_page_built_apart_is_the_same_page_and_makes_missing_thumbnails(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gallery.build_apart (a big run's last page, in a process of its own) writes what build writes,
    with the run's own code, whatever `batch` folder the current directory holds; a build that fails
    there raises OutputError with the child's message."""
    shadow = tmp_path / "elsewhere" / "batch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not maas-batch')\n")
    monkeypatch.chdir(shadow.parent)
    before = page_data(run_dir / "index.html")
    shutil.rmtree(run_dir / "thumbs")
    (run_dir / "index.html").unlink()
    assert gallery.build_apart(run_dir) == run_dir / "index.html"
    after = page_data(run_dir / "index.html")
    assert {**after, "built": None} == {**before, "built": None}
    assert all((run_dir / thumb).is_file() for item in after["items"] for thumb in item["thumbs"])
    (run_dir / "index.html").unlink()
    (run_dir / "index.html").mkdir()  # the page cannot be written
    with pytest.raises(OutputError, match=r"cannot write index\.html"):
        gallery.build_apart(run_dir)


def test_a_page_built_apart_is_given_no_api_key_and_its_warnings_are_logged(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MAAS_API_KEY", "sk-never-passed-on")
    environments: list[dict[str, str]] = []
    real_popen = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> Any:
        environments.append(kwargs["env"])
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(gallery.subprocess, "Popen", popen)
    monkeypatch.setattr(sys, "path", [*sys.path, run_dir / "nothing here"])  # a Path, as a program may add
    gallery.build_apart(run_dir)
    assert environments and all(
        "MAAS_API_KEY" not in env and "sk-never-passed-on" not in "".join(env.values())
        for env in environments
    )
    monkeypatch.setattr(gallery, "_CHILD", "import sys; print('careful: a warning', file=sys.stderr)")
    with caplog.at_level("WARNING", logger="batch.output.gallery"):
        gallery.build_apart(run_dir)
    assert [r.getMessage() for r in caplog.records] == ["careful: a warning"]
    # killed (the out-of-memory killer, say): the message says so, not an exit code below zero
    monkeypatch.setattr(gallery, "_CHILD", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(OutputError, match="the page's build was killed by signal 9"):
        gallery.build_apart(run_dir)


def test_no_gallery_makes_no_thumbnails_and_no_page(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("tasks:\n  - {kind: generate, prompt: a lake}\n")
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, "--no-gallery", env=env_for(sim)).code == 0
    assert not (out / "index.html").exists() and not (out / "thumbs").exists()


def test_the_thumbnail_thread_makes_what_it_is_given_and_stops_cleanly(tmp_path: Path) -> None:
    sources = [make_image(tmp_path / f"in{i}.png", (700, 500)) for i in range(3)]
    thumbnailer = gallery.Thumbnailer(backlog=2)
    for source in sources:  # the third may find the queue full: dropped, for build() to make
        thumbnailer.submit(source, tmp_path / "thumbs" / f"{source.name}.webp")
    thumbnailer.drain()
    made = sorted(p.name for p in (tmp_path / "thumbs").glob("*.webp"))
    assert made[:2] == ["in0.png.webp", "in1.png.webp"]
    with Image.open(tmp_path / "thumbs" / "in0.png.webp") as image:
        assert image.format == "WEBP" and image.size == (320, 229)
    full = gallery.Thumbnailer(backlog=1)
    full.submit(sources[0], tmp_path / "late.webp")
    full.submit(sources[1], tmp_path / "later.webp")
    full.close()  # returns even with a full queue
    assert not full._thread.is_alive()
    thumbnailer.close()


def test_a_run_asks_the_thumbnail_thread_for_every_saved_image(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[tuple[Path, Path]] = []

    class Recording(gallery.Thumbnailer):
        def submit(self, source: Path, destination: Path) -> None:
            asked.append((source, destination))
            super().submit(source, destination)

    monkeypatch.setattr("batch.running.dispatch.Thumbnailer", Recording)
    manifest = write(
        "tasks:\n  - {kind: generate, id: one, prompt: a lake}\n  - {kind: generate, id: two, prompt: a wood, n: 2}\n"
    )
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    assert sorted((s.name, d.name) for s, d in asked) == [
        ("one.png", "one.png.webp"),
        ("two~1.png", "two~1.png.webp"),
        ("two~2.png", "two~2.png.webp"),
    ]
    assert all(s == out / "images" / s.name and d.parent == out / "thumbs" for s, d in asked)


def test_an_unreadable_image_gets_a_card_without_a_thumbnail(run_dir: Path) -> None:
    shutil.rmtree(run_dir / "thumbs")
    (run_dir / "images" / "fox.png").write_bytes(b"not an image")
    items = {item["id"]: item for item in page_data(gallery.build(run_dir))["items"]}
    assert items["fox"]["thumbs"] == [None] and all(items["pair"]["thumbs"])


# --- in a real browser ------------------------------------------------------------------------------


def in_browser(check: Callable[[Page], Any]) -> list[str]:
    """Run `check(page)` in a fresh headless Chromium; no console error may occur. The URLs requested."""
    assert CHROMIUM is not None, "REQUIRE_CHROMIUM is set, but there is no chromium"

    async def main() -> list[str]:
        async with chromium(CHROMIUM) as browser:
            page = await browser.new_page()
            await check(page)
            assert browser.console == [], browser.console
            return browser.requests

    return asyncio.run(main())


async def visible_cards(page: Page) -> list[dict[str, str]]:
    value: list[dict[str, str]] = await page.js(
        "[...document.querySelectorAll('#grid .card')].map(c => ({...c.dataset}))"
    )
    return value


async def click(page: Page, key: str, value: str) -> None:
    await page.js(f"document.querySelector('#filters button[data-key={key}][data-value={value}]').click()")


@needs_chromium
@pytest.mark.timeout(120)
def test_in_chromium_thumbnails_load_and_the_filters_work(run_dir: Path) -> None:
    async def check(page: Page) -> None:
        await page.open((run_dir / "index.html").as_uri())
        await page.until("document.querySelectorAll('#grid .card').length === 6")
        # every thumbnail on screen loads (the page is small enough for all of them to be on screen)
        loaded = await page.until(
            """(() => { const imgs = [...document.querySelectorAll('#grid img')];
                 return imgs.length && imgs.every(i => i.complete) && imgs; })()
               && [...document.querySelectorAll('#grid img')].map(i => [i.getAttribute('src'), i.naturalWidth])"""
        )
        assert len(loaded) == 7  # fox, pair x2, hostile, hat and its input; the chat's input picture
        assert all(width > 0 for _, width in loaded), loaded
        assert sum(src.startswith("thumbs/inputs/") for src, _ in loaded) == 2
        assert await page.js("document.title") == "out: maas-batch"  # the hostile prompt stayed text
        text = await page.js("document.querySelector('.card[data-id=hostile] .prompt').textContent")
        assert text == HOSTILE
        # the chat answer beside its input picture; the failure with its message
        chat = await page.js(
            "(() => { const c = document.querySelector('.card[data-id=describe]');"
            " return [c.querySelector('.answer').textContent, c.querySelectorAll('.ins img').length]; })()"
        )
        assert chat[0] and chat[1] == 1
        error = await page.js("document.querySelector('.card[data-id=refused] .error').textContent")
        assert "safety system" in error
        # filters: by status, by kind, both, and back
        await click(page, "status", "failed")
        assert [c["id"] for c in await visible_cards(page)] == ["refused"]
        await click(page, "status", "all")
        await click(page, "kind", "chat")
        assert [c["id"] for c in await visible_cards(page)] == ["describe"]
        await click(page, "kind", "generate")
        assert sorted(c["id"] for c in await visible_cards(page)) == ["fox", "hostile", "pair", "refused"]
        await click(page, "status", "succeeded")
        assert sorted(c["id"] for c in await visible_cards(page)) == ["fox", "hostile", "pair"]
        assert "3 of 6 tasks" in await page.js("document.getElementById('title').textContent")
        await click(page, "kind", "all")
        await page.js(
            "(s => { s.value = 'OWLS'; s.dispatchEvent(new Event('input')); })(document.getElementById('search'))"
        )
        assert [c["id"] for c in await visible_cards(page)] == ["pair"]

    requests = in_browser(check)
    # the page asked for nothing but itself and the thumbnails in DIR: no network, no full-size image
    page = (run_dir / "index.html").as_uri()
    assert page in requests
    assert all(u == page or u.startswith((run_dir / "thumbs").as_uri() + "/") for u in requests), requests


def many_tasks(root: Path, count: int) -> None:
    """A DIR of `count` finished generate tasks with small images (for the page's paging)."""
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(count):
        name = f"images/t{i:04d}.png"
        Image.new("RGB", (64, 64), (i % 256, (i * 7) % 256, 90)).save(root / name)
        lines.append(
            json.dumps(
                {
                    "id": f"t{i:04d}",
                    "kind": "generate",
                    "status": "succeeded",
                    "prompt": f"picture {i}",
                    "files": [name],
                    "usage": {"total_tokens": 273},
                    "cost": 0.01,
                    "attempts": 1,
                }
            )
        )
    (root / "results.jsonl").write_text("\n".join(lines) + "\n")


@needs_chromium
@pytest.mark.timeout(120)
def test_in_chromium_a_large_gallery_draws_in_chunks_and_loads_images_lazily(tmp_path: Path) -> None:
    root = tmp_path / "big"
    many_tasks(root, 600)
    gallery.build(root)

    async def check(page: Page) -> None:
        await page.open((root / "index.html").as_uri())
        first = await page.until("document.querySelectorAll('#grid .card').length")
        assert first <= 240  # drawn in chunks (of 120) as you scroll
        await page.until("[...document.querySelectorAll('#grid img')].slice(0, 4).every(i => i.naturalWidth)")
        loaded = await page.js(
            "[...document.querySelectorAll('#grid img')].filter(i => i.naturalWidth).length"
        )
        assert 0 < loaded < first  # lazy: only the thumbnails near the screen
        # scrolling to the end draws everything
        await page.js(
            """new Promise(resolve => { const step = () => {
                 window.scrollTo(0, document.body.scrollHeight);
                 if (document.querySelectorAll('#grid .card').length === 600) resolve(true);
                 else requestAnimationFrame(step); }; step(); })"""
        )
        last = await page.until(
            "(() => { const i = document.querySelector('.card[data-id=t0599] img');"
            " return i && i.complete && i.naturalWidth; })()"
        )
        assert last > 0

    in_browser(check)


def test_a_card_is_bounded_whatever_its_record_holds(tmp_path: Path) -> None:
    """A CSV of a million columns makes a result line of a million params: the page keeps 50 of them.
    20 MB of them here, a hundred times what the page may take (200 MB took 5 s to show the same)."""
    out = tmp_path / "out"
    out.mkdir()
    columns = 20_000
    record = {
        "id": "wide",
        "kind": "chat",
        "status": "succeeded",
        "prompt": "p" * 100_000,
        "params": {f"column{i}": "v" * 1_000 for i in range(columns)},
        "text": "t" * 100_000,
        "files": [],
        "inputs": [f"/nowhere/{i}.png" for i in range(10_000)],
    }
    (out / "results.jsonl").write_text(json.dumps(record) + "\n")
    page = gallery.build(out)
    assert page.stat().st_size < 200_000  # the record is 20 MB
    blob = re.search(r"(\{\"items\".*\})", page.read_text()).group(1)  # type: ignore[union-attr]
    [card] = json.loads(blob.replace("\\u003c", "<"))["items"]
    assert (
        len(card["params"]) == cards.PARAMS_SHOWN + 1
        and card["params"]["..."] == f"{columns - cards.PARAMS_SHOWN:,} more"
    )
    assert all(len(value) <= cards.VALUE_SHOWN + 3 for value in card["params"].values())
    assert len(card["prompt"]) <= cards.TEXT_SHOWN + 3 and len(card["text"]) <= cards.ANSWER_SHOWN + 3


def test_a_card_reads_its_result_line_through_the_record() -> None:
    from batch.running.records import ResultRecord

    line = {
        "id": "refused",
        "kind": "edit",
        "status": "failed",
        "model": "gpt-image-1",
        "prompt": None,
        "params": {"size": "1024x1024"},
        "inputs": ["/data/in/fox.png"],
        "files": ["images/refused~1.png"],
        "usage": {"input_tokens": 3, "output_tokens": 0, "total_tokens": 3},
        "cost": None,
        "attempts": 2,
        "error": {"type": "moderation_blocked", "status": 400, "message": "no"},
        "seconds": 1.5,
    }
    card = cards._card(ResultRecord.from_line(line))
    assert card == {
        "id": "refused",
        "kind": "edit",
        "status": "failed",
        "model": "gpt-image-1",
        "prompt": "",
        "params": {"size": "1024x1024"},
        "files": ["images/refused~1.png"],
        "inputs": ["/data/in/fox.png"],
        "text": None,
        "tokens": 3,
        "cost": None,
        "attempts": 2,
        "seconds": 1.5,
        "error": "moderation_blocked: no",
    }
    assert cards._card(ResultRecord.from_line({"id": "bare", "error": {}}))["error"] is None


def test_a_page_without_pictures_skips_the_thumbnail_pass_and_one_with_them_does_not(tmp_path: Path) -> None:
    """The first pass (making missing thumbnails) is for cards that show pictures; a page of chat answers,
    as the tool writes their lines, is built without it. Any line that might name a picture keeps it."""
    from batch.running.records import ResultRecord

    out = tmp_path / "out"
    out.mkdir()
    chat = ResultRecord("a", "chat", "succeeded", "m", prompt="hi", text='files: [] "files": []').to_line()
    (out / "results.jsonl").write_text(json.dumps(chat) + "\n" + json.dumps({**chat, "id": "b"}) + "\n")
    scope = scope_of(out)
    from batch.running.idset import digest
    from batch.running.order import Order

    def may_want(scope: Scope) -> bool:
        """The answer of the pass of its own, and of the scope's index (the page's pass): the same."""
        alone = gallery._may_want_thumbnails(out, scope)
        lines = index(out, scope)
        if lines is not None:
            assert gallery._may_want_thumbnails(out, scope, lines) is alone
        return alone

    assert not may_want(scope)
    finished = Scope(order=Order([digest("a"), digest("b")]))
    pending = Scope(order=Order([digest("a"), digest("b"), digest("c")]))
    assert not may_want(finished)
    assert may_want(pending)  # a pending card shows its inputs
    assert [item["id"] for item in page_data(gallery.build(out))["items"]] == ["a", "b"]

    make_image(out / "images" / "c.png", (64, 48))
    picture = {**chat, "id": "c", "files": ["images/c.png"], "meta": {"files": []}}
    hand_written = {"id": "d", "kind": "chat", "status": "succeeded", "files": ["images/c.png"]}
    for line in (picture, hand_written):
        (out / "results.jsonl").write_text(json.dumps(chat) + "\n" + json.dumps(line) + "\n")
        assert may_want(scope)
        assert may_want(Scope(order=Order([digest("a"), digest(str(line["id"]))])))
    (out / "results.jsonl").write_text(json.dumps(chat) + "\n" + json.dumps(picture) + "\n")
    items = {item["id"]: item for item in page_data(gallery.build(out))["items"]}
    assert items["c"]["thumbs"] and all((out / thumb).is_file() for thumb in items["c"]["thumbs"])


@pytest.mark.parametrize("pictures", [False, True])
def test_a_pages_build_parses_each_result_line_no_more_than_it_must(
    pictures: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of chat answers parses each line twice: once to find each task's last line (the same pass
    says no card shows a picture), once for its card. A page of pictures four times: the thumbnails'
    pass and the page's, each finding the lines then reading them; the look for a picture stops at the
    first line that may name one."""
    from batch.output import store
    from batch.running.idset import digest
    from batch.running.order import Order
    from batch.running.records import ResultRecord

    count = 6
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    lines = []
    for i in range(count):
        files: tuple[str, ...] = ()
        if pictures:
            make_image(out / "images" / f"t{i}.png", (16, 16))
            files = (f"images/t{i}.png",)
        record = ResultRecord(f"t{i}", "chat", "succeeded", "m", prompt="hi", text="ok", files=files)
        lines.append(json.dumps(record.to_line()) + "\n")
    (out / "results.jsonl").write_text("".join(lines))
    scope = Scope(order=Order([digest(f"t{i}") for i in range(count)]))
    parsed = 0
    real = store.parse_record

    def counting(raw: bytes) -> Any:
        nonlocal parsed
        parsed += 1
        return real(raw)

    opened = 0
    real_open = Path.open

    def counting_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        nonlocal opened
        opened += self.name == "results.jsonl"
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(store, "parse_record", counting)
    monkeypatch.setattr(Path, "open", counting_open)
    items = page_data(gallery.build(out, scope))["items"]
    assert [item["id"] for item in items] == [f"t{i}" for i in range(count)]
    assert all(item["thumbs"] for item in items) is pictures
    assert parsed == (4 * count + 1 if pictures else 2 * count)
    if not pictures:
        assert opened == 2  # no pass of its own before the page's, for a page that shows no picture


@needs_chromium
@pytest.mark.timeout(120)
def test_an_object_where_the_page_shows_text_does_not_blank_it(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """{"toString": 1} as a line's kind, status or a param's value threw in the page's script before any
    card was drawn: one edited line, and the page showed nothing of any task."""
    manifest = write(
        "tasks:\n  - {kind: generate, id: fox, prompt: a fox}\n  - {kind: generate, id: owl, prompt: an owl}\n"
    )
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    odd = {"toString": 1, "valueOf": 2}
    lines[0] |= {"kind": odd, "status": odd, "model": odd, "params": {"a": odd, "b": [odd]}}
    (out / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert cli("gallery", out).code == 0

    async def check(page: Page) -> None:
        await page.open((out / "index.html").as_uri())
        await page.until("document.querySelectorAll('#grid .card').length === 2")

    in_browser(check)


def test_a_picture_past_what_the_answers_check_decodes_gets_no_thumbnail(tmp_path: Path) -> None:
    """An 8192x8192 picture (a few KB as a PNG of one colour) was decoded whole to be made small: a
    177 KB WebP of that size took 1.1 GB. Past 4096x4096 (what an answer's check decodes) the card shows
    no picture; below, the thumbnail is made."""
    from PIL import Image

    from batch.output.gallery import make_thumbnail

    for side, made in ((8192, False), (1024, True)):
        buffer = io.BytesIO()
        Image.new("RGB", (side, side), (10, 120, 200)).save(buffer, "PNG")
        target = tmp_path / "thumbs" / f"p{side}.png.webp"
        assert make_thumbnail(buffer.getvalue(), target) is made
        assert target.exists() is made
