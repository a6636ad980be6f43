"""The pictures the simulator answers with: real files of the asked size and format, cheap to make.

`drawn` mode paints a small picture per prompt (colour from a hash of the prompt, a few shapes, the first
words), so a human can tell outputs apart; an edit paints over the first input image, tinted. `realistic`
mode sends megabytes of noise like a real model's PNGs, built once per (size, format), so that a throughput
benchmark measures the client and never the simulator. All functions here are blocking CPU work: the server
calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import random
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

DEFAULT_CACHE_SIZE = 48
# Target amount of incompressible bytes in a realistic image: with the rest flat, a PNG of 1.5-3 MB.
REALISTIC_NOISE_BYTES = 2 * 1024 * 1024
BOMB_SIDE = 30000
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


@dataclass(frozen=True)
class ImageSpec:
    """Everything that decides one output image; also its cache key."""

    prompt: str
    width: int
    height: int
    output_format: str  # png | jpeg | webp
    compression: int  # 0..100, the quality of jpeg / webp
    transparent: bool
    index: int  # position in `data`, so that n images differ
    source_digest: str | None = None  # edit: hash of the input image and mask


@dataclass(frozen=True)
class EditSource:
    """The input of an edit: the first image's bytes and the optional mask's."""

    image: bytes
    mask: bytes | None = None

    def digest(self) -> str:
        h = hashlib.sha256(self.image)
        h.update(b"|mask|" + (self.mask or b""))
        return h.hexdigest()


def _palette(seed: int | None, *parts: object) -> bytes:
    """Deterministic bytes for colours and positions, from the prompt and the server's seed."""
    text = "|".join(str(part) for part in (seed, *parts))
    return hashlib.sha256(text.encode()).digest() + hashlib.sha256(b"2" + text.encode()).digest()


