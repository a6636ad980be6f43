"""The Gemini chat endpoint (OpenAI chat-completions shape): request validation and deterministic answers.

An answer is a sentence built from the request (the choice number, the model, the first words of the last
user text, the number of images seen), so tests can predict it exactly. Models whose name contains `image`
also answer with a picture, as image-capable Gemini models do. This module writes the default shape only;
`shapes.py` writes the others (tool calls, reasoning, thought parts, message.images, odd streams and usage).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from PIL import Image

from . import fields as f
from .errors import invalid, moderation_blocked
from .usage import CHAT_INPUT_IMAGE_TOKENS, CHAT_OUTPUT_IMAGE_TOKENS, text_tokens

ROLES = ("system", "user", "assistant", "tool", "function")
MAX_N = 8
STREAM_PIECE_WORDS = 3
_DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,(?P<payload>.*)", re.DOTALL)


@dataclass(frozen=True)
class ChatRequest:
    """A valid chat request, reduced to what shapes the answer."""

    model: str
    n: int
    stream: bool
    max_tokens: int | None  # the smaller of max_tokens and max_completion_tokens
    last_user_text: str
    image_count: int
    prompt_tokens: int
    tool_name: str | None = None  # the function name of the first tool offered, if any
    tool_names: tuple[str, ...] = ()  # the function names of every tool offered
    # the name of the first function offered the deprecated way (`functions`, which the seed keeps
    # compatible): its call is answered the deprecated way too, as `function_call`
    function_name: str | None = None

    @property
    def answers_with_image(self) -> bool:
        return "image" in self.model.lower()


@dataclass(frozen=True)
class ChatChoice:
    """One choice's text and why it ended."""

    text: str
    finish_reason: str  # stop | length


def _check_image_url(url: object, param: str) -> None:
    if not isinstance(url, str):
        raise f.wrong_type(param, "a string")
    if url.startswith("gs://") and len(url) > len("gs://"):
        return
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise invalid(param, "Invalid image URL: expected a data:image/...;base64 URL or a gs:// URI.")
    try:
        data = base64.b64decode(match["payload"], validate=True)
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (binascii.Error, ValueError) as exc:
        raise invalid(
            param, "Invalid image data URL: the payload is not valid base64.", "invalid_image"
        ) from exc
    except Exception as exc:  # Pillow's many errors for non-images
        raise invalid(param, "Invalid image data URL: the payload is not an image.", "invalid_image") from exc


def _message_parts(content: object, param: str) -> tuple[list[str], int]:
    """The texts and the number of images of one message's content."""
    if isinstance(content, str):
        return [content], 0
    if not isinstance(content, list):
        raise f.wrong_type(param, "a string or an array of content parts")
    texts: list[str] = []
    images = 0
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise f.wrong_type(where, "an object")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if text is None:
                raise f.missing(f"{where}.text")
            if not isinstance(text, str):
                raise f.wrong_type(f"{where}.text", "a string")
            texts.append(text)
        elif kind == "image_url":
            image_url = part.get("image_url")
            if not isinstance(image_url, dict):
                raise f.wrong_type(f"{where}.image_url", "an object with a url")
            _check_image_url(image_url.get("url"), f"{where}.image_url.url")
            images += 1
        elif kind == "input_audio":
            continue  # accepted by the service; the simulator has nothing to say about audio
        else:
            raise invalid(f"{where}.type", f"Invalid content part type: {kind!r}.")
    return texts, images


def _tool_names(tools: object) -> tuple[str, ...]:
    """The names of the function tools offered; tools are otherwise passed through unchecked."""
    names = []
    for tool in tools if isinstance(tools, list) else []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.append(str(function["name"]))
    return tuple(names)


def _first_function_name(functions: object) -> str | None:
    """The name of the first function of the deprecated `functions` list (`[{name, parameters}]`)."""
    if isinstance(functions, list) and functions and isinstance(functions[0], dict):
        name = functions[0].get("name")
        if isinstance(name, str):
            return name
    return None


