"""edit: `POST {base}/{endpoint}/images/edits`, multipart/form-data with the input image(s) and a mask."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batch.kind import ApiRequest, FileReader, FileRef, FormField, InputInfo, Pointer
from batch.manifest.fields import Choice, FieldIssue, type_name

from .image_api import (
    COMMON_RULES,
    EXTRA,
    INPUT_FORMATS,
    ImageKind,
    check_image_fields,
    describe_fields,
    sniff_mime,
)

PATH = "images/edits"

# The multipart field names, kept in one place: the seed shows `image` for one file; several go as the
# repeated `image[]` (the OpenAI convention), which API.md asks for. A gateway that wants the repeated
# `image` instead is told so with the task field `image_field: image` (in the task or the defaults).
IMAGE_FIELD = "image"
IMAGES_FIELD = "image[]"
MASK_FIELD = "mask"
FIELD_SETTING = "image_field"  # a setting of the request's form, never sent itself
FIELD_RULE = Choice(FIELD_SETTING, choices=(IMAGES_FIELD, IMAGE_FIELD))

MAX_IMAGES = 16
MAX_IMAGE_BYTES = 25 * 1024 * 1024
MAX_MASK_BYTES = 4 * 1024 * 1024
# a mask's pixels are read (for one of alpha 0) up to this many (the API's sizes are at most 1536x1024):
# a bigger one's would take more memory than the check is worth
MASK_PIXELS_READ = 4096 * 4096
# What a shared default (`defaults:` without a kind) or a `--set` without a kind may apply to. The output
# fields (output_format, output_compression, moderation) are not among them: the seed does not list them
# for edit, so they reach an edit only from the task itself, `defaults.edit` or `--set edit.FIELD=...`.
EDIT_FIELDS = frozenset(rule.name for rule in COMMON_RULES) | {"image", "mask", FIELD_SETTING, EXTRA}


class Edit(ImageKind):
    """A picture from a prompt and input images (and a mask): a multipart request."""

    name = "edit"
    known_fields = EDIT_FIELDS
    openai_batch_urls = ("/v1/images/edits",)

    def check(self, fields: Mapping[str, Any]) -> list[FieldIssue]:
        return check_edit_fields(fields)

    def file_refs(self, fields: Mapping[str, Any]) -> list[FileRef]:
        return edit_file_refs(fields)

    def check_inputs(
        self, fields: Mapping[str, Any], inputs: Mapping[Pointer, InputInfo]
    ) -> list[FieldIssue]:
        return check_edit_inputs(fields, inputs)

    def build_request(self, fields: Mapping[str, Any], read: FileReader) -> ApiRequest:
        return edit_request(fields, read)

    def describe(self, fields: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        return describe_fields(fields, ("image", "mask", FIELD_SETTING))

    def input_images(self, fields: Mapping[str, Any]) -> int:
        return len(_images(fields))


def _images(fields: Mapping[str, Any]) -> list[Any]:
    value = fields.get("image")
    return value if isinstance(value, list) else [value]


def check_edit_fields(fields: Mapping[str, Any]) -> list[FieldIssue]:
    """Every API rule for an edit request that can be checked without reading the files."""
    issues = check_image_fields(fields, also_known=("image", "mask", FIELD_SETTING))
    if FIELD_SETTING in fields and (message := FIELD_RULE.check(fields[FIELD_SETTING])):
        issues.append(FieldIssue(FIELD_SETTING, message, fields[FIELD_SETTING]))
    image = fields.get("image")
    if image is None:
        issues.append(FieldIssue("image", "is required: a path or a list of up to 16 paths"))
    elif isinstance(image, list):
        if not image:
            issues.append(FieldIssue("image", "must name at least one file", image))
        elif len(image) > MAX_IMAGES:
            issues.append(
                FieldIssue(
                    "image", f"names {len(image)} files; the limit is {MAX_IMAGES}", f"{len(image)} paths"
                )
            )
        for index, item in enumerate(image):
            if not isinstance(item, str) or not item:
                issues.append(FieldIssue(f"image[{index}]", f"must be a path, not {type_name(item)}", item))
    elif not isinstance(image, str) or not image:
        issues.append(
            FieldIssue("image", f"must be a path or a list of paths, not {type_name(image)}", image)
        )
    mask = fields.get("mask")
    if mask is not None and (not isinstance(mask, str) or not mask):
        issues.append(FieldIssue("mask", f"must be a path to a PNG file, not {type_name(mask)}", mask))
    return issues + _check_extra_form(fields.get(EXTRA))


def _check_extra_form(extra: Any) -> list[FieldIssue]:
    """An edit's `extra:` fields go as multipart text fields. The edit endpoint has no field of a list or
    mapping's shape, and a form has no null: such a value would go as Python's text of it (`{'a': 1}`,
    `None`), which no server reads as meant, so it is refused; the user writes the text to send."""
    if not isinstance(extra, Mapping):
        return []  # check_extra says what is wrong with it
    return [
        FieldIssue(
            f"{EXTRA}.{key}",
            f"is a field of an edit's multipart form, which takes text: a string, a number or a boolean, "
            f"not {type_name(value)} (to send JSON, write it as a string)",
            value,
        )
        for key, value in extra.items()
        if value is None or isinstance(value, Mapping | list)
    ]


def edit_file_refs(fields: Mapping[str, Any]) -> list[FileRef]:
    refs = []
    image = fields.get("image")
    if isinstance(image, str):
        refs.append(FileRef(("image",), image, "image"))
    elif isinstance(image, list):
        refs += [
            FileRef(("image", i), path, "image") for i, path in enumerate(image) if isinstance(path, str)
        ]
    mask = fields.get("mask")
    if isinstance(mask, str):
        refs.append(FileRef(("mask",), mask, "mask"))
    return refs


def check_edit_inputs(fields: Mapping[str, Any], inputs: Mapping[Pointer, InputInfo]) -> list[FieldIssue]:
    """Images are PNG/WebP/JPEG by content and under 25 MB; the mask is a PNG with alpha, under 4 MB,
    the size of the first image."""
    issues: list[FieldIssue] = []
    first = None
    image_pointers = [ptr for ptr in inputs if ptr[0] == "image"]
    for pointer in image_pointers:
        info = inputs[pointer]
        label = _label(pointer)
        if info.error:
            issues.append(FieldIssue(label, info.error, str(info.path)))
            continue
        if info.image is None or info.image.format not in INPUT_FORMATS:
            found = info.image.format if info.image else "not an image"
            issues.append(
                FieldIssue(
                    label, f"must be a PNG, WebP or JPEG file (by content); found {found}", str(info.path)
                )
            )
        elif first is None:
            first = info
        if info.size >= MAX_IMAGE_BYTES:
            issues.append(
                FieldIssue(
                    label, f"is {info.size / 2**20:.1f} MB; each image must be under 25 MB", str(info.path)
                )
            )
    mask = inputs.get(("mask",))
    if mask is not None:
        issues += _check_mask(mask, first)
    return issues


def _check_mask(mask: InputInfo, first: InputInfo | None) -> list[FieldIssue]:
    """The mask is a PNG with alpha, under 4 MB, the size of the first image."""
    issues: list[FieldIssue] = []
    if mask.error:
        issues.append(FieldIssue("mask", mask.error, str(mask.path)))
    elif mask.image is None or mask.image.format != "PNG":
        found = mask.image.format if mask.image else "not an image"
        issues.append(FieldIssue("mask", f"must be a PNG file; found {found}", str(mask.path)))
    else:
        if not mask.image.has_alpha:
            issues.append(
                FieldIssue(
                    "mask",
                    f"must have an alpha channel (mode is {mask.image.mode}); "
                    "transparent pixels mark where to edit",
                    str(mask.path),
                )
            )
        elif mask.image.width * mask.image.height <= MASK_PIXELS_READ and not _clears(
            str(mask.path), mask.digest
        ):
            issues.append(
                FieldIssue(
                    "mask",
                    "has no fully transparent pixel (alpha 0), so it marks nothing to edit: the API would "
                    "be paid for an edit that changes nothing",
                    str(mask.path),
                )
            )
        if (
            first is not None
            and first.image is not None
            and ((mask.image.width, mask.image.height) != (first.image.width, first.image.height))
        ):
            issues.append(
                FieldIssue(
                    "mask",
                    f"is {mask.image.width}x{mask.image.height} but the first image is "
                    f"{first.image.width}x{first.image.height}; they must match",
                    str(mask.path),
                )
            )
    if not mask.error and mask.size >= MAX_MASK_BYTES:
        issues.append(
            FieldIssue("mask", f"is {mask.size / 2**20:.1f} MB; the mask must be under 4 MB", str(mask.path))
        )
    return issues


@functools.lru_cache(maxsize=64)
def _clears(path: str, digest: str) -> bool:
    """Whether the PNG mask at `path` (of sha256 `digest`: a file changed is read again) has a pixel of
    alpha 0. A mask shared by a thousand edits is decoded once; True when it cannot be read here (its
    header was, and the other checks speak for it)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            alpha = image.convert("RGBA").getchannel("A") if image.mode != "RGBA" else image.getchannel("A")
            return bool(alpha.getextrema()[0] == 0)
    except Exception:  # Pillow raises many kinds on hostile bytes
        return True


def _label(pointer: Pointer) -> str:
    return "image" if len(pointer) == 1 else f"image[{pointer[1]}]"


def edit_request(fields: Mapping[str, Any], read: FileReader) -> ApiRequest:
    """Multipart: text fields as strings, then the image file(s) and the mask."""
    form: list[FormField] = []
    for key, value in fields.items():
        if key in ("image", "mask", FIELD_SETTING, EXTRA):
            continue
        form.append(FormField(key, str(value)))
    for key, value in (fields.get(EXTRA) or {}).items():
        form.append(FormField(key, value if isinstance(value, str) else _form_text(value)))
    paths = [Path(p) for p in _images(fields)]
    image_field = IMAGE_FIELD if len(paths) == 1 else str(fields.get(FIELD_SETTING, IMAGES_FIELD))
    for path in paths:
        form.append(_file_field(image_field, path, read))
    if fields.get("mask"):
        form.append(_file_field(MASK_FIELD, Path(fields["mask"]), read))
    return ApiRequest(PATH, form=form)


def _form_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _file_field(field: str, path: Path, read: FileReader) -> FormField:
    data = read(path)
    return FormField(field, data, filename=path.name, content_type=sniff_mime(data))


KIND = Edit()
