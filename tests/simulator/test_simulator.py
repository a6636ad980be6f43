"""The MaaS simulator, through a real aiohttp client on a loopback port (port 0)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import email.utils
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image, ImageStat

from batch.simulator import (
    FAULT_NAMES,
    RunningSimulator,
    SimConfig,
    SimState,
    add_arguments,
    config_from_args,
    running_simulator,
    simulator_in_thread,
)

KEY = "sim-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ENDPOINT = "ep-images"
INVALID = "invalid_value"
RGBA = "RGBA"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Client:
    """A session bound to one simulator, with the API's three calls."""

    def __init__(self, sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
        self.sim = sim
        self.http = http

    def url(self, path: str, endpoint: str = ENDPOINT) -> str:
        return f"{self.sim.endpoint_url(endpoint)}{path}"

    async def generate(self, body: dict[str, Any], **kw: Any) -> aiohttp.ClientResponse:
        return await self.http.post(self.url("/images/generations"), json=body, **kw)

    async def edit(self, form: aiohttp.FormData, **kw: Any) -> aiohttp.ClientResponse:
        return await self.http.post(self.url("/images/edits"), data=form, **kw)

    async def chat(self, body: dict[str, Any], **kw: Any) -> aiohttp.ClientResponse:
        return await self.http.post(self.url("/google/chat/completions"), json=body, **kw)


@asynccontextmanager
async def simulated(state: SimState | None = None, **knobs: Any) -> AsyncIterator[Client]:
    knobs.setdefault("api_key", KEY)
    async with (
        running_simulator(SimConfig(**knobs), state=state) as sim,
        aiohttp.ClientSession(headers=AUTH) as http,
    ):
        yield Client(sim, http)


def picture(
    size: tuple[int, int] = (64, 48), fmt: str = "PNG", mode: str = "RGB", colour: Any = None
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (200, 30, 30) if colour is None else colour).save(buffer, fmt)
    return buffer.getvalue()


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    image.load()
    return image


def edit_form(
    images: list[bytes] | None = None, field: str = "image", mask: bytes | None = None, **text: str
) -> aiohttp.FormData:
    form = aiohttp.FormData()
    text.setdefault("prompt", "make it blue")
    for name, value in text.items():
        form.add_field(name, value)
    for number, data in enumerate([picture()] if images is None else images):
        form.add_field(field, io.BytesIO(data), filename=f"in{number}.png", content_type="image/png")
    if mask is not None:
        form.add_field("mask", io.BytesIO(mask), filename="mask.png", content_type="image/png")
    return form


def chat_body(text: str = "Describe a red fox in the snow", **extra: Any) -> dict[str, Any]:
    return {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": text}], **extra}


async def error_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await response.json()
    error: dict[str, Any] = body["error"]
    return error


# --- auth, routing ------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "header",
    [None, "Token abc", "Bearer", "Bearer ", "bearer wrong-key", "Bearer sim-test-key extra"],
)
async def test_bad_or_missing_key_is_401_without_echo(header: str | None) -> None:
    async with simulated() as client:
        headers = {"Authorization": header} if header is not None else {}
        async with aiohttp.ClientSession(headers=headers) as http:
            response = await http.post(client.url("/images/generations"), json={"prompt": "a fox"})
            text = await response.text()
    assert response.status == 401
    assert json.loads(text)["error"]["code"] == "invalid_api_key"
    assert KEY not in text and "wrong-key" not in text


@pytest.mark.anyio
async def test_forbidden_key_is_403_and_any_key_works_without_api_key() -> None:
    async with simulated(api_key=None, forbidden_keys=frozenset({"banned"})) as client:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer banned"}) as http:
            refused = await http.post(client.url("/images/generations"), json={"prompt": "a fox"})
            assert refused.status == 403
            assert "banned" not in await refused.text()
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer anything"}) as http:
            accepted = await http.post(client.url("/images/generations"), json={"prompt": "a fox"})
            assert accepted.status == 200


@pytest.mark.anyio
async def test_unknown_path_and_unknown_endpoint_are_404_json() -> None:
    async with simulated(endpoints=frozenset({ENDPOINT})) as client:
        response = await client.http.post(client.url("/images/variations"), json={})
        assert response.status == 404
        assert "error" in await response.json()
        response = await client.http.post(
            client.url("/images/generations", endpoint="nope"), json={"prompt": "a fox"}
        )
        assert response.status == 404
        assert (await error_of(response))["code"] == "DeploymentNotFound"
        assert (await client.generate({"prompt": "a fox"})).status == 200
        assert [r.kind for r in client.sim.state.records] == ["other", "generate", "generate"]


# --- generate -----------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({}, "prompt", "missing_required_parameter"),
        ({"prompt": 12}, "prompt", "invalid_type"),
        ({"prompt": "x" * 32_001}, "prompt", "invalid_value"),
        ({"prompt": "   "}, "prompt", "invalid_value"),
        ({"prompt": "p", "n": 0}, "n", "invalid_value"),
        ({"prompt": "p", "n": 11}, "n", "invalid_value"),
        ({"prompt": "p", "n": "3"}, "n", "invalid_type"),
        ({"prompt": "p", "n": True}, "n", "invalid_type"),
        ({"prompt": "p", "n": 2.0}, "n", "invalid_type"),
        ({"prompt": "p", "size": "512x512"}, "size", "invalid_value"),
        ({"prompt": "p", "size": 1024}, "size", "invalid_type"),
        ({"prompt": "p", "quality": "ultra"}, "quality", "invalid_value"),
        ({"prompt": "p", "background": "none"}, "background", "invalid_value"),
        ({"prompt": "p", "background": "transparent", "output_format": "jpeg"}, "background", INVALID),
        ({"prompt": "p", "output_format": "gif"}, "output_format", "invalid_value"),
        ({"prompt": "p", "output_compression": 101}, "output_compression", "invalid_value"),
        ({"prompt": "p", "output_compression": -1}, "output_compression", "invalid_value"),
        ({"prompt": "p", "output_compression": "50"}, "output_compression", "invalid_type"),
        ({"prompt": "p", "moderation": "high"}, "moderation", "invalid_value"),
        ({"prompt": "p", "model": 5}, "model", "invalid_type"),
        ({"prompt": "p", "user": ["u"]}, "user", "invalid_type"),
        ({"prompt": "p", "style": "vivid"}, "style", "unknown_parameter"),
        (["prompt"], None, "invalid_type"),
    ],
)
async def test_generate_validation(body: Any, param: str | None, code: str) -> None:
    async with simulated() as client:
        response = await client.generate(body)
        assert response.status == 400
        error = await error_of(response)
        assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
        assert client.sim.state.billed_total_tokens == 0


