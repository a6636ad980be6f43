"""The gallery is a review tool: a header with the counts, cost, tokens, manifest and date; the cards in
manifest order, pending tasks too; sorting and filters kept in the URL; images in their own aspect ratio;
a larger view of any task; and a page rebuilt during the run, off the event loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batch.output import gallery
from batch.simulator import RunningSimulator, SimConfig, simulator_in_thread
from tests.browser import Page
from tests.conftest import KEY, Outcome, env_for, make_image, results
from tests.output.test_gallery import in_browser, needs_chromium, page_data, visible_cards

ORDER = ["wide", "tall", "refused", "look", "later"]


@pytest.fixture
def review_dir(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> Path:
    """A run with a landscape and a portrait image, a failure, a chat about a photo, and one task whose
    result line is gone (pending); results.jsonl in an order that is not the manifest's."""
    make_image(tmp_path / "photos" / "shelf.png", (600, 400), color=(30, 120, 200))
    manifest = write("""
        defaults: {model: gpt-image-1, quality: low}
        tasks:
          - {kind: generate, id: wide, prompt: a wide valley, size: 1536x1024}
          - {kind: generate, id: tall, prompt: a tall tower, size: 1024x1536}
          - {kind: generate, id: refused, prompt: something forbidden}
          - {kind: chat, id: look, model: gemini-2.5-flash, prompt: what is on the shelf?, images: [photos/shelf.png]}
          - {kind: generate, id: later, prompt: a quiet pond}
    """)
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 1
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    kept = [line for line in reversed(lines) if '"id": "later"' not in line]
    (out / "results.jsonl").write_text("".join(kept))
    assert cli("gallery", out).code == 0
    return out


def test_the_page_holds_the_header_figures_and_the_manifests_order(review_dir: Path) -> None:
    data = page_data(review_dir / "index.html")
    assert [item["id"] for item in data["items"]] == ORDER
    assert data["statuses"] == {"succeeded": 3, "failed": 1, "pending": 1}
    done = results(review_dir)
    assert data["tokens"] == sum(r["usage"]["total_tokens"] for r in done.values() if r["usage"])
    assert data["cost"] == pytest.approx(sum(r["cost"] or 0 for r in done.values()), abs=1e-6)
    assert data["manifest"].endswith("job.yaml") and data["built"][:4].isdigit()
    later = data["items"][-1]
    assert later["status"] == "pending" and later["prompt"] == "a quiet pond" and later["thumbs"] == []


@needs_chromium
@pytest.mark.timeout(120)
def test_in_chromium_the_gallery_is_a_review_tool(review_dir: Path) -> None:
    page_uri = (review_dir / "index.html").as_uri()

    async def check(page: Page) -> None:
        await page.open(page_uri)
        await page.until("document.querySelectorAll('#grid .card').length === 5")
        assert [c["id"] for c in await visible_cards(page)] == ORDER
        counts = await page.js(
            "Object.fromEntries([...document.querySelectorAll('#stats b')].map(b => [b.dataset.count, b.textContent]))"
        )
        assert counts == {"done": "3", "failed": "1", "pending": "1"}
        header = await page.js("document.getElementById('stats').textContent")
        assert "tokens" in header and "$" in header and "job.yaml" in header and "built 20" in header
        # images in their own aspect ratio, not cropped square
        shapes = await page.until(
            """(() => { const imgs = ['wide', 'tall'].map(id => document.querySelector(`.card[data-id=${id}] .pics img`));
                 return imgs.every(i => i.complete && i.naturalWidth) && imgs.map(i => [i.clientWidth / i.clientHeight, i.naturalWidth / i.naturalHeight]); })()"""
        )
        for shown, natural in shapes:
            assert shown == pytest.approx(natural, rel=0.03)
        assert shapes[0][0] > 1.3 and shapes[1][0] < 0.8
        # the input photo of a chat, larger than 56 px
        height = await page.until(
            "(i => i && i.complete && i.naturalWidth && i.clientHeight)(document.querySelector('.card[data-id=look] .ins img'))"
        )
        assert height > 56
        # filters and sorting go into the URL
        await page.js("document.querySelector('#filters button[data-key=status][data-value=failed]').click()")
        assert [c["id"] for c in await visible_cards(page)] == ["refused"]
        assert await page.js("location.hash") == "#status=failed"
        await page.js(
            "(s => { s.value = 'cost'; s.dispatchEvent(new Event('change')); })(document.getElementById('sort'))"
        )
        assert "sort=cost" in await page.js("location.hash")
        # the larger view: the full image, the inputs, the meta, the whole answer
        await page.js("location.hash = ''")
        await page.until("document.querySelectorAll('#grid .card').length === 5")
        await page.js("document.querySelector('.card[data-id=wide] .pics a').click()")
        size = await page.until(
            "(i => i && i.complete && i.naturalWidth && [i.naturalWidth, i.naturalHeight])(document.getElementById('large'))"
        )
        assert size == [1536, 1024]
        assert await page.js("document.getElementById('viewer').classList.contains('open')")
        side = await page.js("document.querySelector('#viewer .side').textContent")
        assert "a wide valley" in side and "1536x1024" in side and "gpt-image-1" in side
        await page.js("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}))")
        assert not await page.js("document.getElementById('viewer').classList.contains('open')")
        await page.js("document.querySelector('.card[data-id=look] .id').click()")
        answer = await page.js("document.querySelector('#viewer .answer').textContent")
        assert answer == results(review_dir)["look"]["text"]
        assert await page.js("document.querySelectorAll('#viewer .ins img').length") == 1

    in_browser(check)

    async def linked(page: Page) -> None:
        """A link with the filters in it shows the same cards."""
        await page.open(page_uri + "#status=pending")
        await page.until("document.querySelectorAll('#grid .card').length === 1")
        assert [c["id"] for c in await visible_cards(page)] == ["later"]
        await page.open("about:blank")  # a new load, not a change of hash
        await page.open(page_uri + "#sort=cost&kind=generate")
        await page.until("document.querySelectorAll('#grid .card').length === 4")
        cards = [c["id"] for c in await visible_cards(page)]
        done = results(review_dir)
        costs = [done[i]["cost"] or 0 if i in done else 0 for i in cards]
        assert costs == sorted(costs, reverse=True)
        on = await page.js("[...document.querySelectorAll('#filters button.on')].map(b => b.dataset.value)")
        assert on == ["all", "generate"]

    in_browser(linked)


