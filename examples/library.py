"""maas-batch from Python: a labeling step of a pipeline.

    python examples/library.py [OUT]          # against the built-in simulator (no key needed)
    MAAS_API_KEY=... python examples/library.py out/labels --live

Tasks are built in code (one chat per product photo, the row's fields as `meta`), run with a budget, and
their answers are consumed as they finish; with `include_finished=True` the labels of an earlier run come
first, so the pipeline always gets the whole set. Running it again sends nothing for the finished tasks;
an interrupted run carries on where it stopped. Then the same directory is read back with `batch.run`,
which returns at once because everything is done, and with `batch.results`, which only reads.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import batch

HERE = Path(__file__).resolve().parent
PRODUCTS = [
    {"sku": "MUG-001", "photo": "catalog/mug.jpg", "title": "Blue ceramic mug 350 ml"},
    {"sku": "LAMP-014", "photo": "catalog/lamp.jpg", "title": "Brass desk lamp with yellow shade"},
    {"sku": "CHAIR-203", "photo": "catalog/chair.jpg", "title": "Oak dining chair"},
]


def label_tasks() -> batch.Manifest:
    return batch.from_tasks(
        [
            {
                "kind": "chat",
                "id": product["sku"],
                "prompt": "Which category fits best: kitchen, lighting or furniture? "
                f"Title: {product['title']}",
                "images": [product["photo"]],
                "meta": {"title": product["title"]},
            }
            for product in PRODUCTS
        ],
        defaults={"model": "gemini-2.5-flash", "temperature": 0, "system": "Answer with one lowercase word."},
        folder=HERE,  # the photos' paths are relative to this folder
    )


async def label(out: Path, simulate: bool) -> dict[str, str]:
    labels = {}
    results = batch.stream(
        label_tasks(), out, simulate=simulate, concurrency=4, max_cost=1.00, include_finished=True
    )
    async for result in results:
        if result.succeeded:
            labels[result.id] = result.text or ""
            print(f"{result.id:<10} {result.meta['title']:<36} -> {result.text!r} (${result.cost:.6f})")
        else:
            print(f"{result.id:<10} failed: {result.error}", file=sys.stderr)
    summary = results.summary
    print(
        f"{len(labels)} labels: {summary.succeeded} labeled now, {summary.finished_before} before; "
        f"spent ${summary.cost:.6f} now"
    )
    return labels


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--live"]
    out = Path(args[0]) if args else Path("out/library")
    simulate = "--live" not in sys.argv
    asyncio.run(label(out, simulate))
    # Blocking, for code that is not async: everything is done, so this sends nothing.
    summary = batch.run(label_tasks(), out, simulate=simulate)
    done, sent = summary.finished_before, summary.succeeded
    print(f"again: {done} already done, {sent} sent; exit code {summary.exit_code}")
    # Only reading, in the manifest's order: what the directory holds for these tasks.
    kept = [result.id for result in batch.results(out, label_tasks(), simulate=simulate)]
    print(f"recorded: {', '.join(kept)}")
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