@pytest.mark.anyio
async def test_generate_invalid_json_and_longest_prompt() -> None:
    async with simulated() as client:
        response = await client.http.post(client.url("/images/generations"), data=b"{not json")
        assert response.status == 400
        assert (await error_of(response))["code"] == "invalid_json"
        assert (await client.generate({"prompt": "y" * 32_000, "quality": "low"})).status == 200


@pytest.mark.anyio
async def test_moderation_blocks_generate_edit_and_chat() -> None:
    blocked = {"type": "invalid_request_error", "code": "moderation_blocked"}
    async with simulated() as client:
        for response in (
            await client.generate({"prompt": "Something FORBIDDEN here"}),
            await client.edit(edit_form(prompt="a forbidden edit")),
            await client.chat(chat_body("tell me the forbidden thing")),
        ):
            assert response.status == 400
            error = await error_of(response)
            assert {k: error[k] for k in blocked} == blocked
            assert error["message"] == "Your request was rejected by the safety system."
        # Only the user's words count, and only the whole word.
        system = {"role": "system", "content": "forbidden topics: none"}
        allowed = chat_body("forbiddenness is fine")
        allowed["messages"].insert(0, system)
        assert (await client.chat(allowed)).status == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fields", "size", "fmt", "mode"),
    [
        ({}, (1024, 1024), "PNG", "RGB"),
        (
            {"size": "1536x1024", "output_format": "jpeg", "output_compression": 9},
            (1536, 1024),
            "JPEG",
            "RGB",
        ),
        (
            {"size": "1024x1536", "output_format": "webp", "background": "transparent"},
            (1024, 1536),
            "WEBP",
            RGBA,
        ),
        ({"size": "auto", "background": "transparent"}, (1024, 1024), "PNG", "RGBA"),
    ],
)
async def test_generate_returns_real_images(
    fields: dict[str, Any], size: tuple[int, int], fmt: str, mode: str
) -> None:
    async with simulated() as client:
        response = await client.generate({"prompt": "A black fox in an autumn forest", "n": 2, **fields})
        assert response.status == 200
        body = await response.json()
    assert isinstance(body["created"], int) and len(body["data"]) == 2
    images = [decode(item["b64_json"]) for item in body["data"]]
    for image in images:
        assert (image.format, image.size, image.mode) == (fmt, size, mode)
        if mode == "RGBA":
            low, _high = image.getchannel("A").getextrema()
            assert low == 0  # a transparent area
    assert images[0].tobytes() != images[1].tobytes()  # n pictures, not one repeated


@pytest.mark.anyio
async def test_jpeg_compression_and_distinct_prompts() -> None:
    async with simulated() as client:

        async def first(body: dict[str, Any]) -> str:
            response = await client.generate(body)
            data: str = (await response.json())["data"][0]["b64_json"]
            return data

        rough = await first({"prompt": "a fox", "output_format": "jpeg", "output_compression": 5})
        fine = await first({"prompt": "a fox", "output_format": "jpeg", "output_compression": 100})
        assert len(rough) < len(fine)
        assert decode(await first({"prompt": "一只狐狸 🦊 in snow"})).size == (1024, 1024)
        fox, owl = await first({"prompt": "a fox"}), await first({"prompt": "an owl"})
        assert decode(fox).getpixel((1, 1)) != decode(owl).getpixel((1, 1))
        assert await first({"prompt": "a fox"}) == fox  # same request, same picture


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("size", "quality", "n", "output"),
    [
        ("1024x1024", "low", 1, 272),
        ("1024x1024", "medium", 2, 2 * 1056),
        ("auto", "high", 1, 4160),
        ("1024x1536", "low", 3, 3 * 408),
        ("1536x1024", "auto", 1, 1584),
        ("1536x1024", "high", 1, 6240),
    ],
)
async def test_generate_usage(size: str, quality: str, n: int, output: int) -> None:
    prompt = "p" * 41  # 11 text tokens
    async with simulated() as client:
        response = await client.generate({"prompt": prompt, "size": size, "quality": quality, "n": n})
        usage = (await response.json())["usage"]
        assert client.sim.state.billed_total_tokens == 11 + output
    assert usage == {
        "input_tokens": 11,
        "output_tokens": output,
        "total_tokens": 11 + output,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": 11},
    }


@pytest.mark.anyio
async def test_realistic_images_are_megabytes_and_cached() -> None:
    async with simulated(image_mode="realistic", seed=3) as client:
        response = await client.generate({"prompt": "a fox", "size": "1536x1024"})
        data = (await response.json())["data"][0]["b64_json"]
        raw = base64.b64decode(data)
        assert 1_500_000 <= len(raw) <= 3_200_000
        assert decode(data).size == (1536, 1024)
        again = await client.generate({"prompt": "another prompt", "size": "1536x1024"})
        assert (await again.json())["data"][0]["b64_json"] == data


