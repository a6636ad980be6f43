"""Answer shapes: the other legal ways real gateways write a successful answer (`config.ANSWER_SHAPES`).

Each shape is built from the published API shape (OpenAI Images and chat completions, Gemini's
OpenAI-compatible layer; see API.md, "Answers real gateways send"), never from what the project's client
reads, so that the simulator stays an independent oracle. Pure functions over plain data: the server
decides when a shape applies (not when a fault answers), these write the answer.

Billing follows the provider: thinking is output (reasoning_content, thought parts, `length_null`'s used-up
limit, `thinking_in_total`'s hidden tokens), `fewer` bills the images made, `no_usage` is billed all the
same, `error200` is not billed.

Shapes combine: a chat answer is a tool call (`tool_calls`, only when the request offers tools, or
functions the deprecated way: then the call is the deprecated `function_call`; `tool_calls_unindexed`: a
call of every tool offered, streamed as Gemini's OpenAI layer streams them), else
`content: null` (`length_null`), else text decorated by `reasoning`, `thoughts` and `message_images` (image
models only); usage and stream shapes apply to any of them (stream shapes only to streams). `mixed` turns
`url` into "first item only"; `data_url` and `b64_lines` shape the b64_json items and stack.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .chat import ChatChoice, ChatRequest, image_part, split_pieces
from .files import content_type
from .usage import CHAT_OUTPUT_IMAGE_TOKENS, text_tokens

URL_SHAPES = frozenset({"url", "url_flaky", "url_lost", "url_redirect", "mixed"})
IMAGE_SHAPES = URL_SHAPES | {"data_url", "b64_lines", "fewer", "error200"}
STREAM_SHAPES = frozenset(
    {
        "no_done",
        "no_finish",
        "usage_every_chunk",
        "sse_noise",
        "sse_cr",
        "sse_bom",
        "sse_plain",
        "sse_upper",
        "done_spaced",
    }
)
CHAT_SHAPES = frozenset(
    {"tool_calls", "tool_calls_unindexed", "length_null", "message_images", "reasoning", "thoughts",
     "thinking_in_total", "cached", "no_usage"}
) | STREAM_SHAPES  # fmt: skip
# Content faults break the images themselves: such an answer keeps the default shape.
CONTENT_FAULTS = frozenset({"no_data", "bad_base64", "bad_image", "bomb"})
B64_LINE_CHARS = 76
DEFAULT_MAX_TOKENS = 500  # length_null's limit when the request sets none
MIN_ARGUMENT_PIECES = 3


def ordered(shapes: frozenset[str]) -> tuple[str, ...]:
    """Shape names in a stable order (alphabetical), for records."""
    return tuple(sorted(shapes))


def error_200_applies(answers: frozenset[str], fault: str | None) -> bool:
    """`error200` answers unless a fault (other than a mere delay) already decided the answer."""
    return "error200" in answers and fault in (None, "slow")


def error_200_body() -> bytes:
    """The 200 whose body is an OpenAI error object (a refusal some gateways send with status 200)."""
    error = {
        "message": "Your request was rejected as a result of our safety system.",
        "type": "invalid_request_error",
        "param": None,
        "code": "content_policy_violation",
    }
    return json.dumps({"error": error}).encode()


# --- images -------------------------------------------------------------------------------------------


def images_made(n: int, answers: frozenset[str]) -> int:
    """How many images the answer holds: n, or n-1 under `fewer` when n >= 2."""
    return n - 1 if "fewer" in answers and n >= 2 else n


def revised_prompt(prompt: str) -> str:
    """The `revised_prompt` beside a url item (dall-e-3 style)."""
    return f"A simulated rendering of: {prompt}"


def _b64_item(image: bytes, answers: frozenset[str], output_format: str) -> bytes:
    text = image
    if "b64_lines" in answers:
        # A JSON-escaped newline every 76 characters: the string holds "\n", the body the two bytes \ n.
        text = b"\\n".join(text[i : i + B64_LINE_CHARS] for i in range(0, len(text), B64_LINE_CHARS))
    if "data_url" in answers:
        text = f"data:{content_type(output_format)};base64,".encode() + text
    return b'{"b64_json": "' + text + b'"}'


def image_items(
    images: Sequence[bytes],
    answers: frozenset[str],
    output_format: str,
    prompt: str,
    store: Callable[[int, bytes], str],
) -> list[bytes]:
    """The encoded `data` items; `store(index, base64)` keeps a url item's file and returns its URL."""
    if "mixed" in answers:
        url_items = {0}
    elif answers & {"url", "url_flaky", "url_lost", "url_redirect"}:
        url_items = set(range(len(images)))
    else:
        url_items = set()
    items = []
    for index, image in enumerate(images):
        if index in url_items:
            item = {"url": store(index, image), "revised_prompt": revised_prompt(prompt)}
            items.append(json.dumps(item).encode())
        else:
            items.append(_b64_item(image, answers, output_format))
    return items


