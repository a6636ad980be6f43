"""Validation of generate and edit requests into one `ImageRequest`, with every rule of API.md.

Pure functions over already-read data: the server reads the JSON body or the multipart parts, these decide.
Input images are recognised by their content (sniffed with Pillow), never by their file name.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, replace

from PIL import Image

from . import fields as f
from .errors import invalid, moderation_blocked

SIZES = {
    "auto": (1024, 1024),
    "1024x1024": (1024, 1024),
    "1536x1024": (1536, 1024),
    "1024x1536": (1024, 1536),
}
QUALITIES = ("auto", "high", "medium", "low")
BACKGROUNDS = ("transparent", "opaque", "auto")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
MODERATIONS = ("low", "auto")
MAX_PROMPT_CHARS = 32_000
MAX_N = 10
MAX_IMAGES = 16
MAX_IMAGE_BYTES = 25 * 1024 * 1024  # "smaller than 25MB": read as MiB, and the limit itself is refused
MAX_MASK_BYTES = 4 * 1024 * 1024
# Pillow's names for the accepted input formats (MPO is the JPEG variant many phone cameras write).
_INPUT_FORMATS = frozenset({"PNG", "WEBP", "JPEG", "MPO"})

GENERATE_FIELDS = frozenset(
    {"prompt", "model", "n", "size", "quality", "background", "output_format", "output_compression",
     "moderation", "user"}
)  # fmt: skip
EDIT_TEXT_FIELDS = GENERATE_FIELDS  # the seed omits the last three for edit; accepted when a user sends them
EDIT_FILE_FIELDS = frozenset({"image", "image[]", "mask"})


@dataclass(frozen=True)
class ImageRequest:
    """A valid generate or edit request."""

    prompt: str
    n: int
    width: int
    height: int
    quality: str
    background: str
    output_format: str
    compression: int
    moderation: str
    model: str | None
    user: str | None
    images: tuple[bytes, ...] = ()  # edit: the input files, first one edited
    input_sizes: tuple[tuple[int, int], ...] = ()  # edit: (width, height) of each input
    mask: bytes | None = None

    @property
    def transparent(self) -> bool:
        return self.background == "transparent"


def _common(body: Mapping[str, object], default_format: str) -> ImageRequest:
    prompt = f.required_str(body, "prompt")
    if not prompt.strip():
        raise invalid("prompt", "Invalid value for 'prompt': it must not be empty.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise invalid("prompt", f"Invalid value for 'prompt': at most {MAX_PROMPT_CHARS} characters allowed.")
    n = f.integer(body, "n", 1, MAX_N, 1)
    size = f.choice(body, "size", tuple(SIZES), "auto")
    quality = f.choice(body, "quality", QUALITIES, "auto")
    background = f.choice(body, "background", BACKGROUNDS, "auto")
    output_format = f.choice(body, "output_format", OUTPUT_FORMATS, default_format)
    compression = f.integer(body, "output_compression", 0, 100, 100)
    moderation = f.choice(body, "moderation", MODERATIONS, "auto")
    model = f.optional_str(body, "model")
    user = f.optional_str(body, "user")
    if background == "transparent" and output_format not in ("png", "webp"):
        raise invalid(
            "background", "Transparent background requires output_format 'png' or 'webp'.", "invalid_value"
        )
    assert n is not None and compression is not None  # both have defaults
    width, height = SIZES[size]
    return ImageRequest(
        prompt=prompt,
        n=n,
        width=width,
        height=height,
        quality=quality,
        background=background,
        output_format=output_format,
        compression=compression,
        moderation=moderation,
        model=model,
        user=user,
    )


def parse_generate(body: object) -> ImageRequest:
    """Validate a generate JSON body."""
    if not isinstance(body, dict):
        raise invalid(None, "The request body must be a JSON object.", "invalid_type")
    f.reject_unknown(body, GENERATE_FIELDS)
    request = _common(body, "png")
    if f.is_blocked(request.prompt):  # content policy last: a malformed request is a 400 of its own
        raise moderation_blocked()
    return request


def _sniff(data: bytes, param: str, allowed: frozenset[str]) -> Image.Image:
    """Open an upload by its content; 400 if Pillow does not see one of the allowed formats."""
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as exc:  # Pillow raises many types for garbage, bombs included
        raise invalid(
            param, f"Invalid image file for '{param}': not a supported image.", "invalid_image"
        ) from exc
    if image.format not in allowed:
        image.close()
        raise invalid(param, f"Invalid image file for '{param}': format {image.format} is not supported.")
    return image


def _check_images(images: list[bytes]) -> tuple[tuple[int, int], ...]:
    if not images:
        raise f.missing("image")
    if len(images) > MAX_IMAGES:
        raise invalid("image", f"Too many images: at most {MAX_IMAGES} are allowed, got {len(images)}.")
    sizes = []
    for number, data in enumerate(images):
        if len(data) >= MAX_IMAGE_BYTES:
            raise invalid("image", f"Image {number + 1} is too large: each must be smaller than 25 MB.")
        with _sniff(data, "image", _INPUT_FORMATS) as image:
            if number == 0:
                try:
                    image.load()  # the first image is the one edited: it must decode entirely
                except Exception as exc:
                    raise invalid("image", "The first image could not be decoded.", "invalid_image") from exc
            sizes.append(image.size)
    return tuple(sizes)


def _check_mask(mask: bytes, first_size: tuple[int, int]) -> None:
    if len(mask) >= MAX_MASK_BYTES:
        raise invalid("mask", "The mask is too large: it must be smaller than 4 MB.")
    with _sniff(mask, "mask", frozenset({"PNG"})) as image:
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        if not has_alpha:
            raise invalid("mask", "The mask must be a PNG with an alpha channel.")
        if image.size != first_size:
            raise invalid(
                "mask",
                f"The mask ({image.size[0]}x{image.size[1]}) must have the same dimensions as the image "
                f"({first_size[0]}x{first_size[1]}).",
            )


def parse_edit(text_fields: dict[str, object], images: list[bytes], mask: bytes | None) -> ImageRequest:
    """Validate an edit: its text fields (multipart strings) and its files. Blocking: decodes images."""
    fields = dict(text_fields)
    f.reject_unknown(fields, EDIT_TEXT_FIELDS)
    f.form_int(fields, "n")
    f.form_int(fields, "output_compression")
    request = _common(fields, "png")
    sizes = _check_images(images)
    if mask is not None:
        _check_mask(mask, sizes[0])
    if f.is_blocked(request.prompt):
        raise moderation_blocked()
    return replace(request, images=tuple(images), input_sizes=sizes, mask=mask)