# --- edit ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_edit_derives_from_first_image_with_usage() -> None:
    red, blue = picture((300, 200), colour=(220, 0, 0)), picture((300, 200), colour=(0, 0, 220))
    async with simulated() as client:
        response = await client.edit(edit_form([red], prompt="p" * 40, quality="low"))
        assert response.status == 200
        body = await response.json()
        blue_body = await (await client.edit(edit_form([blue], prompt="p" * 40))).json()
    image = decode(body["data"][0]["b64_json"])
    assert (image.format, image.size) == ("PNG", (1024, 1024))
    r, _g, b = ImageStat.Stat(image.convert("RGB")).mean
    assert r > b  # visibly the red input, tinted
    assert body["data"][0]["b64_json"] != blue_body["data"][0]["b64_json"]
    # 300x200 fits in one 512 px tile: 65 + 129; output 1024x1024 low: 272.
    assert body["usage"] == {
        "input_tokens": 10 + 194,
        "output_tokens": 272,
        "total_tokens": 10 + 194 + 272,
        "input_tokens_details": {"image_tokens": 194, "text_tokens": 10},
    }


@pytest.mark.anyio
@pytest.mark.parametrize("field", ["image[]", "image"])
async def test_edit_several_images_and_options(field: str) -> None:
    images = [picture((1024, 1024)), picture((2048, 512), fmt="JPEG"), picture((100, 100), fmt="WEBP")]
    async with simulated() as client:
        form = edit_form(images, field=field, n="2", size="1024x1536", output_format="webp")
        response = await client.edit(form)
        assert response.status == 200, await response.text()
        body = await response.json()
    assert len(body["data"]) == 2
    assert {decode(item["b64_json"]).format for item in body["data"]} == {"WEBP"}
    assert decode(body["data"][0]["b64_json"]).size == (1024, 1536)
    # 1024x1024: 4 tiles; 2048x512 -> 1024x256: 2 tiles; 100x100: 1 tile.
    tokens = (65 + 4 * 129) + (65 + 2 * 129) + (65 + 129)
    assert body["usage"]["input_tokens_details"]["image_tokens"] == tokens


@pytest.mark.anyio
async def test_edit_with_mask_only_changes_masked_area() -> None:
    mask = Image.new("RGBA", (64, 48), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 48))  # edit the left half only
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    source = picture((64, 48), colour=(10, 200, 10))
    async with simulated() as client:
        response = await client.edit(edit_form([source], mask=buffer.getvalue()))
        assert response.status == 200, await response.text()
        image = decode((await response.json())["data"][0]["b64_json"]).convert("RGB")
    assert image.getpixel((1000, 500)) == (10, 200, 10)  # kept
    assert image.getpixel((20, 20)) != (10, 200, 10)  # edited


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("form", "param", "code"),
    [
        (lambda: edit_form([]), "image", "missing_required_parameter"),
        (lambda: edit_form([picture((8, 8))] * 17, field="image[]"), "image", "invalid_value"),
        (lambda: edit_form([b"this is text, named like a png"]), "image", "invalid_image"),
        (lambda: edit_form([picture(fmt="GIF", mode="P", colour=1)]), "image", "invalid_value"),
        (lambda: edit_form([picture(), b"\0" * (25 * 1024 * 1024)]), "image", "invalid_value"),
        (lambda: edit_form(mask=picture((10, 10), mode="RGBA")), "mask", "invalid_value"),
        (lambda: edit_form(mask=picture((64, 48), mode="RGB")), "mask", "invalid_value"),
        (lambda: edit_form(mask=picture((64, 48), fmt="WEBP", mode="RGBA")), "mask", "invalid_value"),
        (lambda: edit_form(mask=b"GIF89a not really"), "mask", "invalid_image"),
        (lambda: edit_form(mask=b"\0" * (4 * 1024 * 1024)), "mask", "invalid_value"),
        (lambda: edit_form(n="two"), "n", "invalid_type"),
        (lambda: edit_form(n="11"), "n", "invalid_value"),
        (lambda: edit_form(output_compression="1.5"), "output_compression", "invalid_type"),
        (lambda: edit_form(size="9x9"), "size", "invalid_value"),
        (lambda: edit_form(quality="best"), "quality", "invalid_value"),
        (lambda: edit_form(background="transparent", output_format="jpeg"), "background", "invalid_value"),
        (lambda: edit_form(output_format="gif"), "output_format", "invalid_value"),
        (lambda: edit_form(moderation="none"), "moderation", "invalid_value"),
        (lambda: edit_form(style="vivid"), "style", "unknown_parameter"),
        (lambda: edit_form(prompt="z" * 32_001), "prompt", "invalid_value"),
    ],
)
async def test_edit_validation(form: Any, param: str, code: str) -> None:
    async with simulated() as client:
        response = await client.edit(form())
        assert response.status == 400, await response.text()
        error = await error_of(response)
        assert (error["param"], error["code"]) == (param, code)


@pytest.mark.anyio
async def test_edit_needs_multipart_and_a_prompt() -> None:
    async with simulated() as client:
        response = await client.http.post(client.url("/images/edits"), json={"prompt": "x"})
        assert response.status == 400
        form = aiohttp.FormData()
        form.add_field("image", picture(), filename="a.png", content_type="image/png")
        response = await client.edit(form)
        assert response.status == 400
        assert (await error_of(response))["param"] == "prompt"


