"""DIR/index.html: one self-contained page (opened from disk, no network) showing every task of a run:
a thumbnail grid of the images with their prompts, parameters, tokens and cost, the chat answers beside
their input images, and the failures with their messages; filters by status and kind, and a search.

Thumbnails (DIR/thumbs/, WebP, 320 px) are made as each image is saved, in the same worker thread, so that
building the page after a run only writes the page: thousands of images cost seconds, not minutes. The
page draws cards in chunks as you scroll and lets the browser load thumbnails lazily.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from collections import deque
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from batch.store import RESULTS, THUMBS, read_lines, write_atomic

log = logging.getLogger("batch.gallery")

PAGE = "index.html"
THUMB_SIZE = (320, 320)
MAX_ITEMS = 50_000  # the most recent tasks shown; the counts cover all
TEXT_SHOWN = 2000


def thumbnail_name(image_name: str) -> str:
    return f"{image_name}.webp"


def make_thumbnail(source: bytes | Path, destination: Path, *, fsync: bool = False) -> bool:
    """A small WebP of an image (blocking: call it from a worker thread). False if it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                image.draft("RGB", THUMB_SIZE)  # JPEG: decode at a fraction of the size
                image.thumbnail(THUMB_SIZE, reducing_gap=2.0)
                small = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
        buffer = io.BytesIO()
        small.save(buffer, "WEBP", quality=72, method=2)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError):
        return False
    destination.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(destination, buffer.getvalue(), fsync=fsync)
    return True


def _input_thumb(root: Path, path: str) -> str | None:
    """A thumbnail of an input file (outside DIR) inside DIR, so that the page needs nothing else."""
    name = f"{THUMBS}/inputs/{hashlib.sha1(path.encode()).hexdigest()[:16]}.webp"
    target = root / name
    if target.exists() or make_thumbnail(Path(path), target):
        return name
    return None


def _item(root: Path, record: dict[str, Any]) -> dict[str, Any]:
    files = [str(f) for f in record.get("files") or []]
    thumbs: list[str | None] = []
    for relative in files:
        thumb = f"{THUMBS}/{thumbnail_name(Path(relative).name)}"
        if (root / thumb).exists() or make_thumbnail(root / relative, root / thumb):
            thumbs.append(thumb)
        else:
            thumbs.append(None)
    inputs = [t for t in (_input_thumb(root, p) for p in record.get("inputs") or []) if t]
    usage = record.get("usage") or {}
    error = record.get("error") or {}
    text = record.get("text")
    return {
        "id": record.get("id"),
        "kind": record.get("kind"),
        "status": record.get("status"),
        "model": record.get("model"),
        "prompt": record.get("prompt") or "",
        "params": record.get("params") or {},
        "files": files,
        "thumbs": thumbs,
        "inputs": inputs,
        "text": text if not isinstance(text, str) or len(text) <= TEXT_SHOWN else text[:TEXT_SHOWN] + "...",
        "tokens": usage.get("total_tokens"),
        "cost": record.get("cost"),
        "attempts": record.get("attempts"),
        "seconds": record.get("seconds"),
        "error": f"{error.get('type')}: {error.get('message')}" if error else None,
    }


def build(root: Path) -> Path:
    """Write DIR/index.html from results.jsonl; make any thumbnail that is missing. Returns the page."""
    counts: dict[str, int] = {}
    kept: deque[dict[str, Any]] = deque(maxlen=MAX_ITEMS)
    total = 0
    for record in read_lines(root / RESULTS):
        total += 1
        key = f"{record.get('kind')}/{record.get('status')}"
        counts[key] = counts.get(key, 0) + 1
        kept.append(record)
    items = [_item(root, record) for record in kept]
    data = {"title": root.name, "total": total, "shown": len(items), "counts": counts, "items": items}
    blob = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")  # no early </script> from a prompt
    page = root / PAGE
    template = Path(__file__).with_name("gallery.html").read_text(encoding="utf-8")
    write_atomic(
        page, template.replace("/*DATA*/", blob).replace("TITLE", _escape(root.name)).encode(), fsync=False
    )
    return page


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