# --- chat: what each choice says ----------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """One function call of an assistant message."""

    id: str
    name: str
    arguments: str  # a JSON text, as the API sends it
    signature: str | None = None  # Gemini's thought signature (extra_content.google.thought_signature)


@dataclass(frozen=True)
class ShapedChoice:
    """One choice of a shaped chat answer; `text` None means `content: null`."""

    text: str | None
    finish_reason: str
    completion_tokens: int
    reasoning_tokens: int = 0
    reasoning: str | None = None  # reasoning_content
    thought: str | None = None  # the text of a Gemini thought part
    tool_call: ToolCall | None = None
    more_calls: tuple[ToolCall, ...] = ()  # the calls after the first (tool_calls_unindexed)
    # the call made the deprecated way (`message.function_call`, finish_reason function_call), as the API
    # answers a request that offers `functions` rather than `tools`
    legacy_call: bool = False


@dataclass(frozen=True)
class ChatPlan:
    """A chat answer in its shapes: the choices, the usage as reported, and what is billed."""

    choices: list[ShapedChoice]
    usage: dict[str, object]  # the full figure (left out of the answer under no_usage)
    billed: int
    shapes: frozenset[str]  # the shapes that apply to this answer
    image_model: bool
    thinking_tokens: int  # reported only in total_tokens (thinking_in_total)


def _first_word(request: ChatRequest) -> str:
    words = request.last_user_text.split()
    return words[0] if words else ""


def reasoning_text(request: ChatRequest, index: int) -> str:
    """The deterministic reasoning of choice `index`."""
    return f"Reasoning {index + 1}: the user starts with {_first_word(request)!r}; answer in one sentence."


def thought_text(request: ChatRequest, index: int) -> str:
    """The deterministic thought (Gemini thought part) of choice `index`."""
    return f"Thinking {index + 1}: {request.model} considers {_first_word(request)!r} before answering."