# --- chat ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_chat_plain_answer_and_usage() -> None:
    text = "Describe a red fox in the snow please, briefly"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    async with simulated() as client:
        response = await client.chat({"model": "gemini-2.5-flash", "messages": messages})
        assert response.status == 200
        body = await response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "gemini-2.5-flash" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    content = choice["message"]["content"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert content == (
        'Simulated answer 1 from gemini-2.5-flash: you said "Describe a red fox in the" and sent 0 images.'
    )
    prompt_tokens = math.ceil(len("Be brief." + text) / 4)
    completion = math.ceil(len(content) / 4)
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


@pytest.mark.anyio
async def test_chat_n_and_max_tokens() -> None:
    async with simulated() as client:
        two = await (await client.chat(chat_body(n=2))).json()
        cut = await (await client.chat(chat_body(max_tokens=3))).json()
        cut2 = await (await client.chat(chat_body(max_tokens=50, max_completion_tokens=2))).json()
    assert [c["index"] for c in two["choices"]] == [0, 1]
    assert two["choices"][1]["message"]["content"].startswith("Simulated answer 2 ")
    assert two["usage"]["completion_tokens"] == sum(
        math.ceil(len(c["message"]["content"]) / 4) for c in two["choices"]
    )
    assert cut["choices"][0]["message"]["content"] == "Simulated an"
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 3
    assert cut2["choices"][0]["message"]["content"] == "Simulate"


@pytest.mark.anyio
async def test_chat_input_images_count_and_image_model_answers_with_png() -> None:
    data_url = "data:image/png;base64," + base64.b64encode(picture()).decode()
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": data_url}},
        {"type": "image_url", "image_url": {"url": "gs://bucket/fox.jpg"}},
    ]
    body = {"model": "gemini-2.5-flash-image", "messages": [{"role": "user", "content": content}]}
    async with simulated() as client:
        response = await client.chat(body)
        assert response.status == 200, await response.text()
        answer = await response.json()
    parts = answer["choices"][0]["message"]["content"]
    assert parts[0]["type"] == "text" and "sent 2 images" in parts[0]["text"]
    url = parts[1]["image_url"]["url"]
    assert parts[1]["type"] == "image_url" and url.startswith("data:image/png;base64,")
    image = decode(url.split(",", 1)[1])
    assert (image.format, image.size) == ("PNG", (1024, 1024))
    usage = answer["usage"]
    assert usage["prompt_tokens"] == math.ceil(len("What is in these?") / 4) + 2 * 258
    assert usage["completion_tokens"] == math.ceil(len(parts[0]["text"]) / 4) + 1290


async def read_sse(response: aiohttp.ClientResponse) -> list[str]:
    text = await response.text()
    assert text.endswith("\n\n")
    events = text.split("\n\n")[:-1]
    assert all(event.startswith("data: ") for event in events)
    return [event.removeprefix("data: ") for event in events]


@pytest.mark.anyio
async def test_chat_stream_assembles_with_usage_and_done() -> None:
    async with simulated() as client:
        plain = await (await client.chat(chat_body(n=2))).json()
        response = await client.chat(chat_body(n=2, stream=True, stream_options={"include_usage": True}))
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = await read_sse(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    *content_chunks, last = chunks
    assert last["choices"] == [] and last["usage"] == plain["usage"]
    texts = ["", ""]
    finishes = {}
    for chunk in content_chunks:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["delta"].get("content", "")
        if choice["finish_reason"] is not None:
            finishes[choice["index"]] = choice["finish_reason"]
    assert texts == [c["message"]["content"] for c in plain["choices"]]
    assert finishes == {0: "stop", 1: "stop"}
    assert content_chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len(content_chunks) >= 6  # several pieces per choice


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages[0].content[0].type"),
        ({"model": None}, "model"),
        ({"model": 3}, "model"),
        ({"n": 0}, "n"),
        ({"n": 9}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": "5"}, "max_completion_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"stream": "yes"}, "stream"),
    ],
)
async def test_chat_validation(change: dict[str, Any], param: str) -> None:
    body = chat_body() | change
    body = {k: v for k, v in body.items() if v is not None}
    async with simulated() as client:
        response = await client.chat(body)
        assert response.status == 400, await response.text()
        assert (await error_of(response))["param"] == param


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64," + base64.b64encode(b"not an image at all").decode(),
        "data:image/png;base64,@@@not base64@@@",
        "https://example.com/fox.png",
    ],
)
async def test_chat_bad_image_url_is_400(url: str) -> None:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    async with simulated() as client:
        response = await client.chat({"model": "g", "messages": [{"role": "user", "content": content}]})
        assert response.status == 400
        assert (await error_of(response))["param"] == "messages[0].content[0].image_url.url"


@pytest.mark.anyio
async def test_chat_ignores_extra_fields() -> None:
    extras = {
        "stop": ["\n"],
        "seed": 3,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "auto",
        "presence_penalty": 0.5,
        "frequency_penalty": 0.1,
        "extra_body": {"google": {"thinking_config": {"thinking_budget": 0}}},
        "something_new": True,
        "temperature": 2,
        "top_p": 0,
    }
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "content": "42", "tool_call_id": "x"},
        {"role": "user", "content": [{"type": "text", "text": "and now?"}]},
    ]
    async with simulated() as client:
        response = await client.chat({"model": "g", "messages": messages, **extras})
        assert response.status == 200, await response.text()
        assert '"and now?"' in (await response.json())["choices"][0]["message"]["content"]


