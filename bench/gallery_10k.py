"""How long the gallery (DIR/index.html) takes over 10,000 images, and how the page copes in Chromium.

    python bench/gallery_10k.py [--images 10000] [--no-browser]

A synthetic output directory: N tasks (88% generate with one 1024x1024 image each, 10% chat answers,
2% failures) whose images are 1.5-3 MB noisy PNGs like a real model's (40 distinct ones, hard-linked, so
that the bench needs 100 MB of disk rather than 20 GB). Measured:
  thumbnail   making one thumbnail, as a run does when it saves an image (per image, one thread)
  after run   `gallery.build` with the thumbnails made during the run: what every run pays at its end
  scratch     `gallery.build` with no thumbnail yet (`maas-batch gallery DIR` after --no-gallery)
  browser     in headless Chromium: the page loaded, the first cards and their thumbnails shown, and
              a filter applied over all N (skipped without chromium)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batch.output import gallery
from batch.output.cards import thumbnail_name
from batch.output.store import THUMBS
from batch.simulator.images import _realistic

DISTINCT = 40


def make_dir(root: Path, count: int) -> None:
    images = root / "images"
    images.mkdir(parents=True)
    sources = []
    for i in range(DISTINCT):
        path = root / f"source-{i}.png"
        path.write_bytes(_realistic(1024, 1024, "png", False, i))
        sources.append(path)
    with (root / "results.jsonl").open("w") as results:
        for i in range(count):
            task_id = f"task-{i:05d}"
            record: dict[str, object] = {
                "id": task_id,
                "kind": "generate",
                "status": "succeeded",
                "model": "gpt-image-1",
                "prompt": f"A study of a fox in the snow, number {i}, in the style of a woodcut print",
                "params": {"size": "1024x1024", "quality": "medium"},
                "files": [],
                "usage": {"input_tokens": 20, "output_tokens": 1056, "total_tokens": 1076},
                "cost": 0.04234,
                "attempts": 1,
                "seconds": 21.5,
            }
            if i % 50 == 49:
                record.update(
                    status="failed",
                    usage=None,
                    cost=None,
                    error={"type": "server_error", "message": "HTTP 500 after 6 attempts"},
                )
            elif i % 10 == 9:
                record.update(kind="chat", model="gemini-2.5-flash", text="A red fox sits in deep snow. " * 8)
            else:
                name = f"images/{task_id}.png"
                os.link(sources[i % DISTINCT], root / name)
                record["files"] = [name]
            results.write(json.dumps(record) + "\n")


def timed(label: str, action: object) -> float:
    started = time.perf_counter()
    action()  # type: ignore[operator]
    seconds = time.perf_counter() - started
    print(f"  {label:<44} {seconds:8.2f} s", flush=True)
    return seconds


async def in_browser(page_path: Path, count: int) -> dict[str, float]:
    from tests.browser import chromium, find_chromium

    executable = find_chromium()
    assert executable
    async with chromium(executable) as browser:
        page = await browser.new_page()
        started = time.perf_counter()
        await page.open(page_path.as_uri(), within=120)
        loaded = time.perf_counter() - started
        await page.until("document.querySelectorAll('#grid .card').length > 0", 60)
        first = "[...document.querySelectorAll('#grid img')].slice(0, 8)"
        await page.until(f"{first}.every(i => i.complete && i.naturalWidth)", 60)
        shown = time.perf_counter() - started
        cards = await page.js("document.querySelectorAll('#grid .card').length")
        images = await page.js(
            "[...document.querySelectorAll('#grid img')].filter(i => i.naturalWidth).length"
        )
        filtered = await page.js(
            """(() => { const t = performance.now();
                 document.querySelector('#filters button[data-key=status][data-value=failed]').click();
                 return [performance.now() - t, document.querySelectorAll('#grid .card').length]; })()"""
        )
        assert browser.console == [], browser.console
    return {
        "load_event_s": loaded,
        "first_thumbnails_s": shown,
        "cards_drawn": cards,
        "thumbnails_loaded": images,
        "filter_ms": filtered[0],
        "failed_cards": filtered[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10_000, help="tasks in the directory (default 10000)")
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium part")
    args = parser.parse_args()
    print(f"gallery bench: {args.images:,} tasks; {platform.python_version()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="maas-gallery-") as folder:
        root = Path(folder) / "run"
        timed("synthesize the directory", lambda: make_dir(root, args.images))
        images = sorted((root / "images").iterdir())
        sample = images[:200]
        one = timed(
            f"thumbnails of {len(sample)} images, one thread",
            lambda: [gallery.make_thumbnail(p, root / THUMBS / thumbnail_name(p.name)) for p in sample],
        )
        print(f"  {'= per image, in the thumbnail thread':<44} {one / len(sample) * 1000:8.1f} ms")
        scratch = timed(
            f"build from scratch ({len(images):,} thumbnails)",
            lambda: (shutil.rmtree(root / THUMBS), gallery.build(root)),
        )
        after = timed("build after a run (thumbnails made)", lambda: gallery.build(root))
        page = root / gallery.PAGE
        thumbs = sum(p.stat().st_size for p in (root / THUMBS).glob("*.webp"))
        print(f"  {'page size':<44} {page.stat().st_size / 2**20:8.2f} MB")
        print(f"  {'thumbnails':<44} {thumbs / 2**20:8.1f} MB ({thumbs / len(images) / 1024:.1f} KB each)")
        figures: dict[str, object] = {
            "tasks": args.images,
            "images": len(images),
            "thumbnail_ms": one / len(sample) * 1000,
            "build_after_run_s": after,
            "build_from_scratch_s": scratch,
            "page_mb": page.stat().st_size / 2**20,
        }
        if not args.no_browser:
            from tests.browser import find_chromium

            if find_chromium() is None:
                print("  browser: no chromium here; skipped")
            else:
                browser = asyncio.run(in_browser(page, args.images))
                for key, value in browser.items():
                    print(
                        f"  browser {key:<36} {value:8.2f}"
                        if isinstance(value, float)
                        else f"  browser {key:<36} {value:8}"
                    )
                figures["browser"] = browser
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
