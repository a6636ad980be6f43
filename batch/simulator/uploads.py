"""Reading an edit's multipart body part by part, with memory bounded whatever the client sends.

Oversized parts are kept only up to their limit (enough for validation to refuse them) and the rest is
drained, so the client always reads a clean 400 instead of a connection reset mid-upload.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import BodyPartReader, web

from .errors import invalid
from .image_request import MAX_IMAGE_BYTES, MAX_IMAGES, MAX_MASK_BYTES

IMAGE_FIELDS = ("image", "image[]")
MASK_FIELD = "mask"
MAX_TEXT_BYTES = 1024 * 1024  # far above the 32,000-character prompt limit
_CHUNK = 256 * 1024


@dataclass
class EditUpload:
    """The parts of an edit request: text fields (str, or bytes if sent as a file), images, mask."""

    fields: dict[str, object] = field(default_factory=dict)
    images: list[bytes] = field(default_factory=list)
    mask: bytes | None = None


async def _read_capped(part: BodyPartReader, limit: int) -> bytes:
    """The part's bytes, cut at `limit`; anything beyond is read and dropped."""
    kept = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]
    return bytes(kept)


async def read_edit_form(request: web.Request) -> EditUpload:
    """Read the whole multipart body of an edit (repeated `image` / `image[]`, `mask`, text fields)."""
    upload = EditUpload()
    if request.content_type == "application/x-www-form-urlencoded":
        # Text fields only: validation then says what is missing.
        upload.fields.update((name, str(value)) for name, value in (await request.post()).items())
        return upload
    if request.content_type != "multipart/form-data":
        raise invalid(None, "The edit endpoint takes multipart/form-data.", "invalid_content_type")
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                await part.release()  # a nested multipart: not something the API takes
                raise invalid(None, "Nested multipart bodies are not supported.")
            name = part.name or ""
            if name in IMAGE_FIELDS:
                data = await _read_capped(part, MAX_IMAGE_BYTES)
                if len(upload.images) <= MAX_IMAGES:  # one more than allowed is enough to refuse
                    upload.images.append(data)
            elif name == MASK_FIELD:
                upload.mask = await _read_capped(part, MAX_MASK_BYTES)
            else:
                data = await _read_capped(part, MAX_TEXT_BYTES)
                # A value sent as a file keeps its bytes, so validation can call it the wrong type.
                upload.fields[name] = data if part.filename else data.decode("utf-8", errors="replace")
    except (ValueError, AssertionError, RuntimeError) as exc:  # what aiohttp raises for a malformed body
        raise invalid(None, f"Malformed multipart body: {exc}", "invalid_multipart") from exc
    return upload