# --- limits -------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
async def test_rps_window_per_key_with_retry_after() -> None:
    clock = FakeClock()
    async with simulated(state=SimState(clock=clock), rps=2, api_key=None) as client:

        async def at(moment: float, key: str = "a") -> aiohttp.ClientResponse:
            clock.now = 1000.0 + moment
            headers = {"Authorization": f"Bearer {key}"}
            return await client.generate({"prompt": "a fox", "quality": "low"}, headers=headers)

        assert (await at(0)).status == 200
        assert (await at(0.5)).status == 200
        refused = await at(0.9)
        assert refused.status == 429 and refused.headers["Retry-After"] == "1"
        assert "2 requests per second" in (await error_of(refused))["message"]
        assert (await at(0.9, key="b")).status == 200  # the window is per key
        assert (await at(1.01)).status == 200  # the first one left the second


@pytest.mark.anyio
async def test_rpm_window_retry_after_and_refusals_not_counted() -> None:
    clock = FakeClock()
    async with simulated(state=SimState(clock=clock), rpm=2) as client:

        async def at(moment: float, headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
            clock.now = 1000.0 + moment
            return await client.generate({"prompt": "a fox", "quality": "low"}, headers=headers)

        assert (await at(0)).status == 200
        assert (await at(10)).status == 200
        refused = await at(20)
        assert refused.status == 429 and refused.headers["Retry-After"] == "40"
        assert (await error_of(refused))["code"] == "rate_limit_exceeded"
        assert (await at(30)).headers["Retry-After"] == "30"
        assert (await at(30, {"Authorization": "Bearer other-key"})).status == 401
    async with simulated(state=SimState(clock=clock), rpm=2, api_key=None) as client:
        clock.now = 1000.0
        assert (await client.generate({"prompt": "a"})).status == 200
        clock.now = 1030.0
        assert (await client.generate({"prompt": "a"})).status == 200
        clock.now = 1040.0
        assert (await client.generate({"prompt": "a"})).status == 429
        other = await client.generate({"prompt": "a"}, headers={"Authorization": "Bearer other-key"})
        assert other.status == 200  # the window is per key
        clock.now = 1060.0  # the first request leaves the window; the refused one never entered it
        assert (await client.generate({"prompt": "a"})).status == 200
        late = await client.generate({"prompt": "a"})
        assert late.status == 429 and late.headers["Retry-After"] == "30"


@pytest.mark.anyio
async def test_max_inflight_refuses_extra_requests_and_changes_at_run_time() -> None:
    # Held requests wait out a long latency; the test lets go of them by cancelling, never by waiting.
    async with simulated(max_inflight=1, latency=30.0) as client:
        state = client.sim.state
        first = asyncio.create_task(client.generate({"prompt": "a fox"}))
        await state.wait_for(lambda s: s.inflight == 1)
        refused = await client.generate({"prompt": "a fox"})
        assert refused.status == 429 and "Retry-After" not in refused.headers
        assert (await error_of(refused))["code"] == "concurrency_limit_exceeded"
        state.set_max_inflight(2)
        second = asyncio.create_task(client.generate({"prompt": "a fox"}))
        await state.wait_for(lambda s: s.inflight == 2)
        assert state.max_inflight_seen == 2 and state.max_inflight == 2
        first.cancel()
        second.cancel()
        await state.wait_for(lambda s: s.requests_total == 3)
        assert state.status_counts() == {429: 1, 499: 2} and state.billed_total_tokens == 0
        for task in (first, second):
            with pytest.raises(asyncio.CancelledError):
                await task


@pytest.mark.anyio
async def test_random_429_and_5xx() -> None:
    async with simulated(rate_429=1.0, retry_after=0.5) as client:
        response = await client.generate({"prompt": "a fox"})
        assert response.status == 429 and response.headers["Retry-After"] == "0.5"
    async with simulated(error_rate=1.0, seed=7) as client:
        kinds = set()
        for _ in range(12):
            response = await client.generate({"prompt": "a fox"})
            assert response.status in (500, 502, 503, 504)
            if response.content_type == "text/html":
                assert "<html>" in await response.text()
                kinds.add("html")
            else:
                assert (await error_of(response))["type"] == "server_error"
                kinds.add("json")
        assert kinds == {"html", "json"}
        assert client.sim.state.billed_total_tokens == 0


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_random_5xx_carry_a_retry_after_on_demand() -> None:
    """`--error-retry-after S`: a 503's "come back in S s" (RFC 9110 lets a 503 say when), on the JSON
    errors and the gateway's pages alike, in seconds or as a date; none by default."""
    async with simulated(error_rate=1.0, seed=7, error_retry_after=2.5) as client:
        kinds = set()
        for _ in range(12):
            response = await client.generate({"prompt": "a fox"})
            assert response.status >= 500 and response.headers["Retry-After"] == "2.5"
            kinds.add(response.content_type)
        assert kinds == {"text/html", "application/json"}
    async with simulated(error_rate=1.0, error_retry_after=30, retry_after_date=True) as client:
        response = await client.generate({"prompt": "a fox"})
        assert response.headers["Retry-After"].endswith(" GMT")
    async with simulated(error_rate=1.0) as client:
        assert "Retry-After" not in (await client.generate({"prompt": "a fox"})).headers
    with pytest.raises(ValueError, match="error_retry_after"):
        SimConfig(error_retry_after=-1)


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_a_429_storm_answers_every_request_429_until_its_seconds_from_the_first_are_over() -> None:
    """A storm (`--storm-429 S`): every request 429, with Retry-After, for S seconds from the first request;
    then the simulator answers as usual. Nothing in it is billed."""
    async with simulated(storm_429=0.3, retry_after=0.1) as client:
        first = time.monotonic()
        response = await client.generate({"prompt": "a fox"})
        began = (first, time.monotonic())  # the storm began between these, as the first request arrived
        statuses = [response.status]
        assert response.status == 429 and response.headers["Retry-After"] == "0.1"
        while response.status == 429:
            sent = time.monotonic()
            response = await client.generate({"prompt": "a fox"})
            statuses.append(response.status)
            assert response.status == 200 or sent < began[1] + 0.3  # refused only in the storm
        assert time.monotonic() >= began[0] + 0.3 and statuses[-1] == 200  # answered only after it
        state = client.sim.state
        assert state.status_counts() == {429: len(statuses) - 1, 200: 1}
        assert state.billed_total_tokens == state.records[-1].billed_tokens > 0
    with pytest.raises(ValueError, match="storm_429"):
        SimConfig(storm_429=-1)


# API.md, "Errors": 408/409/429 (429 may carry `Retry-After` in seconds or as an HTTP date). The simulator
# sends the other retryable statuses, and the date form, on demand.
@pytest.mark.anyio
async def test_408_409_and_a_retry_after_written_as_an_http_date() -> None:
    async with simulated(rate_429=1.0, retry_after=2, retry_after_date=True) as client:
        before = time.time()
        response = await client.generate({"prompt": "a fox"})
        assert response.status == 429
        when = email.utils.parsedate_to_datetime(response.headers["Retry-After"])
        assert when.tzinfo is not None and response.headers["Retry-After"].endswith(" GMT")
        assert before + 2 <= when.timestamp() <= time.time() + 3
    async with simulated(error_rate=1.0, error_statuses=(408, 409), seed=7) as client:
        seen = set()
        for _ in range(12):
            response = await client.generate({"prompt": "a fox"})
            if response.content_type == "text/html":
                assert f"<title>{response.status} " in await response.text()
            else:
                assert (await error_of(response))["type"] in ("timeout", "conflict")
            seen.add(response.status)
        assert seen == {408, 409} and client.sim.state.billed_total_tokens == 0
    with pytest.raises(ValueError, match="error_statuses"):
        SimConfig(error_statuses=(404,))


# Gemini's OpenAI-compatible layer writes errors as Google's APIs do (as captured from it):
#   [{"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
#               "status": "RESOURCE_EXHAUSTED"}}]
@pytest.mark.anyio
async def test_google_errors_are_a_list_of_one_with_code_message_and_status() -> None:
    async with simulated(rate_429=1.0, google_errors=True) as client:
        response = await client.generate({"prompt": "a fox"})
        assert response.status == 429 and "Retry-After" in response.headers
        assert json.loads(await response.read()) == [
            {
                "error": {
                    "code": 429,
                    "message": "Rate limit exceeded, please retry later.",
                    "status": "RESOURCE_EXHAUSTED",
                }
            }
        ]
    async with simulated(error_rate=1.0, google_errors=True, seed=7) as client:
        for _ in range(6):
            response = await client.generate({"prompt": "a fox"})
            if response.content_type == "application/json":
                [only] = json.loads(await response.read())
                assert only["error"]["code"] == response.status and only["error"]["status"]


@pytest.mark.anyio
async def test_latency_and_jitter() -> None:
    async with simulated(latency=0.05, latency_jitter=0.2, seed=1) as client:
        await client.generate({"prompt": "a fox"})
        await read_sse(await client.chat(chat_body(stream=True)))
        generate, stream = client.sim.state.records
    assert generate.elapsed >= 0.04 and stream.elapsed >= 0.04


# --- faults and billing -------------------------------------------------------------------------------


async def one_fault(fault: str, body: dict[str, Any] | None = None, **knobs: Any) -> tuple[Any, Any]:
    """Send one generate (or chat, if body has messages) under a certain fault; (outcome, record)."""
    body = body or {"prompt": "a fox", "quality": "low"}
    async with simulated(faults={fault: 1.0}, **knobs) as client:
        try:
            call = client.chat if "messages" in body else client.generate
            response = await call(body)
            outcome: Any = (response.status, response.headers.copy(), await response.read())
        except aiohttp.ClientError as exc:
            outcome = exc
        await client.sim.state.wait_for(lambda s: s.requests_total == 1)
        (record,) = client.sim.state.records
        assert client.sim.state.billed_total_tokens == record.billed_tokens
    return outcome, record


@pytest.mark.anyio
async def test_fault_reset_and_truncate() -> None:
    outcome, record = await one_fault("reset")
    assert isinstance(outcome, aiohttp.ClientPayloadError)
    assert (record.status, record.fault, record.billed_tokens) == (200, "reset", 10 + 272 - 8)
    (status, headers, body), record = await one_fault("truncate")
    assert status == 200 and int(headers["Content-Length"]) == len(body)
    with pytest.raises(ValueError):
        json.loads(body)
    assert record.billed_tokens > 0


@pytest.mark.anyio
@pytest.mark.parametrize(("fault", "content_type"), [("html200", "text/html"), ("not_json", "text/plain")])
async def test_fault_not_json_answers_are_not_billed(fault: str, content_type: str) -> None:
    (status, headers, body), record = await one_fault(fault)
    assert status == 200 and headers["Content-Type"].startswith(content_type)
    with pytest.raises(ValueError):
        json.loads(body)
    assert (record.fault, record.billed_tokens) == (fault, 0)


@pytest.mark.anyio
async def test_fault_no_data_bad_base64_bad_image_bomb() -> None:
    (_, _, body), record = await one_fault("no_data")
    parsed = json.loads(body)
    assert "data" not in parsed and parsed["usage"]["total_tokens"] == record.billed_tokens > 0
    (_, _, body), record = await one_fault("bad_base64")
    with pytest.raises(binascii.Error):
        base64.b64decode(json.loads(body)["data"][0]["b64_json"], validate=True)
    assert record.billed_tokens > 0
    (_, _, body), record = await one_fault("bad_image")
    with pytest.raises(OSError):
        decode(json.loads(body)["data"][0]["b64_json"])
    assert record.billed_tokens > 0
    (_, _, body), record = await one_fault("bomb")
    raw = base64.b64decode(json.loads(body)["data"][0]["b64_json"])
    assert raw.startswith(b"\x89PNG") and int.from_bytes(raw[16:20], "big") == 30000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(raw))
    assert record.billed_tokens > 0


