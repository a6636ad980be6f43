"""generate: `POST {base}/{endpoint}/images/generations`, a JSON body; the answer carries base64 images."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batch.kind import Answer, ApiRequest, FileReader, FileRef, InputInfo, Pointer, TokenCounts
from batch.manifest.fields import FieldIssue
from jobs.image_api import (
    COMMON_RULES,
    EXTRA,
    OUTPUT_RULES,
    check_image_fields,
    describe_fields,
    estimate_image_tokens,
    parse_image_answer,
    token_counts,
    usage_of,
)

name = "generate"
PATH = "images/generations"
known_fields = frozenset(rule.name for rule in COMMON_RULES + OUTPUT_RULES) | {EXTRA}

__all__ = [
    "build_request",
    "check",
    "check_inputs",
    "describe",
    "estimate",
    "file_refs",
    "known_fields",
    "name",
    "normalize",
    "parse_answer",
    "stream_complete",
    "token_counts",
    "usage_of",
]


def normalize(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Image fields have no shorthand."""
    return dict(fields)


def check(fields: Mapping[str, Any]) -> list[FieldIssue]:
    """Every API rule for a generate request."""
    return check_image_fields(fields)


def file_refs(fields: Mapping[str, Any]) -> list[FileRef]:
    """generate reads no files."""
    return []


def check_inputs(fields: Mapping[str, Any], inputs: Mapping[Pointer, InputInfo]) -> list[FieldIssue]:
    return []


def build_request(fields: Mapping[str, Any], read: FileReader) -> ApiRequest:
    body = {key: value for key, value in fields.items() if key != EXTRA}
    body.update(fields.get(EXTRA) or {})
    return ApiRequest(PATH, json=body)


def describe(fields: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    return describe_fields(fields, ())


def estimate(fields: Mapping[str, Any]) -> TokenCounts:
    """Tokens this request will likely use (see image_api.estimate_image_tokens)."""
    return estimate_image_tokens(fields, 0)


def parse_answer(fields: Mapping[str, Any], body: Any) -> Answer:
    return parse_image_answer(fields, body)


def stream_complete(fields: Mapping[str, Any], chunks: list[Any]) -> bool:
    """generate never streams."""
    return False
