"""A hostile server against the whole tool: answers built to break parsers, bombs that pass a size cap
only when it trusts the wire size, and a server that echoes the key back everywhere it can. Each ends one
task (or none), never the run; memory stays bounded; the key reaches no output, log or command."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from aiohttp import web
from PIL import Image

from batch.running.client import HEADER_LIMIT
from tests.conftest import FAST, ROOT, Outcome, results
from tests.stub import raw_server, stub_server

CANARY = "sk-CANARY-echo-5d8e1f0a9b7c"
DEEP = b"[" * 50_000


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def png_without_idat() -> bytes:
    """57 bytes: a PNG signature, an IHDR and an IEND, and no pixel data at all."""
    good = png_bytes()
    ihdr_end = 8 + 8 + 13 + 4
    return good[:ihdr_end] + good[-12:]


IMAGE_ANSWER = {
    "created": 1,
    "data": [{"b64_json": base64.b64encode(png_bytes()).decode()}],
    "usage": {"input_tokens": 3, "output_tokens": 272, "total_tokens": 275},
}


def chat_answer(text: str) -> dict[str, object]:
    return {
        "id": "chatcmpl-stub",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
    }


def sse(*events: bytes) -> web.Response:
    return web.Response(
        body=b"".join(b"data: " + e + b"\n\n" for e in events), content_type="text/event-stream"
    )


def run_once(
    cli: Callable[..., Outcome], manifest: Path, out: Path, handler: Callable[[web.Request], Any]
) -> tuple[Outcome, list[dict[str, Any]]]:
    """A run of `manifest` into `out` against a stub answering with `handler`: its outcome, and the
    requests that bought an answer (POSTs; a link's download is a GET)."""
    with stub_server(handler) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        outcome = cli("run", manifest, "--out", out, *FAST, env=env)
        posts = [seen for seen in stub.requests if seen["method"] == "POST"]
    return outcome, posts


def is_bad(body: bytes) -> bool:
    return b"bad" in body


# --- one answer that breaks a parser ends one task, never the run ---------------------------------------


async def hostile(name: str, request: web.Request) -> web.StreamResponse:
    """The hostile answer `name` for a task whose prompt says `bad`; a good answer for the others."""
    body = await request.read()
    chat = request.path.endswith("/chat/completions")
    if request.path.startswith("/files/"):  # the links of too-many-links: real pictures
        return web.Response(body=png_bytes(), content_type="image/png")
    if not is_bad(body):
        if chat and json.loads(body).get("stream"):
            finish = {"choices": [{"index": 0, "delta": {"content": "fine"}, "finish_reason": "stop"}]}
            return sse(json.dumps(finish).encode(), b"[DONE]")
        return web.json_response(chat_answer("fine") if chat else IMAGE_ANSWER)
    if name == "deep-200":
        return web.Response(body=DEEP, content_type="application/json")
    if name == "deep-400":
        return web.Response(status=400, body=DEEP, content_type="application/json")
    if name == "deep-500":
        return web.Response(status=500, body=DEEP, content_type="application/json")
    if name == "deep-sse":
        return sse(DEEP, b"[DONE]")
    if name == "huge-int":  # JSON, whole, with a number of 5,000 digits: past what Python reads
        answer = json.dumps(IMAGE_ANSWER).replace('"created": 1', '"created": ' + "9" * 5000)
        return web.Response(text=answer, content_type="application/json")
    if name == "choices-not-a-list":
        return sse(b'{"choices": 1}', b"[DONE]")
    if name == "png-without-idat":
        answer = {**IMAGE_ANSWER, "data": [{"b64_json": base64.b64encode(png_without_idat()).decode()}]}
        return web.json_response(answer)
    if name == "too-many-inline":  # each a file written into images/: none is
        return web.json_response({**IMAGE_ANSWER, "data": IMAGE_ANSWER["data"] * 200})  # type: ignore[operator]
    if name == "too-many-links":  # each a download of up to --max-answer-mb: none is fetched
        links = [{"url": f"http://{request.host}/files/{i}.png"} for i in range(5000)]
        return web.json_response({**IMAGE_ANSWER, "data": links})
    if name == "retry-after-overflow":  # a 503: a 429 spends no attempt, and is asked until --task-deadline
        headers = {"Retry-After": "Wed, 21 Oct 2015 99999999999:28:00 GMT"}
        return web.json_response({"error": {"message": "slow down"}}, status=503, headers=headers)
    raise AssertionError(name)


# name -> (requests the bad task may cost with --max-attempts 2, what its error says). JSON that arrived
# whole but is past what can be read (nesting past the recursion limit, a 5,000-digit number) was taken
# for an answer garbled on the way and bought again, each retry counted as an outage: 12 in a minute.
PARSER_BREAKERS = {
    "deep-200": (1, "JSON that cannot be read here: nested too deeply"),
    "deep-400": (1, "Bad Request"),
    "deep-500": (2, "Internal Server Error"),
    "deep-sse": (1, "JSON that cannot be read here: nested too deeply"),
    "huge-int": (1, "JSON that cannot be read here: an integer of more digits"),
    "choices-not-a-list": (1, "no 'choices' list"),
    "png-without-idat": (1, "image 1 is not a readable image (IndexError"),
    "retry-after-overflow": (2, "slow down"),
    "too-many-links": (1, "the answer links 5,000 images to download, more than 16: none was fetched"),
    "too-many-inline": (1, "the answer holds 200 images, more than 64: none was saved"),
}


@pytest.mark.parametrize("name", sorted(PARSER_BREAKERS))
def test_an_answer_that_breaks_a_parser_fails_its_task_and_the_run_goes_on(
    name: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    kind = "chat, model: m, stream: true" if name in ("deep-sse", "choices-not-a-list") else "generate"
    manifest = write(
        "tasks:\n"
        f"  - {{kind: {kind}, id: bad, prompt: bad}}\n"
        + "".join(f"  - {{kind: {kind}, id: good-{i}, prompt: good {i}}}\n" for i in range(3))
    )
    out = tmp_path / "out"

    async def handler(request: web.Request) -> web.StreamResponse:
        return await hostile(name, request)

    with stub_server(handler) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        outcome = cli("run", manifest, "--out", out, *FAST, "--max-attempts", "2", env=env)
        again = cli("run", manifest, "--out", out, *FAST, "--max-attempts", "2", env=env)
    assert outcome.code == 1, outcome.err
    assert "Traceback" not in outcome.err + outcome.out
    done = results(out)
    assert all(done[f"good-{i}"]["status"] == "succeeded" for i in range(3))
    cost, says = PARSER_BREAKERS[name]
    assert done["bad"]["status"] == "failed" and done["bad"]["attempts"] == cost
    assert says in done["bad"]["error"]["message"]
    assert len(stub.requests) == 3 + cost  # and the resumed run sent nothing: its tasks are finished
    if cost == 1 and done["bad"]["usage"]:  # bought once: what arrived is kept, for the user to read
        assert (out / done["bad"]["answer_file"]).is_file()
    assert again.code == 1 and "0 not run" in again.out


@pytest.mark.parametrize("shape", ["bad-base64", "error-page-link"])
def test_one_unusable_image_of_an_answer_no_longer_throws_away_the_good_ones(
    shape: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """An answer of two images, one of which is not an image (base64 that is not, or a link whose storage
    answers an HTML error page, as an expired signed URL does): the task failed (bad_image) and the good
    image, paid for, was thrown away. The good one is saved under its own name, the other counted as
    missing with why, the answer kept; bought once."""
    manifest = write("tasks:\n  - {kind: generate, id: two, prompt: two cats, n: 2}\n")
    out = tmp_path / "out"

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/files/"):
            return web.Response(text="<html>AccessDenied</html>", content_type="text/html")
        good = IMAGE_ANSWER["data"][0]  # type: ignore[index]
        bad = (
            {"b64_json": "bm90IGFuIGltYWdl"}
            if shape == "bad-base64"
            else {"url": f"http://{request.host}/files/b"}
        )
        return web.json_response({**IMAGE_ANSWER, "data": [good, bad]})

    outcome, posts = run_once(cli, manifest, out, handler)
    assert outcome.code == 0, outcome.err
    record = results(out)["two"]
    assert record["status"] == "succeeded" and record["files"] == ["images/two~1.png"], record
    assert record["images_missing"] == 1 and "image 2 is not" in record["images_not_usable"][0]
    assert (out / record["answer_file"]).is_file() and len(posts) == 1  # bought once
    with Image.open(out / "images" / "two~1.png") as image:
        image.load()


@pytest.mark.parametrize("kind", ["chat", "generate"])
def test_an_image_linked_other_than_by_http_is_counted_missing_with_why_not_dropped(
    kind: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """An answer whose image is a Cloud Storage URI (`gs://...`) beside a usable one: a chat answer's part
    was dropped without a word (the task succeeded with its text, no image missing, nothing kept), and an
    image answer failed whole, its good image thrown away. The link is counted missing, with why, and the
    answer kept; bought once."""
    gs = {"type": "image_url", "image_url": {"url": "gs://bucket/answer-2.png"}}
    answers = {
        "chat": {
            **chat_answer("a cat"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "a cat", "images": [gs]},
                    "finish_reason": "stop",
                }
            ],
        },
        "generate": {**IMAGE_ANSWER, "data": [IMAGE_ANSWER["data"][0], {"url": "gs://bucket/b.png"}]},  # type: ignore[index]
    }
    task = "model: m, prompt: a cat" if kind == "chat" else "prompt: two cats, n: 2"
    manifest = write(f"tasks:\n  - {{kind: {kind}, id: t, {task}}}\n")
    out = tmp_path / "out"

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(answers[kind])

    outcome, posts = run_once(cli, manifest, out, handler)
    assert outcome.code == 0, outcome.err
    record = results(out)["t"]
    assert record["status"] == "succeeded" and record["images_missing"] == 1, record
    assert "must be http(s), not 'gs://bucket/" in record["images_not_downloaded"][0]
    assert (out / record["answer_file"]).is_file() and len(posts) == 1  # kept; bought once
    if kind == "generate":
        assert record["files"] == ["images/t~1.png"]


def test_an_error_status_that_reports_a_usage_is_in_the_ledger(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """A 400 whose body says what it billed beside its error: no ledger line, where a 200 carrying an error
    and a usage had one. The ledger holds what the server said it billed, whatever the status."""
    manifest = write("tasks:\n  - {kind: chat, id: c, model: m, prompt: hi}\n")
    out = tmp_path / "out"
    usage = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"error": {"message": "filtered after generation"}, "usage": usage}, status=400
        )

    outcome, posts = run_once(cli, manifest, out, handler)
    assert len(posts) == 1  # a 400: not asked again
    assert outcome.code == 1, outcome.err
    [line] = [json.loads(li) for li in (out / "usage.jsonl").read_text().splitlines()]
    assert line["total_tokens"] == 42 and line["usage"] == usage and line["task_id"] == "c"
    assert results(out)["c"]["status"] == "failed"


# --- limits hold on the bytes after decoding -------------------------------------------------------------

BOMB_MB = 256


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """256 MiB of JSON-looking text, compressed to a few hundred KB, as gzip, zlib deflate and raw. The
    raw deflate stream is made once, each MiB compressed after a full flush (which resets the window, so
    every MiB compresses to the same bytes: compressed once, repeated), and wrapped in gzip's and zlib's
    headers and checksums: 0.3 s where compressing 768 MiB took 2.5 s."""
    head, piece = b'{"data": [{"b64_json": "', b" " * 2**20
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = packer.compress(head) + packer.flush(zlib.Z_FULL_FLUSH)
    middle = packer.compress(piece) + packer.flush(zlib.Z_FULL_FLUSH)
    raw = start + middle * BOMB_MB + packer.flush()
    crc, adler = zlib.crc32(head), zlib.adler32(head)
    for _ in range(BOMB_MB):
        crc, adler = zlib.crc32(piece, crc), zlib.adler32(piece, adler)
    size = len(head) + BOMB_MB * len(piece)
    gzip_head = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # deflate, no name, no time, best, unknown OS
    return {
        "gzip": gzip_head + raw + struct.pack("<II", crc, size & 0xFFFFFFFF),
        "deflate": b"\x78\xda" + raw + struct.pack(">I", adler),  # zlib's header for level 9
        "deflate-raw": raw,
    }


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "deflate-raw", "gzip-chunked", "gzip-sse"])
def test_a_compressed_bomb_is_refused_at_the_cap_after_decompression(
    encoding: str, bombs: dict[str, bytes], write: Callable[..., Path], tmp_path: Path
) -> None:
    wire = encoding.removesuffix("-chunked").removesuffix("-sse")
    payload = bombs[wire]
    stream = encoding.endswith("-sse")

    async def handler(request: web.Request) -> web.StreamResponse:
        header = "deflate" if wire.startswith("deflate") else "gzip"
        response = web.StreamResponse(headers={"Content-Encoding": header})
        response.content_type = "text/event-stream" if stream else "application/json"
        if encoding.endswith("-chunked"):
            response.enable_chunked_encoding()
        else:
            response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload)
        return response

    kind = "chat, model: m, stream: true" if stream else "generate"
    manifest = write(f"tasks:\n  - {{kind: {kind}, id: bomb, prompt: boom}}\n")
    out = tmp_path / "out"
    # VmHWM, the peak of this process's own memory: ru_maxrss would carry the forking parent's peak over.
    code = (
        "import sys; from batch.cli import main; code = main(sys.argv[1:]); "
        "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
        "print('maxrss', peak, file=sys.stderr); sys.exit(code)"
    )
    with stub_server(handler) as stub:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
        env.update(MAAS_API_KEY="k", MAAS_BASE_URL=stub.base_url, MAAS_ENDPOINT="ep", PYTHONPATH=str(ROOT))
        command = [sys.executable, "-c", code, "run", str(manifest), "--out", str(out), "--no-progress"]
        run = subprocess.run(
            [*command, *FAST, "--max-answer-mb", "1", "--max-attempts", "3"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 1, run.stderr
    maxrss_mb = int(run.stderr.split("maxrss")[-1]) / 1024
    assert maxrss_mb < BOMB_MB / 2, f"peak RSS {maxrss_mb:.0f} MB for a {BOMB_MB} MB bomb"
    record = results(out)["bomb"]
    if stream:  # a stream over the cap was never whole
        assert record["error"]["type"] == "answer_too_large", record
    else:
        assert record["error"]["type"] == "answer_too_large" and record["attempts"] == 1
    assert "after decompression" in record["error"]["message"]
    assert len(stub.requests) == 1  # what may be a paid answer is not bought again


# --- the key, echoed back by a server, appears nowhere -----------------------------------------------


async def echo(name: str, request: web.Request) -> web.StreamResponse:
    """A server that puts the bearer key it was sent into the part of its answer `name` says."""
    key = request.headers.get("Authorization", "").removeprefix("Bearer ")
    chat = request.path.endswith("/chat/completions")
    if name == "body-snippet":
        return web.Response(text=f"upstream said: your key {key} is fine", content_type="text/plain")
    if name == "content-type":
        return web.Response(body=b"<<not json>>", headers={"Content-Type": f"text/x-{key}"})
    if name == "error-fields":
        error = {"message": f"no, {key}", "type": key, "code": key}
        return web.json_response({"error": error}, status=400)
    if name == "error-200":
        return web.json_response({"error": {"message": f"refused {key}", "type": key, "code": "x"}})
    if name == "cut-in-half":
        padding = "x" * (64 * 1024 - 10 - len('{"error": {"message": "'))
        return web.Response(status=400, text=f'{{"error": {{"message": "{padding}{key} tail"}}}}')
    if name == "reason":
        return web.Response(status=503, reason=f"Down {key}", text="")
    if name == "request-id":
        return web.json_response(chat_answer("ok") if chat else IMAGE_ANSWER, headers={"x-request-id": key})
    if name == "sse-error":
        return sse(json.dumps({"error": {"message": f"stream broke {key}", "code": key}}).encode())
    if name == "sse-not-json":
        return sse(f"garbage {key}".encode())
    if name == "answer-text":
        finish = {"choices": [{"index": 0, "delta": {"content": f"you said {key}"}, "finish_reason": "stop"}]}
        return sse(json.dumps(finish).encode(), b"[DONE]")
    if name == "content-encoding":  # as the coding's name, which a message would repeat
        return web.json_response(
            chat_answer("ok") if chat else IMAGE_ANSWER, headers={"Content-Encoding": key}
        )
    if name == "escaped-key":  # every character a JSON escape: not the key's bytes until it is parsed
        escaped = "".join(f"\\u{ord(c):04x}" for c in key)
        if chat:
            finish = {"choices": [{"index": 0, "delta": {"content": "said KEY"}, "finish_reason": "stop"}]}
            return sse(json.dumps({**finish, "id": "KEY"}).replace("KEY", escaped).encode(), b"[DONE]")
        data = [{**IMAGE_ANSWER["data"][0], "revised_prompt": "KEY"}]  # type: ignore[index]
        usage = {**IMAGE_ANSWER["usage"], "note": "KEY"}  # type: ignore[dict-item]
        answer = json.dumps({**IMAGE_ANSWER, "id": "KEY", "data": data, "usage": usage})
        return web.Response(text=answer.replace("KEY", escaped), content_type="application/json")
    if name == "escaped-key-kept":  # escaped, in an answer that cannot be used: kept in answers/
        escaped = "".join(f"\\u{ord(c):04x}" for c in key)
        unusable = {"id": "KEY", "usage": IMAGE_ANSWER["usage"]}  # no data, no choices: billed, kept
        return web.Response(
            text=json.dumps(unusable).replace("KEY", escaped), content_type="application/json"
        )
    if name in ("percent-request-id", "percent-id"):  # the key %-encoded whole: %73%6B%2D...
        spelled = "".join(f"%{byte:02X}" for byte in key.encode())
        answer = chat_answer("ok") if chat else dict(IMAGE_ANSWER)
        if name == "percent-id":
            return web.json_response({**answer, "id": spelled})
        return web.json_response(answer, headers={"x-request-id": spelled})
    if name == "link-key" and not chat:  # a link to another origin (localhost) whose path spells the key
        escaped = "".join(f"\\u{ord(c):04x}" for c in key)
        link = f"http://localhost:{request.url.port}/files/KEY.png"
        answer = json.dumps({**IMAGE_ANSWER, "data": [{"url": link}]})
        return web.Response(text=answer.replace("KEY", escaped), content_type="application/json")
    if name == "link-key":
        return web.json_response(chat_answer("ok"))
    if name == "split-across-events":  # the key in two pieces, one in each of two events
        events = [
            {"choices": [{"index": 0, "delta": {"content": f"you said {key[:10]}"}}]},
            {"choices": [{"index": 0, "delta": {"content": f"{key[10:]} ok"}, "finish_reason": "stop"}]},
        ]
        if chat:
            return sse(*(json.dumps(event).encode() for event in events), b"[DONE]")
        return web.json_response(IMAGE_ANSWER)
    raise AssertionError(name)


ECHOES = [
    "body-snippet",
    "content-type",
    "error-fields",
    "error-200",
    "cut-in-half",
    "reason",
    "request-id",
    "sse-error",
    "sse-not-json",
    "answer-text",
    "content-encoding",
    "escaped-key",
    "escaped-key-kept",
    "split-across-events",
    "percent-request-id",
    "percent-id",
    "link-key",
]


@pytest.mark.parametrize("name", ECHOES)
def test_a_key_echoed_by_the_server_reaches_no_output_log_or_command(
    name: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write(
        "tasks:\n  - {kind: generate, id: img, prompt: a}\n"
        "  - {kind: chat, id: chat, model: m, prompt: hi, stream: true}\n"
    )
    out, log = tmp_path / "out", tmp_path / "night.log"

    async def handler(request: web.Request) -> web.StreamResponse:
        return await echo(name, request)

    with stub_server(handler) as stub:
        env = {"MAAS_API_KEY": CANARY, "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        outcomes = [
            cli("run", manifest, "--out", out, *FAST, "--max-attempts", "2", "-v", "--log-file", log, env=env)
        ]
    api = [seen for seen in stub.requests if not seen["host"].startswith("localhost")]
    assert api and all(seen["authorization"] == f"Bearer {CANARY}" for seen in api)  # it was sent
    # and never fetched from another origin in a link's path (a JSON-escaped key turns into the key)
    assert not any(CANARY in seen["path"] for seen in stub.requests), stub.requests
    assert results(out)  # the run reached the end
    for command in (("status", out), ("report", out), ("export", out, "--format", "csv"), ("gallery", out)):
        outcomes.append(cli(*command, env={"MAAS_API_KEY": CANARY}))
    outcomes.append(cli("export", out, "--format", "jsonl", env={"MAAS_API_KEY": CANARY}))
    assert_no_key(name, outcomes, [log, *out.rglob("*")])


def assert_no_key(name: str, outcomes: list[Outcome], paths: list[Path]) -> None:
    """No piece of CANARY (half of it, or more) in what the commands said or in the files."""
    fragments = (CANARY, CANARY[3:], CANARY[: len(CANARY) // 2], CANARY[len(CANARY) // 2 :])
    fragments += tuple(fragment.lower() for fragment in fragments)  # a header's value lowercased on the way
    for outcome in outcomes:
        for fragment in fragments:
            assert fragment not in outcome.out + outcome.err, (name, fragment)
    for path in paths:
        if path.is_file():
            data = path.read_bytes()
            # as a JSON reader of the file reads it: \u escapes turned back into what they spell
            plain = re.sub(rb"\\u([0-9a-f]{4})", lambda m: chr(int(m.group(1), 16)).encode(), data)
            decoded = unquote_to_bytes(data)  # as a URL's reader reads it: %73%6B... is the key
            for fragment in fragments:
                assert fragment.encode() not in data, (name, path, fragment)
                assert fragment.encode() not in plain, (name, path, fragment, "in JSON escapes")
                assert fragment.encode() not in decoded, (name, path, fragment, "percent-encoded")


@pytest.mark.parametrize("offset", [78, 30])
def test_a_key_cut_in_the_excerpt_of_a_parse_error_is_not_repeated(
    offset: int, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """aiohttp quotes some 100 bytes of a header line it refuses (longer than the client reads): the key
    there is cut."""

    def answer(key: str, number: int) -> bytes:
        note = f"{'a' * offset}{key}{'a' * (HEADER_LIMIT + 10)}"
        return f"HTTP/1.1 200 OK\r\nX-Note: {note}\r\nContent-Length: 2\r\n\r\n{{}}".encode()

    manifest = write("tasks:\n  - {kind: generate, id: img, prompt: a}\n")
    out, log = tmp_path / "out", tmp_path / "night.log"
    with raw_server(answer, close=True) as stub:
        env = {"MAAS_API_KEY": CANARY, "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        outcome = cli(
            "run", manifest, "--out", out, *FAST, "--max-attempts", "2", "-v", "--log-file", log, env=env
        )
    assert outcome.code == 1 and len(stub.requests) == 2  # a transport failure: tried again
    assert "[redacted]" in results(out)["img"]["error"]["message"]  # the excerpt was quoted, the key not
    assert_no_key(f"offset {offset}", [outcome], [log, *out.rglob("*")])
