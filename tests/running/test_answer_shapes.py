"""Answer shapes as the published APIs write them, read by the kinds and the client, without a server.

Each body below is copied from the shape OpenAI documents for the Images API and chat completions (and the
streaming chunk object), or from Gemini's OpenAI-compatible layer, not from this project's simulator: an
oracle written from the same reading as the code could not catch a misreading.
"""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from batch.jobs.chat import KIND as chat
from batch.jobs.edit import KIND as edit
from batch.jobs.generate import KIND as generate
from PIL import Image

from batch.errors import BrokenAnswerError, RefusalError
from batch.kind import TokenCounts
from batch.running.bodies import embedded_status as _embedded_status
from batch.running.bodies import running_usage
from batch.running.bodies import sse_data as _sse_data
from batch.running.imaging import decode_base64, decode_images
from batch.running.prices import Price, parse_prices


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buffer, "PNG")
    return buffer.getvalue()


B64 = base64.b64encode(png()).decode()

# --- images -------------------------------------------------------------------------------------------


def test_url_items_are_links_to_download_with_their_revised_prompts() -> None:
    body = {
        "created": 1713833628,
        "data": [
            {"url": "https://files.example.com/img-abc.png", "revised_prompt": "A red apple on a table"}
        ],
    }
    answer = generate.parse_answer({"prompt": "apple"}, body)
    [image] = answer.images
    assert image.url == "https://files.example.com/img-abc.png" and image.b64 == ""
    assert answer.extra == {"revised_prompts": ["A red apple on a table"]}
    assert answer.images_missing == 0


def test_b64_json_written_as_a_data_url_and_with_line_breaks() -> None:
    wrapped = "\n".join(B64[i : i + 76] for i in range(0, len(B64), 76))
    body = {"data": [{"b64_json": f"data:image/webp;base64,{B64}"}, {"b64_json": wrapped}]}
    answer = generate.parse_answer({"prompt": "p", "n": 2}, body)
    assert [image.mime for image in answer.images] == ["image/webp", None]
    files = decode_images("t", answer.images, generate)
    assert [f.data for f in files] == [png(), png()]
    with pytest.raises(BrokenAnswerError, match="not valid base64"):
        decode_base64("@@not base64@@")


def test_mixed_items_and_fewer_images_than_asked() -> None:
    body = {"data": [{"url": "http://cdn.example/a.png"}, {"b64_json": B64}]}
    answer = generate.parse_answer({"prompt": "p", "n": 4}, body)
    assert [image.url for image in answer.images] == ["http://cdn.example/a.png", None]
    assert answer.images_missing == 2


@pytest.mark.parametrize(
    "body",
    [{"data": []}, {"created": 1}, {"data": [{"url": ""}]}, {"data": [{"b64_json": 3}]}],
)
def test_an_image_answer_without_a_usable_image_fails(body: dict[str, Any]) -> None:
    with pytest.raises(BrokenAnswerError) as caught:
        generate.parse_answer({"prompt": "p"}, body)
    assert caught.value.retry is False  # it arrived whole


def test_a_link_that_is_not_http_is_a_link_its_download_refuses() -> None:
    """`gs://` or `file:///etc/passwd`: an image all the same, which the client will not fetch (only
    http(s)), so that it is counted missing with why (tests/e2e/test_hostile_answers.py), not dropped."""
    body = {"data": [{"url": "file:///etc/passwd"}, {"url": "gs://bucket/b.png"}, {"b64_json": B64}]}
    answer = generate.parse_answer({"prompt": "p", "n": 3}, body)
    assert [image.url for image in answer.images] == ["file:///etc/passwd", "gs://bucket/b.png", None]
    assert answer.images_missing == 0


# --- chat: whole answers ---------------------------------------------------------------------------------


def completion(message: dict[str, Any], finish: str = "stop", **usage: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1677652288,
        "model": "gemini-2.5-flash",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
        "usage": usage or {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
    }


def test_tool_calls_with_null_content() -> None:
    call = {
        "id": "call_abc123",
        "type": "function",
        "function": {"name": "get_current_weather", "arguments": '{\n"location": "Boston, MA"\n}'},
    }
    answer = chat.parse_answer({}, completion({"content": None, "tool_calls": [call]}, "tool_calls"))
    assert answer.text is None
    assert answer.extra["tool_calls"] == [call] and answer.extra["finish_reason"] == "tool_calls"


def test_reasoning_content_and_thought_parts_stay_out_of_the_text() -> None:
    plain = chat.parse_answer({}, completion({"content": "42", "reasoning_content": "6 times 7"}))
    assert plain.text == "42" and plain.extra["reasoning"] == "6 times 7"
    parts = [
        {"type": "text", "text": "Let me think.", "extra_part": {"google": {"thought": True}}},
        {"type": "text", "text": "The answer is 42."},
    ]
    gemini = chat.parse_answer({}, completion({"content": parts}))
    assert gemini.text == "The answer is 42." and gemini.extra["reasoning"] == "Let me think."


def test_images_in_message_images() -> None:
    message = {
        "content": "Here is your picture.",
        "images": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}}],
    }
    answer = chat.parse_answer({}, completion(message))
    assert answer.text == "Here is your picture."
    assert [image.mime for image in answer.images] == ["image/png"]
    assert decode_images("t", answer.images, generate)[0].data == png()


