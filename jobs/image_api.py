"""What the two image endpoints (generate and edit) share: field rules, answer parsing, usage."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from batch.errors import BrokenAnswerError
from batch.kind import (
    CHARS_PER_TOKEN,
    IMAGE_MEDIA_TYPES,
    Answer,
    EncodedImage,
    TaskKind,
    TokenCounts,
    count_of,
    usage_counts,
    usage_in,
)
from batch.manifest.fields import Choice, FieldIssue, IntRange, Rule, RuleSet, Text, check_rules

PROMPT_MAX = 32_000
SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")
QUALITIES = ("auto", "high", "medium", "low")
BACKGROUNDS = ("transparent", "opaque", "auto")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
MODERATIONS = ("low", "auto")
DEFAULT_COMPRESSION = 100

COMMON_RULES: tuple[Rule, ...] = (
    Text("prompt", required=True, max_len=PROMPT_MAX, non_empty=True),
    Text("model"),
    IntRange("n", low=1, high=10),
    Choice("size", choices=SIZES),
    Choice("quality", choices=QUALITIES),
    Choice("background", choices=BACKGROUNDS),
    Text("user"),
)
OUTPUT_RULES: tuple[Rule, ...] = (
    Choice("output_format", choices=OUTPUT_FORMATS),
    IntRange("output_compression", low=0, high=100),
    Choice("moderation", choices=MODERATIONS),
)
IMAGE_RULES = RuleSet(COMMON_RULES + OUTPUT_RULES)  # checked together for both image kinds
# `extra` passes fields this project does not know straight into the request body.
EXTRA = "extra"
EXTRA_HINT = "put extra API fields under 'extra' to send them anyway"


def check_extra(fields: Mapping[str, Any], known: Iterable[str] | None = None) -> list[FieldIssue]:
    """`extra` must be a mapping whose keys do not shadow checked fields (`known`; default: the image
    endpoints')."""
    extra = fields.get(EXTRA)
    if extra is None:
        return []
    if not isinstance(extra, Mapping):
        return [FieldIssue(EXTRA, "must be a mapping of extra API fields", extra)]
    known = set(known) if known is not None else {rule.name for rule in COMMON_RULES + OUTPUT_RULES}
    return [
        FieldIssue(f"{EXTRA}.{key}", "is a checked field; set it directly, not under extra", value)
        for key, value in extra.items()
        if key in known
    ]


def check_image_fields(fields: Mapping[str, Any], also_known: tuple[str, ...] = ()) -> list[FieldIssue]:
    """Every rule both image endpoints share; cross-field rules only over fields that passed their own."""
    issues = check_rules(fields, IMAGE_RULES, also_known=(EXTRA, *also_known), hint=EXTRA_HINT)
    flagged = {issue.field for issue in issues}
    cross = [issue for issue in check_output_options(fields) if issue.field not in flagged]
    return issues + check_extra(fields) + cross


def check_output_options(fields: Mapping[str, Any]) -> list[FieldIssue]:
    """Cross-field rules: transparency needs png or webp; compression means nothing for png."""
    issues: list[FieldIssue] = []
    fmt = fields.get("output_format", "png")
    if fields.get("background") == "transparent" and fmt == "jpeg":
        issues.append(
            FieldIssue("background", "transparent needs output_format png or webp, not jpeg", "transparent")
        )
    compression = fields.get("output_compression")
    # The seed's own example sends output_compression 100 with png, so only a real setting is an error.
    if fmt == "png" and compression is not None and compression != DEFAULT_COMPRESSION:
        issues.append(
            FieldIssue(
                "output_compression", "only applies to jpeg and webp; output_format is png", compression
            )
        )
    return issues


# Output tokens per image, by size and quality (gpt-image-1's published figures); `auto` counts as medium
# and as the square size.
OUTPUT_TOKENS = {
    ("1024x1024", "low"): 272,
    ("1024x1024", "medium"): 1056,
    ("1024x1024", "high"): 4160,
    ("1024x1536", "low"): 408,
    ("1024x1536", "medium"): 1584,
    ("1024x1536", "high"): 6240,
    ("1536x1024", "low"): 408,
    ("1536x1024", "medium"): 1584,
    ("1536x1024", "high"): 6240,
}
INPUT_IMAGE_TOKENS = 388  # an input image, roughly, at the API's usual fidelity


def estimate_image_tokens(fields: Mapping[str, Any], input_images: int = 0) -> TokenCounts:
    """Tokens a request will use, before it is sent: text at 4 characters a token, input images at about
    388 tokens each, output by size and quality for each of `n` images."""
    size = fields.get("size", "auto")
    quality = fields.get("quality", "auto")
    per_image = OUTPUT_TOKENS.get(
        ("1024x1024" if size == "auto" else size, "medium" if quality == "auto" else quality), 1056
    )
    n = fields.get("n", 1) if isinstance(fields.get("n", 1), int) else 1
    text = -(-len(str(fields.get("prompt", ""))) // CHARS_PER_TOKEN)
    images = INPUT_IMAGE_TOKENS * input_images
    tokens_in = text + images
    return TokenCounts(tokens_in, per_image * n, tokens_in + per_image * n, images)


def describe_fields(fields: Mapping[str, Any], skip: tuple[str, ...] = ()) -> tuple[str, dict[str, Any]]:
    """The prompt, and the plain (number, text, boolean) parameters other than those in `skip`."""
    params = {
        key: value
        for key, value in fields.items()
        if key not in ("prompt", *skip) and isinstance(value, str | int | float | bool)
    }
    return str(fields.get("prompt", "")), params


def token_counts(usage: Mapping[str, Any]) -> TokenCounts:
    """input_tokens / output_tokens / total_tokens, as the image endpoints report them, with the image
    part of the input from input_tokens_details.image_tokens."""
    found = usage_counts(
        usage, "input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details"
    )
    details = usage.get("input_tokens_details")
    images = count_of(details.get("image_tokens")) if isinstance(details, Mapping) else 0
    return replace(found, image_input=min(images, found.input - found.cached_input))


# OpenAI's image stream (`stream: true`): an event per image finished, `image_generation.completed` (or
# `image_edit.completed`), {"type", "b64_json", ..., "usage"}; partial images come as other types
COMPLETED_EVENTS = ("image_generation.completed", "image_edit.completed")


def completed_images(events: list[Any]) -> list[Mapping[str, Any]]:
    """The events of an image stream that each carry a finished image."""
    return [event for event in events if isinstance(event, Mapping) and event.get("type") in COMPLETED_EVENTS]


def image_stream_body(events: list[Any]) -> dict[str, Any]:
    """The answer an image stream stands for: its finished images as `data`, its last usage."""
    body: dict[str, Any] = {
        "data": [{"b64_json": event.get("b64_json")} for event in completed_images(events)]
    }
    usage = stream_usage(events)
    if usage is not None:
        body["usage"] = usage
    return body


def stream_usage(events: list[Any]) -> Mapping[str, Any] | None:
    """The last usage among the events of a stream."""
    found = [
        event["usage"]
        for event in events
        if isinstance(event, Mapping) and isinstance(event.get("usage"), Mapping)
    ]
    return found[-1] if found else None


def parse_image_answer(fields: Mapping[str, Any], body: Any) -> Answer:
    """The images of an image answer: `data[i].b64_json` (plain base64, with line breaks, or written as a
    `data:` URL) or `data[i].url` (downloaded by the engine). Fewer than `n` is a success that says how
    many are missing; none is a failure. Decoding and checking happen later, off the event loop. An image
    stream (sent as events though not asked for) is read as the answer it stands for."""
    if isinstance(body, list):
        body = image_stream_body(body)
    usage = usage_in(body)
    if not isinstance(body, Mapping):
        raise BrokenAnswerError("answer is not a JSON object", usage=usage, error_type="not_an_answer")
    data = body.get("data")
    if not isinstance(data, list) or not data:
        raise BrokenAnswerError(
            "answer has no images ('data' is missing or empty)", usage=usage, error_type="no_images"
        )
    images = []
    revised = []
    for index, item in enumerate(data):
        image = encoded_image(item.get("b64_json"), item.get("url")) if isinstance(item, Mapping) else None
        if image is None:
            raise BrokenAnswerError(
                f"data[{index}] has neither b64_json nor a url", usage=usage, error_type="no_images"
            )
        images.append(image)
        text = item.get("revised_prompt")
        revised.append(text if isinstance(text, str) else None)
    asked = fields.get("n", 1)
    asked = asked if isinstance(asked, int) and not isinstance(asked, bool) else 1
    extra = {"revised_prompts": revised} if any(revised) else {}
    return Answer(images=tuple(images), extra=extra, images_missing=max(0, asked - len(images)))


def encoded_image(b64: Any, url: Any) -> EncodedImage | None:
    """An image from base64 text (bare, or a `data:image/...;base64,` URL) or from a link. A link that is
    not http(s) (a Cloud Storage `gs://` URI, say) is a link all the same: its download fails, and the
    image is counted missing with why, the answer kept, rather than dropped without a word."""
    if isinstance(b64, str) and b64:
        if b64.startswith("data:"):
            return data_url_image(b64)
        return EncodedImage(b64)
    if isinstance(url, str) and url.startswith("data:"):
        return data_url_image(url)
    if isinstance(url, str) and url.strip():
        return EncodedImage("", url=url)
    return None


def data_url_image(url: str) -> EncodedImage | None:
    """`data:image/png;base64,....` as an EncodedImage; None if it is no base64 data URL."""
    head, comma, payload = url.partition(",")
    if not comma or ";base64" not in head:
        return None
    return EncodedImage(payload, mime=head[5:].split(";")[0] or None)


# What an input image (an edit's, a chat's local one) may be, by content: Pillow's names; MPO is the JPEG
# many phone cameras write (a JPEG with more pictures after the first), sent as image/jpeg.
INPUT_FORMATS = frozenset({"PNG", "WEBP", "JPEG", "MPO"})


def sniff_mime(data: bytes) -> str:
    """The MIME type of image bytes by their magic number (for multipart parts and data: URLs)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return "application/octet-stream"


class ImageKind(TaskKind):
    """What the image endpoints share: their usage names and answers of images. A subclass says its
    name, fields, URL and how to build its request."""

    output_media_types = IMAGE_MEDIA_TYPES

    def estimate(self, fields: Mapping[str, Any]) -> TokenCounts:
        """Tokens this request will likely use (see estimate_image_tokens)."""
        return estimate_image_tokens(fields, self.input_images(fields))

    def input_images(self, fields: Mapping[str, Any]) -> int:
        """How many images the request sends (for the estimate)."""
        return 0

    def token_counts(self, usage: Mapping[str, Any]) -> TokenCounts:
        return token_counts(usage)

    def usage_of(self, body: Any) -> Mapping[str, Any] | None:
        return stream_usage(body) if isinstance(body, list) else usage_in(body)

    def parse_answer(self, fields: Mapping[str, Any], body: Any) -> Answer:
        return parse_image_answer(fields, body)

    def stream_complete(self, fields: Mapping[str, Any], chunks: list[Any]) -> bool:
        """An image stream read to its end holds an answer once an image in it is finished: fewer than
        `n` is an answer with images missing, as in JSON."""
        return bool(completed_images(chunks))
