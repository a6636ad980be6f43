"""chat: `POST {base}/{endpoint}/google/chat/completions`, the OpenAI chat-completions shape (Gemini).

Fields the project does not know pass through unchanged. A manifest may write a chat as `prompt` (plus
optional `images` and `system`) instead of `messages`; `normalize` turns that into messages. An `image_url`
whose url is a local path is sent as a base64 `data:` URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pybase64

from batch.kind import (
    IMAGE_MEDIA_TYPES,
    Answer,
    ApiRequest,
    FileReader,
    FileRef,
    InputInfo,
    Pointer,
    TaskKind,
    TokenCounts,
)
from batch.manifest.fields import (
    Anything,
    Boolean,
    FieldIssue,
    IntRange,
    NumberRange,
    Rule,
    RuleSet,
    Text,
    check_rules,
    closest,
    type_name,
)
from batch.manifest.tasks import RESERVED

from .chat_answer import parse_chat_answer, read_content, stream_complete, token_counts, usage_of
from .image_api import EXTRA, INPUT_FORMATS, check_extra, sniff_mime

PATH = "google/chat/completions"

ROLES = ("system", "user", "assistant", "tool", "function")
DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,")
# a URL's scheme: two letters at least, so that a Windows path (C://photos) stays a path
URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")
SHORTHAND = ("prompt", "images", "system")
_SHORTHAND_KEYS = frozenset(SHORTHAND)

RULES: tuple[Rule, ...] = RuleSet(
    (
        Anything("messages", required=True),
        Text("model", required=True, non_empty=True),
        IntRange("max_tokens", low=1),
        IntRange("max_completion_tokens", low=1),
        NumberRange("temperature", low=0, high=2),
        NumberRange("top_p", low=0, high=1),
        IntRange("n", low=1),
        Boolean("stream"),
        NumberRange("presence_penalty", low=-2, high=2),
        NumberRange("frequency_penalty", low=-2, high=2),
        IntRange("seed"),
    )
)

# Chat passes unknown fields through; these are the ones a shared default or --set may apply to.
CHAT_FIELDS = (
    frozenset(rule.name for rule in RULES)
    | set(SHORTHAND)
    | {
        "stop",
        "tools",
        "tool_choice",
        "extra_body",
        "stream_options",
        "user",
        "response_format",
        "logprobs",
        "top_logprobs",
        "functions",
        "function_call",
        "modalities",
        "reasoning_effort",
        EXTRA,
    }
)

# Chat-completions fields this tool does not check but knows by name, so that a field close to one of
# them (or to a checked one) is taken for a typo: `temprature` would otherwise be sent, and ignored.
OPENAI_ONLY = frozenset(
    {
        "audio",
        "logit_bias",
        "metadata",
        "parallel_tool_calls",
        "prediction",
        "prompt_cache_key",
        "safety_identifier",
        "service_tier",
        "store",
        "verbosity",
        "web_search_options",
    }
)
KNOWN_CHAT_FIELDS = CHAT_FIELDS | OPENAI_ONLY  # a name close to one of them, but none, is a typo
# and so is one close to a task's own keys (`endpiont`, `metaa`), which would be sent in the body
TYPO_TARGETS = KNOWN_CHAT_FIELDS | frozenset(RESERVED)
RULE_NAMES = frozenset(rule.name for rule in RULES)
TYPO_CUTOFF = 0.8
# what a message or a part is checked to be: a dict tried first, as JSON and YAML give them (a dict's
# isinstance with the Mapping ABC alone costs about 1,000 instructions more, met for each message of each
# task in each walk)
MAPPING = (dict, Mapping)
UNKNOWN_HINT = "to send it as it is, put it under extra: or pass --allow-unknown"


def normalize_chat(fields: Mapping[str, Any]) -> dict[str, Any]:
    """`prompt` / `images` / `system` -> `messages`, when the fields have the right types. Otherwise the
    fields come back unchanged and `check` says what is wrong."""
    out = dict(fields)
    if "messages" in out or not isinstance(out.get("prompt"), str):
        return out
    images = out.get("images", [])
    if isinstance(images, str):
        images = [images]
    system = out.get("system")
    if not isinstance(images, list) or (images and not all(isinstance(i, str) for i in images)):
        return out
    if system is not None and not isinstance(system, str):
        return out
    prompt = out.pop("prompt")
    out.pop("images", None)
    out.pop("system", None)
    content: str | list[dict[str, Any]] = prompt
    if images:
        content = [{"type": "text", "text": prompt}]
        content += [{"type": "image_url", "image_url": {"url": path}} for path in images]
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": content})
    out["messages"] = messages
    return out


def _text_or_texts(value: Any) -> bool:
    """A string, or a list of strings."""
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def check_chat(fields: Mapping[str, Any]) -> list[FieldIssue]:
    """The known fields' types and ranges, and the shape of every message; unknown fields pass."""
    issues = check_rules(fields, RULES, allow_unknown=True)
    if "messages" in fields and not _SHORTHAND_KEYS.isdisjoint(fields):
        issues.append(
            FieldIssue(
                "prompt",
                "give either messages or prompt/images/system, not both",
                sorted(k for k in SHORTHAND if k in fields),
            )
        )
    elif "messages" not in fields and "prompt" in fields:
        # normalize() left the shorthand alone, so one of its parts has the wrong type.
        for key, want in (("prompt", str), ("system", str)):
            if key in fields and not isinstance(fields[key], want):
                issues.append(FieldIssue(key, f"must be a string, not {type_name(fields[key])}", fields[key]))
        images = fields.get("images")
        if images is not None and not _text_or_texts(images):
            issues.append(FieldIssue("images", "must be a path or a list of paths", images))
        issues = [issue for issue in issues if issue.field != "messages"]
    messages = fields.get("messages")
    if messages is not None:
        issues += _check_messages(messages)
    stop = fields.get("stop")
    if stop is not None and not _text_or_texts(stop):
        issues.append(FieldIssue("stop", "must be a string or a list of strings", stop))
    issues += _check_extra_body(fields.get("extra_body"))
    return issues + check_extra(fields, RULE_NAMES) + _typos(fields)


