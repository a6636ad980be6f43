"""chat: `POST {base}/{endpoint}/google/chat/completions`, the OpenAI chat-completions shape (Gemini).

Fields the project does not know pass through unchanged. A manifest may write a chat as `prompt` (plus
optional `images` and `system`) instead of `messages`; `normalize` turns that into messages. An `image_url`
whose url is a local path is sent as a base64 `data:` URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pybase64

from batch.errors import BrokenAnswerError, RefusalError
from batch.kind import (
    Answer,
    ApiRequest,
    EncodedImage,
    FileReader,
    FileRef,
    InputInfo,
    Pointer,
    TokenCounts,
)
from batch.manifest.fields import (
    Anything,
    Boolean,
    FieldIssue,
    IntRange,
    NumberRange,
    Rule,
    Text,
    check_rules,
    type_name,
)
from jobs.image_api import counts, encoded_image, sniff_mime

name = "chat"
PATH = "google/chat/completions"

ROLES = ("system", "user", "assistant", "tool", "function")
REMOTE_PREFIXES = ("data:", "gs://", "http://", "https://")
SHORTHAND = ("prompt", "images", "system")

RULES: tuple[Rule, ...] = (
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

# Chat passes unknown fields through; these are the ones a shared default or --set may apply to.
known_fields = (
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
    }
)

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
    """`prompt` / `images` / `system` -> `messages`, when the fields have the right types. Otherwise the
    fields come back unchanged and `check` says what is wrong."""
    out = dict(fields)
    if "messages" in out or not isinstance(out.get("prompt"), str):
        return out
    images = out.get("images", [])
    if isinstance(images, str):
        images = [images]
    system = out.get("system")
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
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


def check(fields: Mapping[str, Any]) -> list[FieldIssue]:
    """The known fields' types and ranges, and the shape of every message; unknown fields pass."""
    issues = check_rules(fields, RULES, allow_unknown=True)
    if "messages" in fields and any(key in fields for key in SHORTHAND):
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
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            issues.append(
                FieldIssue(
                    where, f"must be a mapping with role and content, not {type_name(message)}", message
                )
            )
            continue
        role = message.get("role")
        if role not in ROLES:
            issues.append(FieldIssue(f"{where}.role", "must be one of " + ", ".join(ROLES), role))
        content = message.get("content")
        if content is None and role in ("assistant", "function", "tool"):
            continue  # e.g. an assistant turn that only carries tool_calls
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            issues.append(FieldIssue(f"{where}.content", "must be a string or a list of parts", content))
            continue
        for j, part in enumerate(content):
            issues += _check_part(part, f"{where}.content[{j}]")
    return issues


def _check_part(part: Any, where: str) -> list[FieldIssue]:
    if not isinstance(part, Mapping):
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
    elif not isinstance(kind, str):
        return [FieldIssue(f"{where}.type", "must be a string such as text or image_url", kind)]
    return []


def _image_parts(fields: Mapping[str, Any]) -> list[tuple[Pointer, str]]:
    found: list[tuple[Pointer, str]] = []
    messages = fields.get("messages")
    if not isinstance(messages, list):
        return found
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, Mapping) and part.get("type") == "image_url":
                image_url = part.get("image_url")
                url = image_url.get("url") if isinstance(image_url, Mapping) else None
                if isinstance(url, str) and url:
                    found.append((("messages", i, "content", j, "image_url", "url"), url))
    return found


def file_refs(fields: Mapping[str, Any]) -> list[FileRef]:
    """Every image_url that is a local path (not data:, gs:// or http(s)://)."""
    return [
        FileRef(pointer, url, "chat image")
        for pointer, url in _image_parts(fields)
        if not url.startswith(REMOTE_PREFIXES)
    ]


def check_inputs(fields: Mapping[str, Any], inputs: Mapping[Pointer, InputInfo]) -> list[FieldIssue]:
    """A local chat image must exist and be an image."""
    issues = []
    for pointer, info in inputs.items():
        label = _pointer_label(pointer)
        if info.error:
            issues.append(FieldIssue(label, info.error, str(info.path)))
        elif info.image is None:
            issues.append(FieldIssue(label, "is not an image file", str(info.path)))
    return issues