def test_the_page_is_rebuilt_during_a_run_in_a_thread_of_its_own(
    cli: Callable[..., Outcome],
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builds: list[tuple[str, bool, int]] = []
    orders: list[object] = []  # each build's digests
    real_build = gallery.build

    def recording(root: Path, scope: Any = None, *, make_missing: bool = True) -> Path:
        done = len((root / "results.jsonl").read_text().splitlines())
        builds.append((threading.current_thread().name, make_missing, done))
        orders.append(None if scope is None else scope.order)
        return real_build(root, scope, make_missing=make_missing)

    monkeypatch.setattr(gallery, "build", recording)
    monkeypatch.setattr(gallery, "REBUILD_EVERY", 0.05)
    manifest = write(
        "tasks:\n" + "".join(f"  - {{kind: generate, id: t{i:02d}, prompt: p {i}}}\n" for i in range(16))
    )
    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY, latency=0.1)) as sim:
        assert cli("run", manifest, "--out", out, "-c", "2", env=env_for(sim)).code == 0
    during = [b for b in builds if b[0] == "maas-batch-gallery"]
    assert during and all(not make_missing for _, make_missing, _ in during)
    assert any(done < 16 for _, _, done in during)  # built while tasks were still pending
    assert builds[-1][1:] == (True, 16) and builds[-1][0] != "maas-batch-gallery"  # then whole, at the end
    # every build has the run's own digests, one array, rather than a copy read back from DIR each time
    assert orders[0] is not None and all(order is orders[0] for order in orders)


def test_the_rebuilder_builds_only_when_results_grew_and_stops(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text('{"id": "a", "kind": "chat", "status": "succeeded"}\n')
    rebuilder = gallery.Rebuilder(tmp_path, every=0.01)
    end = time.monotonic() + 10
    while rebuilder.builds == 0 and time.monotonic() < end:
        time.sleep(0.01)  # the thread's own clock: nothing else to wait on
    time.sleep(0.1)
    assert rebuilder.builds == 1 and (tmp_path / "index.html").is_file()
    rebuilder.close()
    assert not rebuilder._thread.is_alive()


def test_orphaned_lines_get_cards_only_when_asked_for(cli: Callable[..., Outcome], edited: Path) -> None:
    assert cli("gallery", edited).code == 0
    data = page_data(edited / "index.html")
    assert len(data["items"]) == 4 and data["statuses"] == {"succeeded": 4}
    assert cli("gallery", edited, "--include-orphaned").code == 0
    data = page_data(edited / "index.html")
    assert data["statuses"] == {"succeeded": 4, "orphaned": 2}
    assert [item.get("orphaned", False) for item in data["items"]] == [False] * 4 + [True] * 2
