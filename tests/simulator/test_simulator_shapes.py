"""The simulator's answer shapes, read off the wire with plain aiohttp and checked against the published API
shape (OpenAI Images and chat completions, Gemini's OpenAI-compatible layer), not against the client."""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from PIL import Image

from batch.simulator import (
    ANSWER_SHAPES,
    RunningSimulator,
    SimConfig,
    add_arguments,
    config_from_args,
    running_simulator,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

KEY = "shape-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = "Describe a red fox in the snow"
PROMPT_TOKENS = math.ceil(len(PROMPT) / 4)
IMAGE_MODEL = "gemini-2.5-flash-image"
TOOLS = [
    {"type": "function", "function": {"name": "classify", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
]
LOW_SQUARE_TOKENS = 272  # gpt-image-1, one low-quality 1024x1024 image


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Shaped:
    """A session bound to one simulator."""

    def __init__(self, sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
        self.sim = sim
        self.http = http

    def url(self, path: str) -> str:
        return f"{self.sim.endpoint_url('ep')}{path}"

    async def generate(self, **body: Any) -> tuple[aiohttp.ClientResponse, dict[str, Any]]:
        body.setdefault("prompt", "a fox")
        body.setdefault("quality", "low")
        response = await self.http.post(self.url("/images/generations"), json=body)
        return response, await response.json()

    async def chat(self, **body: Any) -> tuple[aiohttp.ClientResponse, bytes]:
        body.setdefault("model", "gemini-2.5-flash")
        body.setdefault("messages", [{"role": "user", "content": PROMPT}])
        response = await self.http.post(self.url("/google/chat/completions"), json=body)
        return response, await response.read()

    async def chat_json(self, **body: Any) -> dict[str, Any]:
        response, raw = await self.chat(**body)
        assert response.status == 200 and response.content_type == "application/json"
        parsed: dict[str, Any] = json.loads(raw)
        return parsed

    async def chat_stream(self, **body: Any) -> list[dict[str, Any]]:
        response, raw = await self.chat(stream=True, **body)
        assert response.status == 200 and response.content_type == "text/event-stream"
        return chunks_of(raw)


@asynccontextmanager
async def shaped(*answers: str, **knobs: Any) -> AsyncIterator[Shaped]:
    config = SimConfig(api_key=KEY, answers=frozenset(answers), **knobs)
    timeout = aiohttp.ClientTimeout(total=20)
    async with (
        running_simulator(config) as sim,
        aiohttp.ClientSession(headers=AUTH, timeout=timeout) as http,
    ):
        yield Shaped(sim, http)


def sse_events(raw: bytes) -> list[dict[str, str]]:
    """Server-sent events as the spec reads them: lines end in CRLF, LF or CR; comments skipped."""
    events: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    for line in raw.decode().replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line:
            if fields:
                events.append(fields)
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = fields[name] + "\n" + value if name in fields else value
    assert not fields, "the stream ended inside an event"
    return events


def chunks_of(raw: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of a chat stream; asserts it ends with [DONE] and nothing after."""
    data = [event["data"] for event in sse_events(raw)]
    assert data[-1] == "[DONE]" and data.count("[DONE]") == 1
    return [json.loads(text) for text in data[:-1]]


def picture(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def deltas(chunks: list[dict[str, Any]], index: int = 0) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]


def finishes(chunks: list[dict[str, Any]]) -> dict[int, str]:
    return {
        c["choices"][0]["index"]: c["choices"][0]["finish_reason"]
        for c in chunks
        if c["choices"] and c["choices"][0]["finish_reason"] is not None
    }


def streamed_text(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(d["content"] for d in deltas(chunks, index) if isinstance(d.get("content"), str))


def billed(client: Shaped) -> int:
    return client.sim.state.billed_total_tokens


# --- always on: x-request-id -------------------------------------------------------------------------


async def test_every_api_answer_carries_a_unique_x_request_id_kept_in_its_record() -> None:
    async with shaped() as client:
        ok, _ = await client.generate()
        bad, _ = await client.generate(n=0)
        chat = await client.chat_json()
        stream_response, _ = await client.chat(stream=True)
        missing = await client.http.post(client.url("/images/variations"), json={})
        async with aiohttp.ClientSession() as anonymous:
            refused = await anonymous.post(client.url("/images/generations"), json={"prompt": "a fox"})
        responses = [ok, bad, stream_response, missing, refused]
        assert [r.status for r in responses] == [200, 400, 200, 404, 401]
        ids = [r.headers["x-request-id"] for r in responses]
        records = client.sim.state.records
    assert len(set(ids)) == 5 and all(i.startswith("req_sim") for i in ids)
    sent = {r.x_request_id for r in records}
    assert set(ids) <= sent and len(sent) == len(records) == 6
    (chat_record,) = [r for r in records if r.answer_id == chat["id"]]
    assert chat_record.kind == "chat" and chat_record.billed_tokens == chat["usage"]["total_tokens"]
    assert all(r.shapes == () for r in records)


# --- images -------------------------------------------------------------------------------------------


async def test_url_items_are_served_on_another_origin_and_downloads_are_recorded() -> None:
    async with shaped("url") as client:
        response, body = await client.generate(n=2, output_format="webp")
        assert response.status == 200
        items = body["data"]
        assert len(items) == 2
        api = urlsplit(client.sim.base_url)
        for item in items:
            assert set(item) == {"url", "revised_prompt"} and isinstance(item["revised_prompt"], str)
            where = urlsplit(item["url"])
            assert where.scheme == "http" and where.hostname != api.hostname and where.hostname == "localhost"
            assert where.port == api.port and where.path.endswith(".webp")
        async with aiohttp.ClientSession() as storage:  # as a client must: no key for another origin
            got = await storage.get(items[0]["url"])
            assert got.status == 200 and got.content_type == "image/webp"
            assert picture(await got.read()).format == "WEBP"
            leaked = await storage.get(items[1]["url"], headers=AUTH)
            assert leaked.status == 200
        state = client.sim.state
        assert [(d.status, d.authorized) for d in state.downloads] == [(200, False), (200, True)]
        assert [d.path for d in state.downloads] == [urlsplit(item["url"]).path for item in items]
        assert state.downloads[0].host == f"localhost:{api.port}"
        assert state.billed_requests == 1 and billed(client) == body["usage"]["total_tokens"]
        assert state.records[0].shapes == ("url",)
        stats = await (await client.http.get(f"http://127.0.0.1:{api.port}/_sim/stats")).json()
    assert stats["downloads_total"] == 2 and stats["requests_total"] == 1
    assert [d["authorized"] for d in stats["downloads"]] == [False, True]


async def test_url_redirect_links_live_on_the_api_origin_for_the_key_and_redirect_to_the_file() -> None:
    async with shaped("url_redirect") as client:
        response, body = await client.generate(n=1)
        assert response.status == 200
        (item,) = body["data"]
        api = urlsplit(client.sim.base_url)
        link = urlsplit(item["url"])
        assert (link.hostname, link.port) == (api.hostname, api.port) and link.path.startswith("/_sim/links/")
        async with aiohttp.ClientSession() as http:
            refused = await http.get(item["url"], allow_redirects=False)
            assert refused.status == 401
            moved = await http.get(item["url"], headers=AUTH, allow_redirects=False)
            assert moved.status == 302
            target = urlsplit(moved.headers["Location"])
            assert target.hostname == "localhost" and target.path.startswith("/_sim/files/")
            got = await http.get(moved.headers["Location"])
            assert got.status == 200 and picture(await got.read()).format == "PNG"
        state = client.sim.state
        seen = [(d.status, d.authorized) for d in state.downloads]
        assert seen == [(401, False), (302, True), (200, False)]
        assert state.billed_requests == 1 and state.records[0].shapes == ("url_redirect",)


async def test_url_files_host_is_configurable_and_edit_answers_urls_too() -> None:
    async with shaped("url", files_host="files.invalid") as client:
        form = aiohttp.FormData()
        form.add_field("prompt", "make it blue")
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "PNG")
        form.add_field("image", buffer.getvalue(), filename="in.png", content_type="image/png")
        response = await client.http.post(client.url("/images/edits"), data=form)
        body = await response.json()
    (item,) = body["data"]
    assert urlsplit(item["url"]).hostname == "files.invalid" and "b64_json" not in item


async def test_url_flaky_first_download_is_503_then_the_file() -> None:
    async with shaped("url_flaky") as client:
        _, body = await client.generate()
        assert billed(client) == body["usage"]["total_tokens"]
        async with aiohttp.ClientSession() as storage:
            first = await storage.get(body["data"][0]["url"])
            second = await storage.get(body["data"][0]["url"])
            assert (first.status, second.status) == (503, 200)
            assert picture(await second.read()).format == "PNG"
        assert [d.status for d in client.sim.state.downloads] == [503, 200]
        assert client.sim.state.billed_requests == 1  # a download is never a new generation


@pytest.mark.parametrize(
    ("fmt", "mime", "pil"), [("png", "image/png", "PNG"), ("webp", "image/webp", "WEBP")]
)
async def test_data_url_b64_json(fmt: str, mime: str, pil: str) -> None:
    async with shaped("data_url") as client:
        _, body = await client.generate(output_format=fmt)
    (item,) = body["data"]
    prefix = f"data:{mime};base64,"
    assert set(item) == {"b64_json"} and item["b64_json"].startswith(prefix)
    assert picture(base64.b64decode(item["b64_json"][len(prefix) :], validate=True)).format == pil


async def test_b64_lines_breaks_every_76_characters() -> None:
    async with shaped("b64_lines") as client:
        _, body = await client.generate()
    text = body["data"][0]["b64_json"]
    lines = text.split("\n")
    assert len(lines) > 2 and all(len(line) == 76 for line in lines[:-1]) and 0 < len(lines[-1]) <= 76
    assert picture(base64.b64decode("".join(lines), validate=True)).format == "PNG"


async def test_mixed_first_item_url_rest_b64() -> None:
    async with shaped("mixed") as client:
        _, three = await client.generate(n=3)
        _, one = await client.generate(n=1)
        async with aiohttp.ClientSession() as storage:
            fetched = await (await storage.get(three["data"][0]["url"])).read()
    assert set(three["data"][0]) == {"url", "revised_prompt"}
    assert [set(item) for item in three["data"][1:]] == [{"b64_json"}, {"b64_json"}]
    assert base64.b64decode(three["data"][1]["b64_json"]) != fetched
    assert [set(item) for item in one["data"]] == [{"url", "revised_prompt"}]


async def test_fewer_items_than_n_and_billed_for_what_was_made() -> None:
    async with shaped("fewer") as client:
        _, three = await client.generate(n=3)
        after_three = billed(client)
        _, one = await client.generate(n=1)
        after_one = billed(client)
    assert len(three["data"]) == 2 and three["usage"]["output_tokens"] == 2 * LOW_SQUARE_TOKENS
    assert after_three == three["usage"]["total_tokens"]
    assert len(one["data"]) == 1 and one["usage"]["output_tokens"] == LOW_SQUARE_TOKENS
    assert after_one - after_three == one["usage"]["total_tokens"]


def assert_error_200(response: aiohttp.ClientResponse, body: dict[str, Any]) -> None:
    assert response.status == 200 and set(body) == {"error"}
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "content_policy_violation")
    assert "x-request-id" in response.headers


# API.md: "The server's request id comes as an `x-request-id` header or the answer's `id`."
async def test_no_request_id_leaves_the_answers_own_id_alone() -> None:
    async with shaped("no_request_id") as client:
        response, image = await client.generate()
        chat_response, raw = await client.chat()
        stream_response, streamed = await client.chat(stream=True)
    assert response.status == chat_response.status == stream_response.status == 200
    assert "x-request-id" not in response.headers and "id" not in image
    assert "x-request-id" not in chat_response.headers and "x-request-id" not in stream_response.headers
    assert json.loads(raw)["id"].startswith("chatcmpl-")
    assert {chunk["id"] for chunk in chunks_of(streamed)} == {client.sim.state.records[-1].answer_id}
    assert all(record.x_request_id is None for record in client.sim.state.records)


async def test_no_request_id_still_gives_each_answers_linked_files_names_of_their_own() -> None:
    async with shaped("url", "no_request_id") as client:
        _, first = await client.generate(prompt="a fox")
        _, second = await client.generate(prompt="a hen")
        links = [first["data"][0]["url"], second["data"][0]["url"]]
        async with aiohttp.ClientSession() as storage:
            pictures = [await (await storage.get(link)).read() for link in links]
    assert links[0] != links[1] and pictures[0] != pictures[1]


# OpenAI's image stream (the Images API with `stream: true`) writes each finished image as an event:
#   event: image_generation.completed
#   data: {"type": "image_generation.completed", "b64_json": "...", "created_at": 1620000000,
#          "size": "1024x1024", "quality": "high", "background": "transparent", "output_format": "png",
#          "usage": {"total_tokens": 100, "input_tokens": 50, "output_tokens": 50,
#                    "input_tokens_details": {"text_tokens": 10, "image_tokens": 40}}}
async def test_sse_unasked_streams_answers_that_were_not_asked_to_stream() -> None:
    async with shaped("sse_unasked") as client:
        response = await client.http.post(
            client.url("/images/generations"), json={"prompt": "a fox", "quality": "low", "n": 2}
        )
        raw = await response.read()
        chat_response, chat_raw = await client.chat()  # stream not asked for
    assert response.status == 200 and response.content_type == "text/event-stream"
    events = [json.loads(event["data"]) for event in sse_events(raw)]
    assert [event["type"] for event in events] == ["image_generation.completed"] * 2
    for event in events:
        assert picture(base64.b64decode(event["b64_json"])).format == "PNG"
        assert event["size"] == "1024x1024" and event["output_format"] == "png"
    assert "usage" not in events[0] and events[1]["usage"]["output_tokens"] == 2 * LOW_SQUARE_TOKENS
    assert chat_response.content_type == "text/event-stream"
    chunks = chunks_of(chat_raw)
    assert streamed_text(chunks).startswith("Simulated answer 1") and finishes(chunks) == {0: "stop"}
    assert billed(client) == events[1]["usage"]["total_tokens"] + chunks[-1]["usage"]["total_tokens"]


async def test_error200_for_images_and_chat_is_not_billed() -> None:
    async with shaped("error200") as client:
        response, body = await client.generate(n=2)
        assert_error_200(response, body)
        for stream in (False, True):
            response, raw = await client.chat(stream=stream)
            assert response.content_type == "application/json"
            assert_error_200(response, json.loads(raw))
        assert billed(client) == 0 and client.sim.state.billed_requests == 0
        assert [r.shapes for r in client.sim.state.records] == [("error200",)] * 3


# --- chat ---------------------------------------------------------------------------------------------


async def test_tool_calls_plain() -> None:
    async with shaped("tool_calls") as client:
        body = await client.chat_json(tools=TOOLS, n=2)
        plain = await client.chat_json()  # no tools: an ordinary answer
    ids = set()
    for index, choice in enumerate(body["choices"]):
        message = choice["message"]
        assert choice["finish_reason"] == "tool_calls"
        assert message["role"] == "assistant" and message["content"] is None
        (call,) = message["tool_calls"]
        assert call["id"].startswith("call_") and call["type"] == "function"
        assert call["function"]["name"] == "classify"
        assert isinstance(call["function"]["arguments"], str)
        assert json.loads(call["function"]["arguments"]) == {"label": "Describe", "n": index}
        ids.add(call["id"])
    assert len(ids) == 2
    assert isinstance(plain["choices"][0]["message"]["content"], str)
    assert "tool_calls" not in plain["choices"][0]["message"]


async def test_tool_calls_streamed_in_pieces_merged_by_index() -> None:
    async with shaped("tool_calls") as client:
        chunks = await client.chat_stream(tools=TOOLS)
        plain = await client.chat_json(tools=TOOLS)
    calls = [d["tool_calls"] for d in deltas(chunks) if "tool_calls" in d]
    assert len(calls) >= 3 and all(len(c) == 1 for c in calls)
    first, *rest = (c[0] for c in calls)
    assert first["index"] == 0 and first["type"] == "function" and first["id"].startswith("call_")
    assert first["function"]["name"] == "classify" and isinstance(first["function"]["arguments"], str)
    for piece in rest:
        assert set(piece) == {"index", "function"} and set(piece["function"]) == {"arguments"}
        assert piece["index"] == 0
    arguments = "".join(c[0]["function"]["arguments"] for c in calls)
    assert json.loads(arguments) == {"label": "Describe", "n": 0}
    assert arguments == plain["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert all(not d.get("content") for d in deltas(chunks))
    assert finishes(chunks) == {0: "tool_calls"}


# Gemini's OpenAI-compatible layer (the service behind the chat seed) streams a tool call whole, in a chunk
# of its own, without `index`, with its thought signature, and ends the choice with "stop", as captured:
#   {"choices":[{"delta":{"role":"assistant","tool_calls":[{"extra_content":{"google":
#     {"thought_signature":"..."}},"function":{"arguments":"{...}","name":"read"},"id":"call_297140",
#     "type":"function"}]},"index":0}],"object":"chat.completion.chunk"}
async def test_tool_calls_unindexed_streams_every_call_whole_without_index() -> None:
    async with shaped("tool_calls_unindexed") as client:
        chunks = await client.chat_stream(tools=TOOLS)
        plain = await client.chat_json(tools=TOOLS)
    calls = [d["tool_calls"] for d in deltas(chunks) if "tool_calls" in d]
    assert [len(c) for c in calls] == [1, 1], "each call in a chunk of its own"
    streamed = [c[0] for c in calls]
    for number, (call, tool) in enumerate(zip(streamed, ("classify", "other"), strict=True)):
        assert "index" not in call and call["type"] == "function" and call["id"].endswith(f"_{number}")
        assert call["function"]["name"] == tool
        assert json.loads(call["function"]["arguments"]) == {"label": "Describe", "n": 0, "tool": tool}
        assert call["extra_content"]["google"]["thought_signature"]
    assert len({call["id"] for call in streamed}) == 2
    assert finishes(chunks) == {0: "stop"}
    (choice,) = plain["choices"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert [call["function"]["name"] for call in choice["message"]["tool_calls"]] == ["classify", "other"]


# The seed (001, "Tools and Functions"): `functions` and `function_call` are deprecated but "Remains
# compatible". Offered so, a call comes back the deprecated way (OpenAI's published shape):
#   {"role": "assistant", "content": null,
#    "function_call": {"name": "get_current_weather", "arguments": "{\n\"location\": \"Boston, MA\"\n}"}}
#   finish_reason "function_call"; streamed as delta.function_call, the name first, then arguments pieces.
FUNCTIONS = [{"name": "classify", "parameters": {"type": "object"}}, {"name": "other"}]


async def test_functions_offered_the_deprecated_way_are_called_the_deprecated_way() -> None:
    async with shaped("tool_calls") as client:
        body = await client.chat_json(functions=FUNCTIONS, n=2)
        chunks = await client.chat_stream(functions=FUNCTIONS)
    for index, choice in enumerate(body["choices"]):
        message = choice["message"]
        assert choice["finish_reason"] == "function_call"
        assert message["content"] is None and "tool_calls" not in message
        assert set(message["function_call"]) == {"name", "arguments"}
        assert message["function_call"]["name"] == "classify"
        assert json.loads(message["function_call"]["arguments"]) == {"label": "Describe", "n": index}
    pieces = [d["function_call"] for d in deltas(chunks) if "function_call" in d]
    assert len(pieces) >= 3 and pieces[0]["name"] == "classify"
    assert all(set(piece) == {"arguments"} for piece in pieces[1:])
    arguments = "".join(piece["arguments"] for piece in pieces)
    assert json.loads(arguments) == {"label": "Describe", "n": 0}
    assert not any("tool_calls" in d for d in deltas(chunks))
    assert finishes(chunks) == {0: "function_call"}


@pytest.mark.parametrize(
    ("limits", "limit"), [({"max_tokens": 64}, 64), ({"max_completion_tokens": 40}, 40), ({}, 500)]
)
async def test_length_null_plain(limits: dict[str, int], limit: int) -> None:
    async with shaped("length_null") as client:
        body = await client.chat_json(n=2, **limits)
        assert billed(client) == PROMPT_TOKENS + 2 * limit
    for choice in body["choices"]:
        assert choice["message"]["content"] is None and choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 2 * limit
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 2 * limit}
    assert usage["total_tokens"] == PROMPT_TOKENS + 2 * limit


async def test_length_null_streamed() -> None:
    async with shaped("length_null") as client:
        chunks = await client.chat_stream(max_tokens=64)
        assert billed(client) == PROMPT_TOKENS + 64
    assert all(d.get("content") is None for d in deltas(chunks))
    assert finishes(chunks) == {0: "length"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 64


async def test_message_images_plain_and_streamed() -> None:
    async with shaped("message_images") as client:
        body = await client.chat_json(model=IMAGE_MODEL)
        chunks = await client.chat_stream(model=IMAGE_MODEL)
        text_only = await client.chat_json()
    message = body["choices"][0]["message"]
    assert isinstance(message["content"], str)
    (image,) = message["images"]
    assert image["type"] == "image_url"
    url = image["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert picture(base64.b64decode(url.split(",", 1)[1], validate=True)).format == "PNG"
    streamed = [d["images"] for d in deltas(chunks) if "images" in d]
    assert streamed == [message["images"]]
    assert all(not isinstance(d.get("content"), list) for d in deltas(chunks))
    assert streamed_text(chunks) == message["content"]
    assert "images" not in text_only["choices"][0]["message"]


async def test_reasoning_content_plain_and_streamed() -> None:
    async with shaped("reasoning") as client:
        body = await client.chat_json()
        chunks = await client.chat_stream()
    message = body["choices"][0]["message"]
    reasoning, content = message["reasoning_content"], message["content"]
    assert isinstance(reasoning, str) and reasoning and isinstance(content, str)
    usage = body["usage"]
    hidden = math.ceil(len(reasoning) / 4)
    assert usage["completion_tokens_details"] == {"reasoning_tokens": hidden}
    assert usage["completion_tokens"] == math.ceil(len(content) / 4) + hidden
    kinds = ["reasoning" if "reasoning_content" in d else "content" for d in deltas(chunks) if d]
    assert kinds.count("reasoning") >= 2 and kinds == sorted(kinds, reverse=True)  # reasoning first
    assert "".join(d.get("reasoning_content", "") for d in deltas(chunks)) == reasoning
    assert streamed_text(chunks) == content and chunks[-1]["usage"] == usage


async def test_thought_parts_plain_and_streamed() -> None:
    async with shaped("thoughts") as client:
        body = await client.chat_json()
        chunks = await client.chat_stream()
        assert billed(client) == 2 * body["usage"]["total_tokens"]
    thought, answer = body["choices"][0]["message"]["content"]
    assert thought["type"] == "text" and thought["extra_part"] == {"google": {"thought": True}}
    assert answer["type"] == "text" and "extra_part" not in answer and answer["text"].startswith("Simulated")
    hidden = math.ceil(len(thought["text"]) / 4)
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": hidden}
    parts = [part for d in deltas(chunks) if "content" in d for part in d["content"]]
    assert all(isinstance(d["content"], list) for d in deltas(chunks) if "content" in d)
    assert parts[0] == thought and len(parts) >= 2
    assert "".join(part["text"] for part in parts[1:]) == answer["text"]


@pytest.mark.parametrize(("knobs", "hidden"), [({}, 1000), ({"thinking_tokens": 7}, 7)])
async def test_thinking_counted_only_in_total(knobs: dict[str, int], hidden: int) -> None:
    async with shaped("thinking_in_total", **knobs) as client:
        usage = (await client.chat_json())["usage"]
        assert billed(client) == usage["total_tokens"]
        streamed = (await client.chat_stream())[-1]["usage"]
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] + hidden
    assert streamed == usage


async def test_cached_tokens_half_the_prompt() -> None:
    async with shaped("cached") as client:
        usage = (await client.chat_json())["usage"]
        assert billed(client) == usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] == PROMPT_TOKENS
    assert usage["prompt_tokens_details"] == {"cached_tokens": PROMPT_TOKENS // 2}


async def test_no_done_ends_after_usage() -> None:
    async with shaped("no_done") as client:
        response, raw = await client.chat(stream=True, n=2)
    data = [event["data"] for event in sse_events(raw)]
    assert response.status == 200 and "[DONE]" not in data
    chunks = [json.loads(text) for text in data]
    assert finishes(chunks) == {0: "stop", 1: "stop"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


async def test_no_finish_streams_the_pieces_then_the_usage_with_no_finish_reason() -> None:
    async with shaped("no_finish", "no_done") as client:
        response, raw = await client.chat(stream=True, n=2)
    chunks = [json.loads(event["data"]) for event in sse_events(raw)]
    assert response.status == 200 and finishes(chunks) == {}
    assert streamed_text(chunks, 0).startswith("Simulated answer 1")
    assert streamed_text(chunks, 1).startswith("Simulated answer 2")
    assert all("finish_reason" not in c or c["finish_reason"] is None for ch in chunks for c in ch["choices"])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


async def default_bill(**body: Any) -> int:
    async with shaped() as client:
        await client.chat(**body)
        return billed(client)


async def test_no_usage_anywhere_but_billed_all_the_same() -> None:
    async with shaped("no_usage") as client:
        plain = await client.chat_json()
        chunks = await client.chat_stream()
        shaped_bill = billed(client)
    assert "usage" not in plain and all("usage" not in chunk for chunk in chunks)
    assert finishes(chunks) == {0: "stop"}
    assert shaped_bill == await default_bill() + await default_bill(stream=True) > 0


async def test_usage_on_every_chunk_cumulative() -> None:
    async with shaped("usage_every_chunk", "reasoning") as client:
        full = (await client.chat_json(n=2))["usage"]
        chunks = await client.chat_stream(n=2)
    assert all("usage" in chunk for chunk in chunks) and len(chunks) > 3
    completions = [chunk["usage"]["completion_tokens"] for chunk in chunks]
    assert completions == sorted(completions) and completions[0] < completions[-1]
    assert all(chunk["usage"]["prompt_tokens"] == full["prompt_tokens"] for chunk in chunks)
    assert chunks[-1]["usage"] == full and finishes(chunks) == {0: "stop", 1: "stop"}


async def test_sse_noise_comments_event_and_id_lines_crlf() -> None:
    async with shaped("sse_noise") as client:
        _, raw = await client.chat(stream=True)
    async with shaped() as plain_client:
        _, plain_raw = await plain_client.chat(stream=True)
    assert b": keep-alive\r\n" in raw and b"event: message\r\n" in raw and b"\r\nid: " in raw
    assert raw.count(b"\n") == raw.count(b"\r\n") and raw.endswith(b"\r\n\r\n")
    events = sse_events(raw)
    assert all(event["event"] == "message" and event["id"].isdigit() for event in events)
    strip = [{k: v for k, v in c.items() if k not in ("id", "created")} for c in chunks_of(raw)]
    plain = [{k: v for k, v in c.items() if k not in ("id", "created")} for c in chunks_of(plain_raw)]
    assert strip == plain


@pytest.mark.parametrize(
    ("shape", "content_type"),
    [
        ("sse_cr", "text/event-stream"),
        ("sse_bom", "text/event-stream"),
        ("done_spaced", "text/event-stream"),
        ("sse_plain", "text/plain"),
        ("sse_upper", "Text/Event-Stream; Charset=UTF-8"),
    ],
)
async def test_odd_streams_frame_the_same_events_as_the_format_allows(shape: str, content_type: str) -> None:
    """The event-stream format (WHATWG HTML, server-sent events): lines may end in CR alone, a byte order
    mark may begin the stream, the data of `data:  [DONE] ` is " [DONE] " (one space is dropped); a media
    type's name ignores case (RFC 9110). Read by the spec, the events are the default stream's."""
    async with shaped(shape) as client:
        response, raw = await client.chat(stream=True)
    async with shaped() as plain_client:
        _, plain_raw = await plain_client.chat(stream=True)
    assert response.status == 200 and response.headers["Content-Type"] == content_type
    bom = b"\xef\xbb\xbf"
    assert raw.startswith(bom) == (shape == "sse_bom")
    assert (b"\n" not in raw) == (shape == "sse_cr") and (b"\r" in raw) == (shape == "sse_cr")
    data = [event["data"] for event in sse_events(raw.removeprefix(bom))]
    assert data[-1] == (" [DONE] " if shape == "done_spaced" else "[DONE]")
    strip = [{k: v for k, v in json.loads(c).items() if k not in ("id", "created")} for c in data[:-1]]
    plain = [{k: v for k, v in c.items() if k not in ("id", "created")} for c in chunks_of(plain_raw)]
    assert strip == plain


# --- configuration and flags --------------------------------------------------------------------------


def test_answer_shapes_are_validated() -> None:
    assert len(set(ANSWER_SHAPES)) == len(ANSWER_SHAPES) == 33
    with pytest.raises(ValueError, match="unknown answer shape 'nope'"):
        SimConfig(answers=frozenset({"nope"}))
    with pytest.raises(ValueError, match="cannot be on together"):
        SimConfig(answers=frozenset({"no_usage", "usage_every_chunk"}))
    assert SimConfig(answers={"url", "reasoning"}).answers == frozenset({"url", "reasoning"})


def test_answer_flag_reaches_the_config_and_refuses_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="simulate")
    add_arguments(parser)
    args = parser.parse_args(["--answer", "url", "--answer", "reasoning", "--files-host", "cdn.test"])
    config = config_from_args(args)
    assert config.answers == frozenset({"url", "reasoning"}) and config.files_host == "cdn.test"
    assert config_from_args(parser.parse_args([])).answers == frozenset()
    with pytest.raises(SystemExit):
        parser.parse_args(["--answer", "nope"])
    message = capsys.readouterr().err
    assert "unknown answer shape 'nope'" in message and ", ".join(ANSWER_SHAPES) in message
    assert all(name in parser.format_help() for name in ANSWER_SHAPES)