def _pointer_label(pointer: Pointer) -> str:
    text = ""
    for part in pointer:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def build_request(fields: Mapping[str, Any], read: FileReader) -> ApiRequest:
    """The JSON body, with local image paths inlined as data: URLs. A streamed chat asks for usage."""
    body = dict(fields)
    local = [(pointer, url) for pointer, url in _image_parts(fields) if not url.startswith(REMOTE_PREFIXES)]
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


def usage_of(body: Any) -> Mapping[str, Any] | None:
    """The usage of a JSON answer, or the last usage among the chunks of a stream."""
    if isinstance(body, list):
        found = [
            chunk["usage"]
            for chunk in body
            if isinstance(chunk, Mapping) and isinstance(chunk.get("usage"), Mapping)
        ]
        return found[-1] if found else None
    usage = body.get("usage") if isinstance(body, Mapping) else None
    return usage if isinstance(usage, Mapping) else None


def describe(fields: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The last user message's text (the question), and the plain parameters (temperature, model...)."""
    prompt = ""
    for message in fields.get("messages") or []:
        if isinstance(message, Mapping) and message.get("role") == "user":
            content = message.get("content")
            text = _content(content)[0] if isinstance(content, list) else content
            prompt = text if isinstance(text, str) else prompt
    params = {
        key: value
        for key, value in fields.items()
        if key != "messages" and isinstance(value, str | int | float | bool)
    }
    return prompt, params


IMAGE_TOKENS = 258  # Gemini counts an input image as 258 tokens
DEFAULT_COMPLETION = 500  # completion tokens assumed when max_tokens is not set


def estimate(fields: Mapping[str, Any]) -> TokenCounts:
    """Tokens this request will likely use: message text at 4 characters a token, 258 per image, and
    max_tokens (or 500) for each of `n` completions."""
    chars = images = 0
    for message in fields.get("messages") or []:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping):
                    chars += len(str(part.get("text", ""))) if part.get("type") == "text" else 0
                    images += part.get("type") == "image_url"
    limit = fields.get("max_completion_tokens") or fields.get("max_tokens") or DEFAULT_COMPLETION
    n = fields.get("n", 1) if isinstance(fields.get("n", 1), int) else 1
    tokens_in = -(-chars // 4) + IMAGE_TOKENS * images
    tokens_out = int(limit) * n
    return TokenCounts(tokens_in, tokens_out, tokens_in + tokens_out, IMAGE_TOKENS * images)


def token_counts(usage: Mapping[str, Any]) -> TokenCounts:
    """prompt_tokens / completion_tokens / total_tokens, as chat reports them; thinking counted only in
    the total is output, cached prompt tokens and reasoning tokens are kept apart."""
    return counts(usage, "prompt_tokens", "completion_tokens")


@dataclass
class _Choice:
    """One choice of an answer, read."""

    text: str | None = None
    reasoning: str | None = None
    images: list[EncodedImage] = field(default_factory=list)
    tool_calls: list[Any] = field(default_factory=list)
    finish_reason: Any = None


def parse_answer(fields: Mapping[str, Any], body: Any) -> Answer:
    """The text, reasoning, tool calls and images of every choice, from a JSON answer or the chunks of a
    stream. Reasoning (`reasoning_content`, Gemini's thought parts) is kept apart from the text."""
    usage = usage_of(body)
    if isinstance(body, list):
        body = assemble_stream(body)
    choices = body.get("choices") if isinstance(body, Mapping) else None
    if not isinstance(choices, list) or not choices:
        raise BrokenAnswerError("answer has no 'choices' list", usage=usage, error_type="no_choices")
    read = []
    for index, choice in enumerate(choices):
        message = choice.get("message") if isinstance(choice, Mapping) else None
        if not isinstance(message, Mapping):
            raise BrokenAnswerError(f"choices[{index}] has no message", usage=usage, error_type="no_choices")
        read.append(_read_choice(message, choice.get("finish_reason")))
    if not any(c.text is not None or c.images or c.tool_calls for c in read):
        _no_content(fields, read, usage)
    first = read[0]
    extra: dict[str, Any] = {"finish_reason": first.finish_reason}
    if first.reasoning is not None:
        extra["reasoning"] = first.reasoning
    if first.tool_calls:
        extra["tool_calls"] = first.tool_calls
    if len(read) > 1:
        extra["texts"] = [c.text for c in read]
        extra["finish_reasons"] = [c.finish_reason for c in read]
        if any(c.reasoning is not None for c in read):
            extra["reasonings"] = [c.reasoning for c in read]
        if any(c.tool_calls for c in read):
            extra["tool_calls_per_choice"] = [c.tool_calls for c in read]
    images = tuple(image for c in read for image in c.images)
    return Answer(images=images, text=first.text, extra=extra)


def _no_content(fields: Mapping[str, Any], read: list[_Choice], usage: Mapping[str, Any] | None) -> None:
    """Raise the reason an answer holds neither text, nor images, nor tool calls."""
    finish = [c.finish_reason for c in read]
    if "content_filter" in finish:
        raise RefusalError("the model refused to answer (finish_reason content_filter)")
    if "length" in finish:
        limit = fields.get("max_completion_tokens") or fields.get("max_tokens")
        said = f" (max_tokens {limit})" if limit else ""
        thinking = token_counts(usage).reasoning if usage is not None else 0
        by = f": {thinking:,} tokens of thinking used it up" if thinking else ""
        raise BrokenAnswerError(
            f"the answer reached the token limit{said} before any text{by}; raise max_tokens",
            usage=usage,
            error_type="token_limit",
        )
    raise BrokenAnswerError("answer has no content", usage=usage, error_type="no_content")


def _read_choice(message: Mapping[str, Any], finish_reason: Any) -> _Choice:
    choice = _Choice(finish_reason=finish_reason)
    choice.text, choice.images, thoughts = _content(message.get("content"))
    reasoning = [
        value
        for value in (message.get("reasoning_content"), message.get("reasoning"))
        if isinstance(value, str) and value
    ]
    reasoning += thoughts
    if reasoning:
        choice.reasoning = "\n".join(reasoning)
    listed = message.get("images")
    for item in listed if isinstance(listed, list) else []:
        image = _image_of_part(item)
        if image is not None:
            choice.images.append(image)
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        choice.tool_calls = list(calls)
    return choice


def _is_thought(part: Mapping[str, Any]) -> bool:
    """Gemini marks reasoning parts `thought: true`, under `extra_part.google` (or `extra_content`)."""
    if part.get("thought") is True:
        return True
    for key in ("extra_part", "extra_content"):
        extra = part.get(key)
        google = extra.get("google") if isinstance(extra, Mapping) else None
        if isinstance(google, Mapping) and google.get("thought") is True:
            return True
    return False


def _image_of_part(part: Any) -> EncodedImage | None:
    """An image from `{"type": "image_url", "image_url": {"url": ...}}` (or `{"url": ...}`)."""
    if not isinstance(part, Mapping):
        return None
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
    if not isinstance(url, str):
        url = part.get("url")
    return encoded_image(None, url)


def _content(content: Any) -> tuple[str | None, list[EncodedImage], list[str]]:
    """(text, images, thoughts) of a message's content: a string, or a list of parts."""
    if content is None or isinstance(content, str):
        return content, [], []
    if not isinstance(content, list):
        raise BrokenAnswerError(
            "message content is neither text nor a list of parts", error_type="no_content"
        )
    texts: list[str] = []
    thoughts: list[str] = []
    images: list[EncodedImage] = []
    for part in content:
        if not isinstance(part, Mapping):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            (thoughts if _is_thought(part) else texts).append(part["text"])
        elif part.get("type") == "image_url":
            image = _image_of_part(part)
            if image is not None:
                images.append(image)
    return ("".join(texts) if texts else None), images, thoughts


@dataclass
class _StreamChoice:
    content: list[Any] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: Any = None


def assemble_stream(chunks: list[Any]) -> dict[str, Any]:
    """One chat.completion from the chunks of a stream: content, reasoning and images concatenated per
    choice, tool calls merged by their index (arguments arrive in pieces), the last usage."""
    found: dict[int, _StreamChoice] = {}
    usage = None
    answer_id = None
    for chunk in chunks:
        if not isinstance(chunk, Mapping):
            continue
        if isinstance(chunk.get("usage"), Mapping):
            usage = chunk["usage"]
        if answer_id is None and isinstance(chunk.get("id"), str):
            answer_id = chunk["id"]
        listed = chunk.get("choices")
        for choice in listed if isinstance(listed, list) else []:
            if not isinstance(choice, Mapping):
                continue
            index = choice.get("index", 0)
            state = found.setdefault(index if isinstance(index, int) else 0, _StreamChoice())
            delta = choice.get("delta")
            if isinstance(delta, Mapping):
                _add_delta(state, delta)
            if choice.get("finish_reason"):
                state.finish_reason = choice["finish_reason"]
    listed_choices = []
    for index in sorted(found):
        state = found[index]
        parts = state.content
        joined: Any = (
            "".join(parts)
            if all(isinstance(p, str) for p in parts)
            else [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
        )
        message: dict[str, Any] = {"role": "assistant", "content": joined or None}
        if state.reasoning:
            message["reasoning_content"] = "".join(state.reasoning)
        if state.images:
            message["images"] = state.images
        if state.tool_calls:
            message["tool_calls"] = [state.tool_calls[i] for i in sorted(state.tool_calls)]
        listed_choices.append({"index": index, "message": message, "finish_reason": state.finish_reason})
    body: dict[str, Any] = {"choices": listed_choices}
    if answer_id is not None:
        body["id"] = answer_id
    if usage is not None:
        body["usage"] = usage
    return body


def _add_delta(state: _StreamChoice, delta: Mapping[str, Any]) -> None:
    content = delta.get("content")
    if isinstance(content, str):
        state.content.append(content)
    elif isinstance(content, list):
        state.content.extend(content)
    for key in ("reasoning_content", "reasoning"):
        if isinstance(delta.get(key), str):
            state.reasoning.append(delta[key])
    if isinstance(delta.get("images"), list):
        state.images.extend(delta["images"])
    calls = delta.get("tool_calls")
    for position, call in enumerate(calls if isinstance(calls, list) else []):
        if isinstance(call, Mapping):
            _merge_tool_call(state.tool_calls, call, position)


def _merge_tool_call(calls: dict[int, dict[str, Any]], piece: Mapping[str, Any], position: int) -> None:
    """A piece of a streamed tool call into the call with its `index`: id, type and name are set once,
    the arguments' text is appended."""
    index = piece.get("index", position)
    call = calls.setdefault(index if isinstance(index, int) else position, {"type": "function"})
    for key in ("id", "type"):
        if isinstance(piece.get(key), str) and piece[key]:
            call[key] = piece[key]
    function = piece.get("function")
    if isinstance(function, Mapping):
        target = call.setdefault("function", {"name": "", "arguments": ""})
        if isinstance(function.get("name"), str) and function["name"]:
            target["name"] = function["name"]
        if isinstance(function.get("arguments"), str):
            target["arguments"] += function["arguments"]


def stream_complete(fields: Mapping[str, Any], chunks: list[Any]) -> bool:
    """A stream that ended without `data: [DONE]` is whole when every one of its `n` choices finished."""
    n = fields.get("n", 1)
    n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    finished = {choice["index"] for choice in assemble_stream(chunks)["choices"] if choice["finish_reason"]}
    return all(index in finished for index in range(n))