@pytest.mark.anyio
async def test_fault_image_faults_in_image_chat() -> None:
    body = {"model": "gemini-2.5-flash-image", "messages": [{"role": "user", "content": "draw a fox"}]}
    (_, _, raw), record = await one_fault("bad_image", body)
    url = json.loads(raw)["choices"][0]["message"]["content"][1]["image_url"]["url"]
    with pytest.raises(OSError):
        decode(url.split(",", 1)[1])
    assert record.fault == "bad_image" and record.billed_tokens > 0
    (_, _, raw), record = await one_fault("bad_image", chat_body())  # a text model has no image to break
    assert record.fault is None and "choices" in json.loads(raw)


@pytest.mark.anyio
async def test_fault_quota_is_not_retryable_429() -> None:
    (status, headers, body), record = await one_fault("quota")
    assert status == 429 and "Retry-After" not in headers
    error = json.loads(body)["error"]
    assert error["type"] == error["code"] == "insufficient_quota"
    assert record.billed_tokens == 0


@pytest.mark.anyio
async def test_fault_slow_answers_late_and_is_billed() -> None:
    (status, _, _), record = await one_fault("slow", slow_seconds=0.05)
    assert status == 200 and record.elapsed >= 0.05 and record.billed_tokens > 0


@pytest.mark.anyio
async def test_fault_stream_cut_and_stream_reset() -> None:
    (status, _, raw), record = await one_fault("stream_cut", chat_body(stream=True))
    text = raw.decode()
    assert status == 200 and "[DONE]" not in text and "usage" not in text and "data: " in text
    assert record.billed_tokens > 0
    outcome, record = await one_fault("reset", chat_body(stream=True))
    assert isinstance(outcome, aiohttp.ClientPayloadError) and record.billed_tokens > 0
    (_, _, raw), record = await one_fault("stream_cut", chat_body())  # not a stream: answered normally
    assert record.fault is None and "choices" in json.loads(raw)