def _typos(fields: Mapping[str, Any]) -> list[FieldIssue]:
    """Unknown fields pass (the API has more than this tool checks), but not one a letter or two away
    from a known field: that is a typo, and the API would ignore it without a word."""
    known = KNOWN_CHAT_FIELDS
    issues = []
    for name in fields:
        if name in known:
            continue
        near = closest(str(name), TYPO_TARGETS, TYPO_CUTOFF)
        if near is not None:
            message = f"is not a chat-completions field; did you mean {near!r}? ({UNKNOWN_HINT})"
            issues.append(FieldIssue(name, message, fields[name], guess=True))
    return issues


def _check_extra_body(extra_body: Any) -> list[FieldIssue]:
    """`extra_body` is a literal key of the JSON body (the seed's `extra_body: {google: ...}`). An SDK user
    who writes `extra_body: {extra_body: ...}` has nested it once too often: Google would ignore it."""
    if extra_body is None:
        return []
    if not isinstance(extra_body, Mapping):
        return [FieldIssue("extra_body", f"must be a mapping, not {type_name(extra_body)}", extra_body)]
    if "extra_body" in extra_body:
        return [
            FieldIssue(
                "extra_body.extra_body",
                "nested once too often; write extra_body: {google: ...}",
                extra_body["extra_body"],
            )
        ]
    return []


def _check_messages(messages: Any) -> list[FieldIssue]:
    if not isinstance(messages, list) or not messages:
        return [FieldIssue("messages", "must be a non-empty list of messages", messages)]
    issues = []
    for i, message in enumerate(messages):
        if not isinstance(message, MAPPING):
            issues.append(
                FieldIssue(
                    f"messages[{i}]",
                    f"must be a mapping with role and content, not {type_name(message)}",
                    message,
                )
            )
            continue
        role = message.get("role")
        if role not in ROLES:
            issues.append(FieldIssue(f"messages[{i}].role", "must be one of " + ", ".join(ROLES), role))
        content = message.get("content")
        if content is None and role in ("assistant", "function", "tool"):
            continue  # e.g. an assistant turn that only carries tool_calls
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            issues.append(
                FieldIssue(f"messages[{i}].content", "must be a string or a list of parts", content)
            )
            continue
        for j, part in enumerate(content):
            issues += _check_part(part, f"messages[{i}].content[{j}]")
    return issues