def parse_chat(body: object) -> ChatRequest:
    """Validate a chat body; fields the simulator does not model are accepted and ignored. Blocking."""
    if not isinstance(body, dict):
        raise invalid(None, "The request body must be a JSON object.", "invalid_type")
    messages = body.get("messages")
    if messages is None:
        raise f.missing("messages")
    if not isinstance(messages, list):
        raise f.wrong_type("messages", "an array")
    if not messages:
        raise invalid("messages", "Invalid value for 'messages': it must not be empty.")
    all_texts: list[str] = []
    images = 0
    last_user_text = ""
    user_texts: list[str] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise f.wrong_type(where, "an object")
        role = message.get("role")
        if role is None:
            raise f.missing(f"{where}.role")
        if role not in ROLES:
            raise invalid(f"{where}.role", f"Invalid value for role: {role!r}.")
        content = message.get("content")
        if content is None:
            if role == "assistant":  # an assistant turn that only called tools
                continue
            raise f.missing(f"{where}.content")
        texts, count = _message_parts(content, f"{where}.content")
        all_texts.extend(texts)
        images += count
        if role == "user":
            user_texts.extend(texts)
            last_user_text = " ".join(texts)
    model = f.required_str(body, "model")
    n = f.integer(body, "n", 1, MAX_N, 1)
    limits = [f.integer(body, name, 1, None, None) for name in ("max_tokens", "max_completion_tokens")]
    f.number(body, "temperature", 0.0, 2.0)
    f.number(body, "top_p", 0.0, 1.0)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise f.wrong_type("stream", "a boolean")
    if any(f.is_blocked(text) for text in user_texts):
        raise moderation_blocked()
    given = [limit for limit in limits if limit is not None]
    assert n is not None
    tool_names = _tool_names(body.get("tools"))
    return ChatRequest(
        tool_name=next(iter(tool_names), None),
        tool_names=tool_names,
        function_name=_first_function_name(body.get("functions")),
        model=model,
        n=n,
        stream=bool(stream),
        max_tokens=min(given) if given else None,
        last_user_text=last_user_text,
        image_count=images,
        prompt_tokens=text_tokens("".join(all_texts)) + CHAT_INPUT_IMAGE_TOKENS * images,
    )


def answer_text(request: ChatRequest, index: int) -> str:
    """The full (untruncated) answer of choice `index`."""
    words = " ".join(request.last_user_text.split()[:6]) or "(no text)"
    plural = "" if request.image_count == 1 else "s"
    return (
        f'Simulated answer {index + 1} from {request.model}: you said "{words}" '
        f"and sent {request.image_count} image{plural}."
    )


def choices(request: ChatRequest) -> list[ChatChoice]:
    """Every choice, truncated to max_tokens (about four characters a token)."""
    result = []
    for index in range(request.n):
        text = answer_text(request, index)
        if request.max_tokens is not None and len(text) > 4 * request.max_tokens:
            result.append(ChatChoice(text[: 4 * request.max_tokens], "length"))
        else:
            result.append(ChatChoice(text, "stop"))
    return result


def completion_tokens(request: ChatRequest, answers: Sequence[ChatChoice]) -> int:
    """Tokens of all choices: their text, plus the picture of an image model."""
    per_image = CHAT_OUTPUT_IMAGE_TOKENS if request.answers_with_image else 0
    return sum(text_tokens(choice.text) + per_image for choice in answers)


def image_part(url: str) -> dict[str, object]:
    """A content part holding an image as a data URL (or, for faults, whatever url is given)."""
    return {"type": "image_url", "image_url": {"url": url}}


def completion_body(
    request: ChatRequest,
    answers: Sequence[ChatChoice],
    meta: Mapping[str, object],
    usage: Mapping[str, int],
    image_urls: Sequence[str] | None,
    *,
    with_choices: bool = True,
) -> dict[str, object]:
    """The non-streamed answer; `meta` holds id, created and model."""
    body: dict[str, object] = {**meta, "object": "chat.completion"}
    if with_choices:
        listed = []
        for index, choice in enumerate(answers):
            content: object = choice.text
            if image_urls is not None:
                content = [{"type": "text", "text": choice.text}, image_part(image_urls[index])]
            message = {"role": "assistant", "content": content}
            listed.append({"index": index, "message": message, "finish_reason": choice.finish_reason})
        body["choices"] = listed
    body["usage"] = dict(usage)
    return body


def split_pieces(text: str) -> list[str]:
    """The text in a few pieces that concatenate back to it exactly."""
    tokens = re.findall(r"\S+\s*|\s+", text)
    pieces = ["".join(tokens[i : i + STREAM_PIECE_WORDS]) for i in range(0, len(tokens), STREAM_PIECE_WORDS)]
    return pieces or [""]


def stream_chunks(
    answers: Sequence[ChatChoice], meta: Mapping[str, object], image_urls: Sequence[str] | None
) -> list[dict[str, object]]:
    """The chunks of a streamed answer, up to the finish reasons (the usage chunk comes after)."""
    base = {**meta, "object": "chat.completion.chunk"}
    per_choice = [split_pieces(choice.text) for choice in answers]
    chunks: list[dict[str, object]] = []
    for position in range(max(len(pieces) for pieces in per_choice)):
        for index, pieces in enumerate(per_choice):
            if position < len(pieces):
                delta = (
                    {"role": "assistant", "content": pieces[0]}
                    if position == 0
                    else {"content": pieces[position]}
                )
                chunks.append({**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]})
    for index, choice in enumerate(answers):
        if image_urls is not None:
            image_delta = {"content": [image_part(image_urls[index])]}
            chunks.append(
                {**base, "choices": [{"index": index, "delta": image_delta, "finish_reason": None}]}
            )
        finish = {"index": index, "delta": {}, "finish_reason": choice.finish_reason}
        chunks.append({**base, "choices": [finish]})
    return chunks


def usage_chunk(meta: Mapping[str, object], usage: Mapping[str, int]) -> dict[str, object]:
    """The last chunk: no choices, only the usage (always sent, as with include_usage)."""
    return {**meta, "object": "chat.completion.chunk", "choices": [], "usage": dict(usage)}