def _shaped_choice(
    request: ChatRequest, shapes: frozenset[str], answer_id: str, index: int, base: ChatChoice
) -> ShapedChoice:
    if "tool_calls_unindexed" in shapes and request.tool_names:  # a call of every tool offered
        word, prefix = _first_word(request), f"call_{answer_id.removeprefix('chatcmpl-')}_{index}"
        calls = [
            ToolCall(
                f"{prefix}_{number}",
                tool,
                json.dumps({"label": word, "n": index, "tool": tool}),
                _signature(f"{prefix}_{number}"),
            )
            for number, tool in enumerate(request.tool_names)
        ]
        tokens = sum(text_tokens(call.name + call.arguments) for call in calls)
        return ShapedChoice(None, "tool_calls", tokens, tool_call=calls[0], more_calls=tuple(calls[1:]))
    name = request.tool_name if request.tool_name is not None else request.function_name
    if "tool_calls" in shapes and name is not None:
        arguments = json.dumps({"label": _first_word(request), "n": index})
        call = ToolCall(f"call_{answer_id.removeprefix('chatcmpl-')}_{index}", name, arguments)
        tokens = text_tokens(call.name + call.arguments)
        if request.tool_name is None:  # offered as `functions`: answered as `function_call`
            return ShapedChoice(None, "function_call", tokens, tool_call=call, legacy_call=True)
        return ShapedChoice(None, "tool_calls", tokens, tool_call=call)
    if "length_null" in shapes:
        limit = request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS
        return ShapedChoice(None, "length", limit, reasoning_tokens=limit)
    reasoning = reasoning_text(request, index) if "reasoning" in shapes else None
    thought = thought_text(request, index) if "thoughts" in shapes else None
    hidden = sum(text_tokens(text) for text in (reasoning, thought) if text is not None)
    picture = CHAT_OUTPUT_IMAGE_TOKENS if request.answers_with_image else 0
    tokens = text_tokens(base.text) + picture + hidden
    return ShapedChoice(base.text, base.finish_reason, tokens, hidden, reasoning, thought)


