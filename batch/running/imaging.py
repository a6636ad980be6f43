"""Turning the base64 files of an answer into checked files, of the media types its kind allows.
Blocking (base64 and Pillow): run it in a worker thread, never on the event loop.

Only images can be checked today (Pillow reads them); a kind whose answers hold other files would need a
checker for their type here.
"""

from __future__ import annotations

import binascii
import io
import warnings
from collections.abc import Collection, Sequence

import pybase64

from batch.errors import BrokenAnswerError
from batch.kind import EncodedImage, TaskKind
from batch.output.store import OutputFile

DECODE_PIXELS = 4096 * 4096  # JPEG and WebP are decoded to be checked up to this (64 MB at worst)
MAX_PIXELS = 8192 * 8192  # far above any size the API makes; a bomb claims far more
# Pillow's format -> (media type, file extension)
FORMATS = {
    "PNG": ("image/png", "png"),
    "JPEG": ("image/jpeg", "jpg"),
    "WEBP": ("image/webp", "webp"),
    "GIF": ("image/gif", "gif"),
}


def output_name(task_id: str, index: int, count: int, extension: str) -> str:
    """`<id>.<ext>` for a single image; `<id>~<k>.<ext>` (k from 1) when an answer has several. `~` cannot
    appear in an id, so no two tasks' names can collide."""
    return f"{task_id}.{extension}" if count == 1 else f"{task_id}~{index + 1}.{extension}"


def decode_images(
    task_id: str,
    images: Sequence[EncodedImage],
    kind: TaskKind,
    *,
    places: Sequence[int] | None = None,
    count: int | None = None,
    unusable: list[str] | None = None,
) -> list[OutputFile]:
    """Every file decoded and checked to be one of the kind's `output_media_types`, before any is
    written. Raises BrokenAnswerError; with `unusable`, only when no image of the answer is usable: why
    each other one is not goes there (one bad image, an error page behind a link, threw away the good
    ones, paid for).

    Each is named by its place in the answer (`places`, when some of the answer's images are not among
    `images`: a link lost), of `count` images (the answer's and those asked for but not sent): a task of
    n > 1 names the images that came `<id>~<k>` whatever did not, as pipelines join them by name."""
    files = []
    media_types = kind.output_media_types
    places = range(len(images)) if places is None else places
    count = max(len(images), count or 0)
    first: BrokenAnswerError | None = None
    for index, image in zip(places, images, strict=True):
        if not media_types:
            raise BrokenAnswerError(
                f"the answer holds {len(images)} file(s); this kind's answers hold none",
                error_type="bad_image",
            )
        try:
            data = image.data if image.data is not None else decode_base64(image.b64, index)
            extension = check_image(data, index, media_types)
        except BrokenAnswerError as exc:
            if unusable is None:
                raise
            first = first or exc
            unusable.append(exc.message)
            continue
        files.append(OutputFile(output_name(task_id, index, count, extension), data))
    if first is not None and not files:
        raise first
    return files


def decode_base64(text: str, index: int = 0) -> bytes:
    """The bytes of base64 text, strict first (fast), then with line breaks and spaces taken out (MIME
    style base64 wraps its lines)."""
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return pybase64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BrokenAnswerError(f"image {index + 1} is not valid base64", error_type="bad_image") from None


def check_image(data: bytes, index: int, media_types: Collection[str]) -> str:
    """The file extension for image bytes, after checking they are a whole, sane image of one of
    `media_types`."""
    from PIL import Image  # Pillow loads with the first image: a chat run never needs it

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height, fmt = image.width, image.height, image.format
                if width * height > MAX_PIXELS:
                    raise BrokenAnswerError(
                        f"image {index + 1} claims {width}x{height} pixels; refusing it "
                        "(a decompression bomb?)"
                    )
                image.verify()
            # verify() walks every PNG chunk and checks its CRC, but reads no more than a JPEG's or WebP's
            # header: those are decoded (a truncated JPEG is caught only so), up to DECODE_PIXELS.
            if fmt != "PNG" and width * height <= DECODE_PIXELS:
                with Image.open(io.BytesIO(data)) as image:  # verify() leaves an image unusable
                    image.load()
    except BrokenAnswerError:
        raise
    except Exception as exc:  # Pillow raises many kinds on hostile bytes (IndexError on a PNG without IDAT)
        raise BrokenAnswerError(
            f"image {index + 1} is not a readable image ({type(exc).__name__}: {str(exc)[:200]})",
            error_type="bad_image",
        ) from None
    media_type, extension = FORMATS.get(fmt or "", ("", ""))
    if media_type not in media_types:
        allowed = ", ".join(sorted(media_types))
        raise BrokenAnswerError(f"image {index + 1} is {fmt}; this kind's answers may be {allowed}")
    return extension