def _first_words(prompt: str, count: int = 5, limit: int = 40) -> str:
    words = " ".join(prompt.split()[:count])
    return words if len(words) <= limit else words[: limit - 1] + "…"


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ValueError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _paint(image: Image.Image, spec: ImageSpec, seed: int | None, *, opaque_shapes: bool) -> None:
    """A few shapes and the prompt's first words, placed and coloured from a hash."""
    rnd = _palette(seed, spec.prompt, spec.index, "shapes")
    draw = ImageDraw.Draw(image)
    w, h = image.size
    alpha = (255,) if image.mode == "RGBA" else ()
    for k in range(4):
        b = rnd[6 + 7 * k : 13 + 7 * k]
        x0, y0 = b[0] * w // 320, b[1] * h // 320
        x1, y1 = x0 + w // 8 + b[2] * w // 600, y0 + h // 8 + b[3] * h // 600
        fill = (b[4], b[5], b[6], *alpha) if opaque_shapes or not alpha else (b[4], b[5], b[6], 200)
        if k % 2 == 0:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
    ink = (255, 255, 255, *alpha) if sum(rnd[:3]) < 384 else (0, 0, 0, *alpha)
    # A script the fallback bitmap font cannot draw: the shapes suffice.
    with contextlib.suppress(UnicodeError, OSError, ValueError):
        draw.text((w // 20, h - h // 8), _first_words(spec.prompt), fill=ink, font=_font(max(16, h // 24)))


def _drawn(spec: ImageSpec, seed: int | None) -> Image.Image:
    colour = tuple(_palette(seed, spec.prompt, "background")[:3])
    size = (spec.width, spec.height)
    image = Image.new("RGBA", size, (*colour, 0)) if spec.transparent else Image.new("RGB", size, colour)
    _paint(image, spec, seed, opaque_shapes=True)
    return image


def _edited(spec: ImageSpec, source: EditSource, seed: int | None) -> Image.Image:
    """The first input image, resized and tinted (only under the mask's transparent pixels, if any)."""
    size = (spec.width, spec.height)
    with Image.open(io.BytesIO(source.image)) as opened:
        original = opened.convert("RGBA").resize(size)
    colour = tuple(_palette(seed, spec.prompt, "background")[:3])
    edited = Image.blend(original, Image.new("RGBA", size, (*colour, 255)), 0.45)
    _paint(edited, spec, seed, opaque_shapes=False)
    if source.mask is not None:
        with Image.open(io.BytesIO(source.mask)) as opened_mask:
            alpha = opened_mask.convert("RGBA").getchannel("A").resize(size)
        edited = Image.composite(edited, original, alpha.point(lambda a: 255 if a == 0 else 0))
    if not spec.transparent:
        return edited.convert("RGB")
    edited.putalpha(255)
    # Clear a band so that a transparent background is visible in the file.
    ImageDraw.Draw(edited).rectangle((0, 0, spec.width, spec.height // 6), fill=(0, 0, 0, 0))
    return edited


def encode(image: Image.Image, output_format: str, compression: int) -> bytes:
    """The image as file bytes; `compression` is the quality of jpeg and webp (png is lossless)."""
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, "PNG", compress_level=1)
    elif output_format == "jpeg":
        image.convert("RGB").save(buffer, "JPEG", quality=max(1, compression))
    else:
        image.save(buffer, _PIL_FORMATS[output_format], quality=compression, method=0)
    return buffer.getvalue()


def _realistic(width: int, height: int, output_format: str, transparent: bool, seed: int | None) -> bytes:
    """An image of incompressible noise over most of its area: megabytes, like a real model's output."""
    mode = "RGBA" if transparent else "RGB"
    channels = len(mode)
    row = width * channels
    # PNG: noise over part of the image, sized for 1.5-3 MB; lossy formats shrink noise, so fill it all.
    noise_rows = min(height, max(1, REALISTIC_NOISE_BYTES // row)) if output_format == "png" else height
    noise = random.Random(seed).randbytes(noise_rows * row)
    image = Image.new(mode, (width, height), (90, 110, 130, 0)[:channels])
    image.paste(Image.frombytes(mode, (width, noise_rows), noise), (0, 0))
    if transparent:
        alpha = Image.new("L", (width, height), 0)
        alpha.paste(255, (0, 0, width, noise_rows))
        image.putalpha(alpha)
    return encode(image, output_format, 90)


def bomb_png() -> bytes:
    """A PNG whose header claims 30000x30000 pixels (900 Mpx); the IDAT holds only a few zero rows."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", BOMB_SIDE, BOMB_SIDE, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (BOMB_SIDE * 3 + 1) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def not_an_image() -> bytes:
    """Bytes that decode from base64 fine but are no image format at all."""
    return b"This is not an image. It is a simulated fault of the MaaS simulator.\n" * 8


class ImageFactory:
    """Makes output images as base64 (ASCII bytes) and keeps the latest ones: repeated prompts are cheap."""

    def __init__(self, *, mode: str = "drawn", seed: int | None = None, cache_size: int = DEFAULT_CACHE_SIZE):
        self._mode = mode
        self._seed = seed
        self._cache_size = cache_size
        self._cache: OrderedDict[ImageSpec, bytes] = OrderedDict()
        self._realistic: dict[tuple[int, int, str, bool], bytes] = {}
        self._lock = threading.Lock()

    def _cached(self, key: ImageSpec) -> bytes | None:
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
            return found

    def _store(self, key: ImageSpec, value: bytes) -> None:
        with self._lock:
            self._cache[key] = value
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def render_b64(self, spec: ImageSpec, source: EditSource | None = None) -> bytes:
        """One output image, base64-encoded; blocking."""
        if self._mode == "realistic":
            key = (spec.width, spec.height, spec.output_format, spec.transparent)
            with self._lock:
                found = self._realistic.get(key)
            if found is None:
                # Two threads may build the same one at once; both results are identical, either may stay.
                found = base64.b64encode(_realistic(*key, self._seed))
                with self._lock:
                    self._realistic.setdefault(key, found)
            return found
        cached = self._cached(spec)
        if cached is not None:
            return cached
        image = _edited(spec, source, self._seed) if source is not None else _drawn(spec, self._seed)
        encoded = base64.b64encode(encode(image, spec.output_format, spec.compression))
        self._store(spec, encoded)
        return encoded

    def render_many(self, specs: list[ImageSpec], source: EditSource | None = None) -> list[bytes]:
        """All images of one answer, so that the server hops to a thread once per request."""
        return [self.render_b64(spec, source) for spec in specs]
