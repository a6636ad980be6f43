"""Reading a chat answer: a chat.completion, or the chunks of a stream assembled into one; its usage.

Kept apart from `jobs/chat.py` (the request side) because the answers of Gemini's OpenAI-compatible layer
come in many shapes: reasoning in three places, images in two, tool calls in pieces.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batch.errors import BrokenAnswerError, RefusalError
from batch.kind import Answer, EncodedImage, TokenCounts, usage_counts

from .image_api import encoded_image


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


def token_counts(usage: Mapping[str, Any]) -> TokenCounts:
    """prompt_tokens / completion_tokens / total_tokens, as chat reports them; thinking counted only in
    the total is output, cached prompt tokens and reasoning tokens are kept apart."""
    return usage_counts(usage, "prompt_tokens", "completion_tokens")


@dataclass
class _Choice:
    """One choice of an answer, read."""

    text: str | None = None
    reasoning: str | None = None
    images: list[EncodedImage] = field(default_factory=list)
    tool_calls: list[Any] = field(default_factory=list)
    function_call: dict[str, Any] | None = None  # the deprecated form of a call (`functions` offered)
    finish_reason: Any = None

    @property
    def said(self) -> bool:
        """Whether the choice holds an answer: text, images, or a call."""
        return self.text is not None or bool(self.images or self.tool_calls or self.function_call)


def parse_chat_answer(fields: Mapping[str, Any], body: Any) -> Answer:
    """The text, reasoning, tool calls and images of every choice, from a JSON answer or the chunks of a
    stream. Reasoning (`reasoning_content`, Gemini's thought parts) is kept apart from the text. A call made
    the deprecated way (`function_call`, the answer to `functions`, which the seed keeps compatible) is
    an answer as a tool call is."""
    # the usage is read only for an answer that cannot be used: the caller reads it for the ledger
    answer = assemble_stream(body) if isinstance(body, list) else body
    choices = answer.get("choices") if isinstance(answer, Mapping) else None
    if not isinstance(choices, list) or not choices:
        raise BrokenAnswerError("answer has no 'choices' list", usage=usage_of(body), error_type="no_choices")
    read = []
    for index, choice in enumerate(choices):
        message = choice.get("message") if isinstance(choice, Mapping) else None
        if not isinstance(message, Mapping):
            raise BrokenAnswerError(
                f"choices[{index}] has no message", usage=usage_of(body), error_type="no_choices"
            )
        read.append(_read_choice(message, choice.get("finish_reason")))
    if not any(c.said for c in read):
        _no_content(fields, read, usage_of(body))
    first = read[0]
    extra: dict[str, Any] = {"finish_reason": first.finish_reason}
    if first.reasoning is not None:
        extra["reasoning"] = first.reasoning
    if first.tool_calls:
        extra["tool_calls"] = first.tool_calls
    if first.function_call is not None:
        extra["function_call"] = first.function_call
    if len(read) > 1:
        extra["texts"] = [c.text for c in read]
        extra["finish_reasons"] = [c.finish_reason for c in read]
        if any(c.reasoning is not None for c in read):
            extra["reasonings"] = [c.reasoning for c in read]
        if any(c.tool_calls for c in read):
            extra["tool_calls_per_choice"] = [c.tool_calls for c in read]
        if any(c.function_call is not None for c in read):
            extra["function_call_per_choice"] = [c.function_call for c in read]
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
    choice.text, choice.images, thoughts = read_content(message.get("content"))
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
    call = message.get("function_call")
    if isinstance(call, Mapping) and call:
        choice.function_call = dict(call)
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


def read_content(content: Any) -> tuple[str | None, list[EncodedImage], list[str]]:
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
    function_call: dict[str, Any] | None = None
    finish_reason: Any = None
    last_call: int | None = None  # the index of the tool call a piece went to last


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
        if state.function_call is not None:
            message["function_call"] = state.function_call
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
            state.last_call = _merge_tool_call(state.tool_calls, call, position, state.last_call)
    function = delta.get("function_call")
    if isinstance(function, Mapping):  # the deprecated form: one call, its arguments in pieces
        if state.function_call is None:
            state.function_call = {"name": "", "arguments": ""}
        _merge_function(state.function_call, function)


def _merge_tool_call(
    calls: dict[int, dict[str, Any]], piece: Mapping[str, Any], position: int, last: int | None
) -> int:
    """A piece of a streamed tool call into its call: id, type and name are set once, the arguments' text
    is appended, other keys (Gemini's `extra_content` thought signature) kept. The call is the one of the
    piece's `index`; a piece without one (Gemini's OpenAI layer streams each call whole so) is a new call
    when it brings an id not seen yet, else a piece of the call before. Returns the call's index."""
    index = _call_index(calls, piece, position, last)
    call = calls.setdefault(index, {"type": "function"})
    for key in ("id", "type"):
        if isinstance(piece.get(key), str) and piece[key]:
            call[key] = piece[key]
    for key, value in piece.items():
        if key not in ("index", "id", "type", "function") and value is not None:
            call[key] = value
    function = piece.get("function")
    if isinstance(function, Mapping):
        _merge_function(call.setdefault("function", {"name": "", "arguments": ""}), function)
    return index


def _call_index(
    calls: Mapping[int, Mapping[str, Any]], piece: Mapping[str, Any], position: int, last: int | None
) -> int:
    """Which call a streamed piece belongs to (see _merge_tool_call)."""
    index = piece.get("index")
    if isinstance(index, int) and not isinstance(index, bool):
        return index
    call_id = piece.get("id")
    if isinstance(call_id, str) and call_id:
        known = next((key for key, call in calls.items() if call.get("id") == call_id), None)
        if known is not None:
            return known
        if calls:  # two calls sent without an index were merged into one: the first lost, JSON broken
            return max(calls) + 1
    return last if last is not None else position


def _merge_function(target: dict[str, Any], piece: Mapping[str, Any]) -> None:
    """A piece of a streamed function (a tool call's, or a deprecated `function_call`): the name is set
    once, the arguments' text appended."""
    if isinstance(piece.get("name"), str) and piece["name"]:
        target["name"] = piece["name"]
    if isinstance(piece.get("arguments"), str):
        target["arguments"] += piece["arguments"]


def stream_complete(fields: Mapping[str, Any], chunks: list[Any]) -> bool:
    """A stream that ended without `data: [DONE]` is whole when every one of its `n` choices finished, or
    when it ended on a usage chunk of its own (`choices` empty or absent): the count of the whole request,
    which a server sends once, after its choices are done (OpenAI's `stream_options.include_usage`), so
    the answer was whole though a gateway dropped the finish reasons or sent fewer choices than `n`. A
    usage on a chunk of a choice (a gateway's count so far, on every chunk) says nothing of the end."""
    last = chunks[-1] if chunks else None
    if isinstance(last, Mapping) and isinstance(last.get("usage"), Mapping) and not last.get("choices"):
        return True
    n = fields.get("n", 1)
    n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    finished = {choice["index"] for choice in assemble_stream(chunks)["choices"] if choice["finish_reason"]}
    return all(index in finished for index in range(n))