def test_null_content_at_the_token_limit_names_the_thinking_that_used_it() -> None:
    body = completion(
        {"content": None},
        "length",
        prompt_tokens=21,
        completion_tokens=256,
        total_tokens=277,
        completion_tokens_details={"reasoning_tokens": 256},
    )
    with pytest.raises(BrokenAnswerError) as caught:
        chat.parse_answer({"max_tokens": 256}, body)
    assert caught.value.kind == "token_limit" and caught.value.retry is False
    assert "max_tokens 256" in caught.value.message and "256 tokens of thinking" in caught.value.message
    assert caught.value.usage is not None  # billed, and said so


USAGE = {"prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7}


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        ({"choices": [], "usage": USAGE}, "no_choices"),
        ({"choices": [{"index": 0, "finish_reason": "stop"}], "usage": USAGE}, "no_choices"),
        (completion({"content": None}, "stop", **USAGE), "no_content"),
        (
            [
                {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": "stop"}]},
                {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
                {"choices": [], "usage": USAGE},
            ],
            "no_content",
        ),
    ],
    ids=["no choices", "no message", "no content", "a stream of none"],
)
def test_an_answer_that_cannot_be_used_says_what_it_was_billed(body: Any, error_type: str) -> None:
    """The usage is read only where an answer cannot be used (the run reads it for the ledger): it still
    comes with the error, a stream's last."""
    with pytest.raises(BrokenAnswerError) as caught:
        chat.parse_answer({}, body)
    assert caught.value.kind == error_type and caught.value.usage == USAGE


def test_a_content_filter_is_a_refusal() -> None:
    with pytest.raises(RefusalError):
        chat.parse_answer({}, completion({"content": None}, "content_filter"))


def test_every_choice_of_n() -> None:
    body = completion({"content": "a"})
    body["choices"].append(
        {"index": 1, "message": {"role": "assistant", "content": "b"}, "finish_reason": "length"}
    )
    answer = chat.parse_answer({"n": 2}, body)
    assert answer.extra["texts"] == ["a", "b"] and answer.extra["finish_reasons"] == ["stop", "length"]


# --- chat: streams -----------------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gemini-2.5-flash",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }


def test_streamed_tool_calls_merge_their_arguments_by_index() -> None:
    chunks = [
        chunk(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "label", "arguments": ""},
                    }
                ],
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"lab'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'el": "cat"}'}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "score", "arguments": "{}"},
                    }
                ]
            }
        ),
        chunk({}, "tool_calls"),
    ]
    answer = chat.parse_answer({}, chunks)
    assert answer.extra["tool_calls"] == [
        {"type": "function", "id": "call_1", "function": {"name": "label", "arguments": '{"label": "cat"}'}},
        {"type": "function", "id": "call_2", "function": {"name": "score", "arguments": "{}"}},
    ]


# Gemini's OpenAI-compatible layer streams each tool call whole, without `index` (a chunk captured from it):
#   {"choices":[{"delta":{"role":"assistant","tool_calls":[{"extra_content":{"google":{"thought_signature":
#   "..."}},"function":{"arguments":"{...}","name":"read"},"id":"call_297140","type":"function"}]},
#   "index":0}],"model":"gemini-3.8-flash","object":"chat.completion.chunk"}
# and may split arguments across deltas without an index, or send the signature in a delta of its own.
def test_streamed_tool_calls_without_index_are_told_apart_by_their_ids() -> None:
    signature = {"google": {"thought_signature": "c2ln"}}
    read = {"name": "read", "arguments": '{"path": "/a"}'}
    chunks = [
        chunk({"role": "assistant", "tool_calls": [{"extra_content": signature, "function": read,
                                                    "id": "call_297140", "type": "function"}]}),
        chunk({"tool_calls": [{"function": {"name": "glob", "arguments": '{"pat'}, "id": "call_297141",
                               "type": "function"}]}),
        chunk({"tool_calls": [{"function": {"arguments": 'tern": "*"}'}}]}),
        chunk({"tool_calls": [{"extra_content": {"google": {"thought_signature": "Z2xv"}}}]}),
        chunk({}, "stop"),
    ]  # fmt: skip
    answer = chat.parse_answer({}, chunks)
    assert answer.extra["finish_reason"] == "stop"
    assert answer.extra["tool_calls"] == [
        {"type": "function", "id": "call_297140", "extra_content": signature, "function": read},
        {
            "type": "function",
            "id": "call_297141",
            "extra_content": {"google": {"thought_signature": "Z2xv"}},
            "function": {"name": "glob", "arguments": '{"pattern": "*"}'},
        },
    ]


