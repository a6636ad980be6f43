"""generate: `POST {base}/{endpoint}/images/generations`, a JSON body; the answer carries base64 images."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batch.kind import ApiRequest, FileReader
from batch.manifest.fields import FieldIssue

from .image_api import COMMON_RULES, EXTRA, OUTPUT_RULES, ImageKind, check_image_fields

PATH = "images/generations"


class Generate(ImageKind):
    """A picture from a prompt. Reads no files; everything else is what the image endpoints share."""

    name = "generate"
    known_fields = frozenset(rule.name for rule in COMMON_RULES + OUTPUT_RULES) | {EXTRA}
    openai_batch_urls = ("/v1/images/generations",)

    def check(self, fields: Mapping[str, Any]) -> list[FieldIssue]:
        """Every API rule for a generate request."""
        return check_image_fields(fields)

    def build_request(self, fields: Mapping[str, Any], read: FileReader) -> ApiRequest:
        body = {key: value for key, value in fields.items() if key != EXTRA}
        body.update(fields.get(EXTRA) or {})
        return ApiRequest(PATH, json=body)


KIND = Generate()