def _check_part(part: Any, where: str) -> list[FieldIssue]:
    if not isinstance(part, MAPPING):
        return [FieldIssue(where, f"must be a mapping with a type, not {type_name(part)}", part)]
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            return [FieldIssue(f"{where}.text", "must be a string", part.get("text"))]
    elif kind == "image_url":
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, Mapping) else None
        if not isinstance(url, str) or not url:
            return [
                FieldIssue(f"{where}.image_url.url", "must be a data: URL, a gs:// URI or a local path", url)
            ]
        if message := _unsendable_url(url):
            return [FieldIssue(f"{where}.image_url.url", message, url)]
    elif not isinstance(kind, str):
        return [FieldIssue(f"{where}.type", "must be a string such as text or image_url", kind)]
    return []


def _unsendable_url(url: str) -> str | None:
    """Why the API would refuse this image url, or None. It takes a `data:image/...;base64,` URL or a
    Cloud Storage URI (the seed, API.md), and this tool inlines a local path: an http(s) link (or any other
    scheme) is answered 400, which a run would meet only after validation said the manifest was fine."""
    if url.startswith("data:"):
        if DATA_URL.match(url) is None:
            return "a data: URL here must be data:image/<type>;base64,... (the API takes no other)"
        return None
    scheme = URL_SCHEME.match(url)
    if scheme is None or scheme[1].lower() == "gs":
        return None
    remedy = (
        "write it as a plain local path (sent inline)"
        if scheme[1].lower() == "file"
        else "download it and give its local path (sent inline), or put it in Cloud Storage"
    )
    return (
        f"the API takes no {scheme[1]}:// link to an image, only a data:image/...;base64, URL or a "
        f"gs:// URI: {remedy}"
    )


def _image_parts(fields: Mapping[str, Any]) -> list[tuple[Pointer, str]]:
    found: list[tuple[Pointer, str]] = []
    messages = fields.get("messages")
    if not isinstance(messages, list):
        return found
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, MAPPING) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, MAPPING) and part.get("type") == "image_url":
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, Mapping) else None
                if isinstance(url, str) and url:
                    found.append((("messages", i, "content", j, "image_url", "url"), url))
    return found


def _is_local(url: str) -> bool:
    """Whether an image url is a local path, to be read and inlined: not a data: URL, nor a URL of any
    scheme (gs://, and those check refuses)."""
    return not url.startswith("data:") and URL_SCHEME.match(url) is None


def chat_file_refs(fields: Mapping[str, Any]) -> list[FileRef]:
    """Every image_url that is a local path."""
    return [FileRef(pointer, url, "chat image") for pointer, url in _image_parts(fields) if _is_local(url)]


def check_chat_inputs(fields: Mapping[str, Any], inputs: Mapping[Pointer, InputInfo]) -> list[FieldIssue]:
    """A local chat image must exist and be a PNG, WebP or JPEG by content: it is sent as a data: URL
    of its type, and one of another (a BMP, a TIFF) would go as application/octet-stream, refused."""
    issues = []
    for pointer, info in inputs.items():
        label = _pointer_label(pointer)
        if info.error:
            issues.append(FieldIssue(label, info.error, str(info.path)))
        elif info.image is None:
            issues.append(FieldIssue(label, "is not an image file", str(info.path)))
        elif info.image.format not in INPUT_FORMATS:
            message = f"must be a PNG, WebP or JPEG file (by content); found {info.image.format}"
            issues.append(FieldIssue(label, message, str(info.path)))
    return issues