def test_streamed_reasoning_and_images() -> None:
    chunks = [
        chunk({"role": "assistant", "reasoning_content": "Think"}),
        chunk({"reasoning_content": "ing."}),
        chunk({"content": "Done."}),
        chunk({"images": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}}]}),
        chunk({}, "stop"),
    ]
    answer = chat.parse_answer({}, chunks)
    assert answer.text == "Done." and answer.extra["reasoning"] == "Thinking."
    assert len(answer.images) == 1


def test_a_stream_without_done_is_whole_when_every_choice_finished() -> None:
    finished = [chunk({"content": "a"}, index=0), chunk({"content": "b"}, "stop", index=1), chunk({}, "stop")]
    assert chat.stream_complete({"n": 2}, finished)
    assert not chat.stream_complete({"n": 2}, finished[:2])  # choice 0 never finished
    assert not chat.stream_complete({}, [chunk({"content": "cut"})])
    assert not chat.stream_complete({}, [{"choices": 1}, "junk", None])


def test_a_stream_without_done_is_whole_when_it_ended_on_the_usage_of_the_whole_request() -> None:
    usage = {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    pieces_only = [chunk({"content": "a"}, index=0), chunk({"content": "b"}, index=1)]
    assert chat.stream_complete({"n": 2}, [*pieces_only, {"choices": [], "usage": usage}])
    assert chat.stream_complete({"n": 2}, [*pieces_only, {"usage": usage}])
    assert chat.stream_complete({}, [{"choices": [], "usage": usage}])  # an answer of no choice: whole
    # a usage on a chunk of a choice is the count so far; one of its own that more pieces followed is too
    assert not chat.stream_complete({}, [{**chunk({"content": "cut"}), "usage": usage}])
    assert not chat.stream_complete({}, [{"choices": [], "usage": usage}, chunk({"content": "cut"})])
    assert not chat.stream_complete({}, [{"choices": [], "usage": None}])


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.anyio
async def test_sse_comments_event_lines_and_crlf() -> None:
    wire = (
        b': keep-alive\r\n\r\nevent: message\r\nid: 1\r\ndata: {"a": 1}\r\n\r\n'
        b'retry: 100\r\ndata: {"b":\r\ndata: 2}\r\n\r\ndata: [DONE]'  # no blank line after the last
    )
    seen = [data async for data in _sse_data(pieces(wire[:7], wire[7:40], wire[40:]))]
    assert seen == [b'{"a": 1}', b'{"b":\n2}', b"[DONE]"]


# OpenAI's image stream (the Images API with `stream: true`), an event per image state:
#   data: {"type": "image_generation.partial_image", "b64_json": "...", "partial_image_index": 0, ...}
#   data: {"type": "image_generation.completed", "b64_json": "...", "created_at": 1620000000,
#          "size": "1024x1024", "quality": "high", "background": "transparent", "output_format": "png",
#          "usage": {"total_tokens": 100, "input_tokens": 50, "output_tokens": 50,
#                    "input_tokens_details": {"text_tokens": 10, "image_tokens": 40}}}
IMAGE_STREAM = [
    {"type": "image_generation.partial_image", "b64_json": B64, "partial_image_index": 0},
    {
        "type": "image_generation.completed",
        "b64_json": B64,
        "created_at": 1620000000,
        "size": "1024x1024",
        "quality": "high",
        "background": "transparent",
        "output_format": "png",
        "usage": {
            "total_tokens": 100,
            "input_tokens": 50,
            "output_tokens": 50,
            "input_tokens_details": {"text_tokens": 10, "image_tokens": 40},
        },
    },
]


def test_an_image_stream_is_read_as_the_answer_it_stands_for() -> None:
    answer = generate.parse_answer({"n": 2}, IMAGE_STREAM)
    assert [image.b64 for image in answer.images] == [B64] and answer.images_missing == 1
    assert generate.usage_of(IMAGE_STREAM) == IMAGE_STREAM[1]["usage"]
    assert generate.token_counts(IMAGE_STREAM[1]["usage"]) == TokenCounts(50, 50, 100, image_input=40)
    assert generate.stream_complete({}, IMAGE_STREAM) and not generate.stream_complete({}, IMAGE_STREAM[:1])


# --- usage and prices -------------------------------------------------------------------------------


# The image seed's own example answer (generate and edit alike), its usage as printed there:
#   "usage": {"input_tokens": 252, "output_tokens": 4160, "total_tokens": 4412,
#             "input_tokens_details": {"image_tokens": 194, "text_tokens": 58}}
SEED_IMAGE_USAGE = {
    "input_tokens": 252,
    "output_tokens": 4160,
    "total_tokens": 4412,
    "input_tokens_details": {"image_tokens": 194, "text_tokens": 58},
}


@pytest.mark.parametrize("kind", [generate, edit])
def test_the_image_seeds_example_usage_prices_its_image_and_text_input_apart(kind: Any) -> None:
    counts = kind.token_counts(SEED_IMAGE_USAGE)
    assert counts == TokenCounts(252, 4160, 4412, image_input=194)
    # gpt-image-1's list prices: $5 text input, $10 image input, $40 output, per million tokens
    price = Price(text_input=5.0, image_input=10.0, output=40.0)
    assert price.cost(counts) == pytest.approx((58 * 5.0 + 194 * 10.0 + 4160 * 40.0) / 1e6)


def test_a_usage_on_a_chunk_of_a_choice_is_a_running_count_one_of_its_own_is_the_final() -> None:
    """A stream that stopped before every choice finished: the usage on a chunk of a choice (a gateway's
    usage on every chunk) is the count so far; a usage chunk of its own (`choices: []`) is the answer's."""
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    piece = {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}
    assert running_usage([{**piece, "usage": usage}, piece])
    assert not running_usage([piece, {"choices": [], "usage": usage}])
    assert not running_usage([piece]) and not running_usage({"choices": []})


def test_thinking_counted_only_in_the_total_is_billed_as_output() -> None:
    counts = chat.token_counts({"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 1086})
    assert counts == TokenCounts(21, 1065, 1086, reasoning=1060)
    reported = chat.token_counts(
        {
            "prompt_tokens": 21,
            "completion_tokens": 1065,
            "total_tokens": 1086,
            "completion_tokens_details": {"reasoning_tokens": 1060},
        }
    )
    assert reported == TokenCounts(21, 1065, 1086, reasoning=1060)
    # more thinking than the output, and no total that holds it: the thinking is not in the output, and
    # is billed as output all the same (it was billed at the 5 tokens of the answer's text)
    for total in ({}, {"total_tokens": 26}):
        apart = chat.token_counts(
            {
                "prompt_tokens": 21,
                "completion_tokens": 5,
                "completion_tokens_details": {"reasoning_tokens": 1060},
                **total,
            }
        )
        assert apart == TokenCounts(21, 1065, 1086, reasoning=1060), total


def test_cached_prompt_tokens_have_their_own_price() -> None:
    counts = chat.token_counts(
        {
            "prompt_tokens": 2000,
            "completion_tokens": 100,
            "total_tokens": 2100,
            "prompt_tokens_details": {"cached_tokens": 1500},
        }
    )
    assert counts.cached_input == 1500
    price = Price(text_input=1.0, image_input=1.0, output=10.0, cached_input=0.25)
    assert price.cost(counts) == pytest.approx((500 * 1.0 + 1500 * 0.25 + 100 * 10.0) / 1e6)
    assert Price(1.0, 1.0, 10.0).cost(counts) == pytest.approx((2000 * 1.0 + 100 * 10.0) / 1e6)
    found, problems = parse_prices({"m": {"text_input": 1, "output": 2, "cached_input": 0.1}}, "prices")
    assert problems == [] and found["m"].cached_input == 0.1


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ({"message": "m", "type": "invalid_request_error", "code": "content_policy_violation"}, 400),
        ({"code": 429, "message": "m", "status": "RESOURCE_EXHAUSTED"}, 429),
        ({"code": "503", "message": "m"}, 503),
        ({"message": "m", "status": "UNAVAILABLE"}, 503),
        ({"message": "m", "type": "rate_limit_exceeded"}, 429),
        ({"message": "m", "type": "server_error"}, 500),
        ({"message": "m"}, 400),
    ],
)
def test_an_error_body_sent_with_200_stands_for_its_own_status(error: dict[str, Any], status: int) -> None:
    assert _embedded_status(error) == status


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_a_truncated_jpeg_or_webp_is_a_bad_image_not_a_saved_file(fmt: str) -> None:
    """verify() reads only their header, so a cut file would pass it; they are decoded to be checked."""
    buffer = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(buffer, fmt, quality=90)
    whole = buffer.getvalue()
    from batch.kind import EncodedImage

    assert decode_images("t", (EncodedImage(base64.b64encode(whole).decode()),), generate)[0].data == whole
    cut = EncodedImage(base64.b64encode(whole[: len(whole) * 2 // 3]).decode())
    with pytest.raises(BrokenAnswerError, match="not a readable image"):
        decode_images("t", (cut,), generate)