@pytest.mark.anyio
@pytest.mark.parametrize("answers", [frozenset(), frozenset({"usage_every_chunk", "no_done"})])
async def test_fault_no_data_on_a_stream_sends_its_usage_and_no_choice(answers: frozenset[str]) -> None:
    """`no_data` is an answer with its usage and no choice, billed, a stream's too. With the usage on
    every chunk of a choice, none was sent: the stream was empty, a cut stream to a client, asked again
    (the kill test's running-usage shape then saw the fault's task asked again, now and then)."""
    (status, _, raw), record = await one_fault("no_data", chat_body(stream=True), answers=answers)
    events = [
        json.loads(e.removeprefix("data: ")) for e in raw.decode().split("\n\n") if e.startswith("data: {")
    ]
    assert status == 200 and record.billed_tokens > 0
    assert [event["choices"] for event in events] == [[]]
    assert events[-1]["usage"]["total_tokens"] == record.billed_tokens


@pytest.mark.anyio
async def test_fault_huge_streams_until_the_client_gives_up() -> None:
    async with simulated(faults={"huge": 1.0}, huge_bytes=64 * 1024 * 1024) as client:
        async with client.http.post(client.url("/images/generations"), json={"prompt": "a fox"}) as response:
            assert response.status == 200 and "Content-Length" not in response.headers
            start = await response.content.read(256 * 1024)
            assert start.startswith(b'{"created": 0, "data": [{"b64_json": "AAAA')
        await client.sim.state.wait_for(lambda s: s.requests_total == 1)
        assert client.sim.state.records[0].fault == "huge"
        assert client.sim.state.billed_total_tokens == 0
    async with simulated(faults={"huge": 1.0}, huge_bytes=100_000) as client:
        whole = await (await client.generate({"prompt": "a fox"})).read()
        assert len(whole) == 100_000 and whole.endswith(b'"}]}')


@pytest.mark.anyio
async def test_fault_once_per_task() -> None:
    async with simulated(faults={"html200": 1.0}, fault_once_per_task=True) as client:
        for rid in ("task-1/a1", "task-1/a2", "task-2/a1", "task-1/a3"):
            await client.generate({"prompt": "a fox"}, headers={"X-Client-Request-Id": rid})
        records = client.sim.state.records
    assert [(r.task_id, r.fault) for r in records] == [
        ("task-1", "html200"),
        ("task-1", None),
        ("task-2", "html200"),
        ("task-1", None),
    ]
    assert records[0].request_id == "task-1/a1"


@pytest.mark.anyio
@pytest.mark.parametrize("knobs", [{"latency": 5.0}, {"faults": {"slow": 1.0}, "slow_seconds": 5.0}])
async def test_client_gone_before_the_answer_is_not_billed(knobs: dict[str, Any]) -> None:
    async with simulated(**knobs) as client:
        with pytest.raises(asyncio.TimeoutError):
            await client.generate({"prompt": "a fox"}, timeout=aiohttp.ClientTimeout(total=0.05))
        await client.sim.state.wait_for(lambda s: s.requests_total == 1)
        (record,) = client.sim.state.records
        assert (record.status, record.billed_tokens) == (499, 0)
        assert client.sim.state.billed_requests == 0 and client.sim.state.inflight == 0


# --- observation, reproducibility, running ------------------------------------------------------------