def plan_chat(
    request: ChatRequest,
    answers: frozenset[str],
    base: Sequence[ChatChoice],
    answer_id: str,
    thinking_tokens: int,
) -> ChatPlan:
    """Shape the plain answers `base` (chat.choices) by the chat shapes that are on."""
    shapes = answers & CHAT_SHAPES
    if request.tool_name is None and request.function_name is None:
        shapes -= {"tool_calls"}
    if not request.tool_names:
        shapes -= {"tool_calls_unindexed"}
    elif "tool_calls_unindexed" in shapes:
        shapes -= {"tool_calls"}
    if not request.answers_with_image:
        shapes -= {"message_images"}
    if not request.stream:
        shapes -= STREAM_SHAPES
    picked = [_shaped_choice(request, shapes, answer_id, index, choice) for index, choice in enumerate(base)]
    if shapes & {"tool_calls", "tool_calls_unindexed"}:
        shapes -= {"length_null", "reasoning", "thoughts", "message_images"}
    elif "length_null" in shapes:
        shapes -= {"reasoning", "thoughts", "message_images"}
    hidden = thinking_tokens if "thinking_in_total" in shapes else 0
    prompt = request.prompt_tokens
    completion = sum(choice.completion_tokens for choice in picked)
    reasoning = sum(choice.reasoning_tokens for choice in picked)
    usage: dict[str, object] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion + hidden,
    }
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    if "cached" in shapes:
        usage["prompt_tokens_details"] = {"cached_tokens": prompt // 2}
    return ChatPlan(picked, usage, prompt + completion + hidden, shapes, request.answers_with_image, hidden)


# --- chat: the plain answer ---------------------------------------------------------------------------


def _text_part(text: str) -> dict[str, object]:
    return {"type": "text", "text": text}


def thought_part(text: str) -> dict[str, object]:
    """A Gemini OpenAI-compat thought part: reasoning, not answer."""
    return {"type": "text", "text": text, "extra_part": {"google": {"thought": True}}}


def _signature(call_id: str) -> str:
    """A deterministic stand-in for Gemini's opaque thought signature (base64 text)."""
    return base64.b64encode(f"signature of {call_id}".encode()).decode()


def _tool_call_object(call: ToolCall) -> dict[str, object]:
    found: dict[str, object] = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
    if call.signature is not None:
        found["extra_content"] = {"google": {"thought_signature": call.signature}}
    return found


def _function_call_object(call: ToolCall) -> dict[str, object]:
    return {"name": call.name, "arguments": call.arguments}


def _message(plan: ChatPlan, choice: ShapedChoice, image_url: str | None) -> dict[str, object]:
    if choice.tool_call is not None and choice.legacy_call:
        return {
            "role": "assistant",
            "content": None,
            "function_call": _function_call_object(choice.tool_call),
        }
    if choice.tool_call is not None:
        calls = [_tool_call_object(call) for call in (choice.tool_call, *choice.more_calls)]
        return {"role": "assistant", "content": None, "tool_calls": calls}
    if choice.text is None:
        return {"role": "assistant", "content": None}
    in_parts = image_url is not None and "message_images" not in plan.shapes
    content: object = choice.text
    if choice.thought is not None or in_parts:
        parts = [thought_part(choice.thought)] if choice.thought is not None else []
        parts.append(_text_part(choice.text))
        if in_parts and image_url is not None:
            parts.append(image_part(image_url))
        content = parts
    message: dict[str, object] = {"role": "assistant", "content": content}
    if choice.reasoning is not None:
        message["reasoning_content"] = choice.reasoning
    if image_url is not None and "message_images" in plan.shapes:
        message["images"] = [image_part(image_url)]
    return message


def completion_body(
    plan: ChatPlan,
    meta: Mapping[str, object],
    image_urls: Sequence[str] | None,
    *,
    with_choices: bool = True,
) -> dict[str, object]:
    """The non-streamed answer; `meta` holds id, created and model."""
    body: dict[str, object] = {**meta, "object": "chat.completion"}
    if with_choices:
        body["choices"] = [
            {
                "index": index,
                "message": _message(plan, choice, image_urls[index] if image_urls else None),
                "finish_reason": choice.finish_reason,
            }
            for index, choice in enumerate(plan.choices)
        ]
    if "no_usage" not in plan.shapes:
        body["usage"] = plan.usage
    return body


# --- chat: the stream ---------------------------------------------------------------------------------


def split_arguments(arguments: str) -> list[str]:
    """A JSON text in at least three pieces, cut anywhere (even inside a string), as OpenAI streams it."""
    size = max(1, math.ceil(len(arguments) / 4))
    pieces = [arguments[i : i + size] for i in range(0, len(arguments), size)]
    while len(pieces) < MIN_ARGUMENT_PIECES:
        pieces.append("")
    return pieces


def _deltas(plan: ChatPlan, choice: ShapedChoice, image_url: str | None) -> list[dict[str, object]]:
    """The deltas of one choice before its finish chunk."""
    if choice.tool_call is not None and choice.legacy_call:  # the name first, the arguments in pieces
        call = choice.tool_call
        first, *rest = split_arguments(call.arguments)
        head: dict[str, object] = {
            "role": "assistant",
            "content": None,
            "function_call": {"name": call.name, "arguments": first},
        }
        pieces: list[dict[str, object]] = [{"function_call": {"arguments": piece}} for piece in rest]
        return [head, *pieces]
    if choice.tool_call is not None and "tool_calls_unindexed" in plan.shapes:
        # as Gemini's OpenAI layer streams them: each call whole, in a chunk of its own, with no `index`
        whole: list[dict[str, object]] = [
            {"tool_calls": [_tool_call_object(call)]} for call in (choice.tool_call, *choice.more_calls)
        ]
        return [{"role": "assistant", **whole[0]}, *whole[1:]]
    if choice.tool_call is not None:
        call = choice.tool_call
        first, *rest = split_arguments(call.arguments)
        opening = {
            "index": 0,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": first},
        }
        deltas: list[dict[str, object]] = [{"role": "assistant", "content": None, "tool_calls": [opening]}]
        return deltas + [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in rest]
    if choice.text is None:
        return [{"role": "assistant"}]
    deltas = []
    if choice.reasoning is not None:
        deltas += [{"reasoning_content": piece} for piece in split_pieces(choice.reasoning)]
    if choice.thought is not None:
        deltas.append({"content": [thought_part(choice.thought)]})
        deltas += [{"content": [_text_part(piece)]} for piece in split_pieces(choice.text)]
    else:
        deltas += [{"content": piece} for piece in split_pieces(choice.text)]
    if image_url is not None:
        key = "images" if "message_images" in plan.shapes else "content"
        deltas.append({key: [image_part(image_url)]})
    deltas[0] = {"role": "assistant", **deltas[0]}
    return deltas


def partial_usage(usage: Mapping[str, object], thinking: int, done: int, of: int) -> dict[str, object]:
    """The cumulative usage after `done` of `of` chunks: output figures scaled, the prompt whole."""

    def part(value: object) -> int:
        assert isinstance(value, int)
        return value * done // of

    prompt, completion = usage["prompt_tokens"], part(usage["completion_tokens"])
    assert isinstance(prompt, int)
    result: dict[str, object] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion + thinking * done // of,
    }
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict):
        result["completion_tokens_details"] = {"reasoning_tokens": part(details["reasoning_tokens"])}
    if "prompt_tokens_details" in usage:
        result["prompt_tokens_details"] = usage["prompt_tokens_details"]
    return result