def _pointer_label(pointer: Pointer) -> str:
    text = ""
    for part in pointer:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def chat_request(fields: Mapping[str, Any], read: FileReader) -> ApiRequest:
    """The JSON body, with local image paths inlined as data: URLs, and `extra:`'s fields as they are. A
    streamed chat asks for usage."""
    body = {key: value for key, value in fields.items() if key != EXTRA}
    body.update(fields.get(EXTRA) or {})
    local = [(pointer, url) for pointer, url in _image_parts(fields) if _is_local(url)]
    if local:
        body["messages"] = messages = [dict(m) for m in fields["messages"]]
        for pointer, path in local:
            i, j = int(pointer[1]), int(pointer[3])
            content = messages[i]["content"] = list(messages[i]["content"])
            data = read(Path(path))
            url = f"data:{sniff_mime(data)};base64,{pybase64.b64encode(data).decode('ascii')}"
            content[j] = {**content[j], "image_url": {**content[j]["image_url"], "url": url}}
    stream = body.get("stream") is True
    if stream and "stream_options" not in body:
        body["stream_options"] = {"include_usage": True}
    return ApiRequest(PATH, json=body, stream=stream)


def describe_chat(fields: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The last user message's text (the question), and the plain parameters (temperature, model...)."""
    prompt = ""
    for message in fields.get("messages") or []:
        if isinstance(message, MAPPING) and message.get("role") == "user":
            content = message.get("content")
            text = read_content(content)[0] if isinstance(content, list) else content
            prompt = text if isinstance(text, str) else prompt
    params = {
        key: value
        for key, value in fields.items()
        if key != "messages" and isinstance(value, str | int | float | bool)
    }
    return prompt, params


IMAGE_TOKENS = 258  # Gemini counts an input image as 258 tokens
DEFAULT_COMPLETION = 500  # completion tokens assumed when max_tokens is not set


def estimate_chat(fields: Mapping[str, Any]) -> TokenCounts:
    """Tokens this request will likely use: message text at 4 characters a token, 258 per image, and
    max_tokens (or 500) for each of `n` completions."""
    chars = images = 0
    for message in fields.get("messages") or []:
        content = message.get("content") if isinstance(message, MAPPING) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, MAPPING):
                    chars += len(str(part.get("text", ""))) if part.get("type") == "text" else 0
                    images += part.get("type") == "image_url"
    limit = fields.get("max_completion_tokens") or fields.get("max_tokens") or DEFAULT_COMPLETION
    n = fields.get("n", 1) if isinstance(fields.get("n", 1), int) else 1
    tokens_in = -(-chars // 4) + IMAGE_TOKENS * images
    tokens_out = int(limit) * n
    return TokenCounts(tokens_in, tokens_out, tokens_in + tokens_out, IMAGE_TOKENS * images)


class Chat(TaskKind):
    """A chat completion (Gemini's OpenAI-compatible layer): JSON, streamed or not, with local images
    inlined; answers of text, reasoning, tool calls and images."""

    name = "chat"
    known_fields = CHAT_FIELDS
    openai_batch_urls = ("/v1/chat/completions",)
    prompt_fields = ("prompt", "messages")
    output_media_types = IMAGE_MEDIA_TYPES
    openai_answer_object = "chat.completion"

    def normalize(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        return normalize_chat(fields)

    def check(self, fields: Mapping[str, Any]) -> list[FieldIssue]:
        return check_chat(fields)

    def file_refs(self, fields: Mapping[str, Any]) -> list[FileRef]:
        return chat_file_refs(fields)

    def check_inputs(
        self, fields: Mapping[str, Any], inputs: Mapping[Pointer, InputInfo]
    ) -> list[FieldIssue]:
        return check_chat_inputs(fields, inputs)

    def build_request(self, fields: Mapping[str, Any], read: FileReader) -> ApiRequest:
        return chat_request(fields, read)

    def describe(self, fields: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        return describe_chat(fields)

    def estimate(self, fields: Mapping[str, Any]) -> TokenCounts:
        return estimate_chat(fields)

    def usage_of(self, body: Any) -> Mapping[str, Any] | None:
        return usage_of(body)

    def token_counts(self, usage: Mapping[str, Any]) -> TokenCounts:
        return token_counts(usage)

    def parse_answer(self, fields: Mapping[str, Any], body: Any) -> Answer:
        return parse_chat_answer(fields, body)

    def stream_complete(self, fields: Mapping[str, Any], chunks: list[Any]) -> bool:
        return stream_complete(fields, chunks)


KIND = Chat()