@pytest.mark.anyio
async def test_stats_endpoint() -> None:
    async with simulated(faults={"no_data": 0.5}, seed=2) as client:
        for attempt in range(4):
            await client.generate({"prompt": "a fox"}, headers={"X-Client-Request-Id": f"t/{attempt}"})
        await client.chat(chat_body())
        async with aiohttp.ClientSession() as anonymous:  # the stats need no key
            stats_url = f"http://127.0.0.1:{client.sim.port}/_sim/stats"
            stats = await (await anonymous.get(stats_url)).json()
            brief = await (await anonymous.get(stats_url, params={"records": "0"})).json()
        assert stats == client.sim.state.snapshot()
    assert stats["requests_total"] == 5 and stats["status_counts"] == {"200": 5}
    assert stats["billed_requests"] == 5
    assert stats["billed_total_tokens"] == sum(r["billed_tokens"] for r in stats["records"])
    assert [r["kind"] for r in stats["records"]] == ["generate"] * 4 + ["chat"]
    assert stats["records"][0]["request_id"] == "t/0" and stats["records"][0]["task_id"] == "t"
    assert "records" not in brief and brief["requests_total"] == 5


async def seeded_run(seed: int) -> list[tuple[int, str | None, bytes]]:
    knobs: dict[str, Any] = {"error_rate": 0.3, "rate_429": 0.1, "faults": {"not_json": 0.2, "no_data": 0.2}}
    outcomes = []
    async with simulated(seed=seed, **knobs) as client:
        for number in range(15):
            response = await client.generate({"prompt": f"fox {number % 3}"})
            outcomes.append((response.status, response.headers.get("Content-Type"), await response.read()))
    return [(status, kind, re.sub(rb'"created": \d+', b"", body)) for status, kind, body in outcomes]


@pytest.mark.anyio
async def test_seeded_runs_are_reproducible() -> None:
    first, again, other = await seeded_run(11), await seeded_run(11), await seeded_run(12)
    assert first == again
    assert first != other
    assert len({status for status, _, _ in first}) >= 3


def test_simulator_in_thread_serves_sync_code() -> None:
    with simulator_in_thread(SimConfig(api_key=KEY, seed=1)) as sim:
        request = urllib.request.Request(
            sim.endpoint_url("ep") + "/images/generations",
            data=json.dumps({"prompt": "a fox", "quality": "low"}).encode(),
            headers={**AUTH, "Content-Type": "application/json", "X-Client-Request-Id": "job-1/0"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
        sim.state.wait_for_sync(lambda s: s.requests_total == 1)
        assert sim.base_url == f"http://127.0.0.1:{sim.port}/v1/ai"
        assert decode(body["data"][0]["b64_json"]).size == (1024, 1024)
        assert sim.state.records[0].task_id == "job-1"
        thread_names = {t.name for t in threading.enumerate()}
        assert "maas-simulator" in thread_names
    assert "maas-simulator" not in {t.name for t in threading.enumerate()}


def test_serve_prints_its_url_and_stops_on_sigterm() -> None:
    root = Path(__file__).resolve().parents[2]
    code = "from batch.simulator import SimConfig, serve; serve(SimConfig(), '127.0.0.1', 0)"
    with subprocess.Popen(
        [sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, text=True, env={**os.environ}
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            prefix = "MaaS simulator listening on "
            assert line.startswith(prefix + "http://127.0.0.1:") and line.endswith("/v1/ai")
            stats_url = line.removeprefix(prefix).removesuffix("/v1/ai") + "/_sim/stats"
            with urllib.request.urlopen(stats_url, timeout=10) as response:
                assert json.loads(response.read())["requests_total"] == 0
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_flags_build_a_config(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    monkeypatch.setenv("SIM_KEY", "secret-value")
    args = parser.parse_args(
        ["--latency", "0.2", "--latency-jitter", "0.1", "--error-rate", "0.05", "--rate-429", "0.02",
         "--retry-after", "2", "--rpm", "60", "--max-inflight", "4", "--fault", "reset=0.1",
         "--fault", "slow=0.2", "--fault-once-per-task", "--seed", "9", "--image-mode", "realistic",
         "--api-key-env", "SIM_KEY", "--endpoint", "a", "--endpoint", "b", "--error-status", "408",
         "--error-status", "503", "--retry-after-date"]
    )  # fmt: skip
    config = config_from_args(args)
    assert config.error_statuses == (408, 503) and config.retry_after_date
    assert config_from_args(parser.parse_args([])).error_statuses == (500, 502, 503, 504)
    assert config.api_key == "secret-value" and "secret-value" not in repr(config)
    assert (config.latency, config.latency_jitter) == (0.2, 0.1)
    assert (config.error_rate, config.rate_429) == (0.05, 0.02)
    assert (config.retry_after, config.rpm, config.max_inflight, config.seed) == (2.0, 60, 4, 9)
    assert dict(config.faults) == {"reset": 0.1, "slow": 0.2} and config.fault_once_per_task
    assert config.image_mode == "realistic" and config.endpoints == frozenset({"a", "b"})
    with pytest.raises(SystemExit):
        parser.parse_args(["--fault", "gremlins=0.1"])
    monkeypatch.delenv("SIM_KEY")
    with pytest.raises(ValueError, match="SIM_KEY"):
        config_from_args(parser.parse_args(["--api-key-env", "SIM_KEY"]))


def test_config_checks_its_knobs() -> None:
    assert set(FAULT_NAMES) >= {"reset", "truncate", "huge", "bomb", "stream_cut"}
    with pytest.raises(ValueError, match="unknown fault"):
        SimConfig(faults={"gremlins": 0.1})
    with pytest.raises(ValueError, match="sum"):
        SimConfig(faults={"reset": 0.6, "slow": 0.6})
    with pytest.raises(ValueError):
        SimConfig(error_rate=1.5)
    default = SimConfig()
    assert default.latency == 0 and not default.faults and default.max_inflight is None