def stream_events(
    plan: ChatPlan, meta: Mapping[str, object], image_urls: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """The `data:` payloads of a streamed answer: (the chunks up to the finish reasons, the tail after)."""
    base = {**meta, "object": "chat.completion.chunk"}
    per_choice = [
        _deltas(plan, choice, image_urls[index] if image_urls else None)
        for index, choice in enumerate(plan.choices)
    ]
    chunks: list[dict[str, object]] = []
    for position in range(max(len(deltas) for deltas in per_choice)):
        for index, deltas in enumerate(per_choice):
            if position < len(deltas):
                choice = {"index": index, "delta": deltas[position], "finish_reason": None}
                chunks.append({**base, "choices": [choice]})
    for index, shaped in enumerate(plan.choices):
        if "no_finish" in plan.shapes:  # a gateway that drops them: the choices' pieces, then the usage
            break
        finish = shaped.finish_reason
        if "tool_calls_unindexed" in plan.shapes:  # Gemini's streams end tool calls with "stop"
            finish = "stop"
        chunks.append({**base, "choices": [{"index": index, "delta": {}, "finish_reason": finish}]})
    tail: list[str] = []
    if "usage_every_chunk" in plan.shapes:
        for done, chunk in enumerate(chunks, start=1):
            chunk["usage"] = partial_usage(plan.usage, plan.thinking_tokens, done, len(chunks))
    elif "no_usage" not in plan.shapes:
        tail.append(json.dumps({**base, "choices": [], "usage": plan.usage}))
    if "no_done" not in plan.shapes:
        tail.append("[DONE]")
    return [json.dumps(chunk) for chunk in chunks], tail


def frame_events(events: Sequence[str], *, shapes: frozenset[str] = frozenset()) -> list[bytes]:
    """Server-sent events; `sse_noise`: keep-alive comments, event: and id: lines, CRLF line ends;
    `sse_cr`: CR line ends; `sse_bom`: a byte order mark first; `done_spaced`: `data:  [DONE] `."""
    end = b"\r" if "sse_cr" in shapes else b"\n"
    framed = []
    for number, event in enumerate(events):
        data = b" [DONE] " if event == "[DONE]" and "done_spaced" in shapes else event.encode()
        if "sse_noise" in shapes:
            keep_alive = b": keep-alive\r\n\r\n" if number % 3 == 0 else b""
            framed.append(keep_alive + b"event: message\r\nid: %d\r\ndata: %s\r\n\r\n" % (number, data))
        else:
            framed.append(b"data: " + data + end + end)
    if framed and "sse_bom" in shapes:
        framed[0] = b"\xef\xbb\xbf" + framed[0]
    return framed


def stream_type(shapes: frozenset[str]) -> str:
    """The Content-Type a stream is sent with."""
    if "sse_plain" in shapes:
        return "text/plain"
    return "Text/Event-Stream; Charset=UTF-8" if "sse_upper" in shapes else "text/event-stream"
