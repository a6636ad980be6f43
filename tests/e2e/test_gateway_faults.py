"""Answers a gateway or a hostile server can send that the API's examples never show, byte for byte: half
of a UTF-16 pair, a header byte that is not UTF-8, a stream cut after it finished, a usage that reads as
no count, a coding not asked for, a gzip body of two members. Each is built from what HTTP, JSON and
gzip allow (RFC 9110, RFC 8259, RFC 1952), not from what the client reads: the run goes on, no answer that
arrived whole is bought twice, and what was paid is in the ledger."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from batch.errors import BrokenAnswerError
from batch.output.report import status
from tests.conftest import FAST, Outcome, results
from tests.e2e.test_hostile_answers import IMAGE_ANSWER, chat_answer, is_bad, sse
from tests.stub import http_answer, raw_server, stub_server

ATTEMPTS = ("--max-attempts", "3")
IMAGE_BODY = json.dumps(IMAGE_ANSWER).encode()


def ledger(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "usage.jsonl").read_text(encoding="utf-8").splitlines()]


def three_tasks(write: Callable[..., Path], kind: str) -> Path:
    return write(
        "tasks:\n"
        f"  - {{kind: {kind}, id: bad, prompt: bad}}\n"
        + "".join(f"  - {{kind: {kind}, id: good-{i}, prompt: good {i}}}\n" for i in range(2))
    )


def one_task(
    cli: Callable[..., Outcome], write: Callable[..., Path], out: Path, handler: Any
) -> tuple[Outcome, dict[str, Any], int]:
    """A run of one generate task `odd` against `handler`: its outcome, its result line, the requests."""
    manifest = write("tasks:\n  - {kind: generate, id: odd, prompt: p}\n")
    with stub_server(handler) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        outcome = cli("run", manifest, "--out", out, *FAST, *ATTEMPTS, env=env)
    return outcome, results(out)["odd"], len(stub.requests)


# --- events not asked for, that end before their answer ---------------------------------------------------


def test_a_chat_sent_as_events_though_not_asked_that_ends_unfinished_is_kept_not_bought_again(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """A chat not asked to stream, answered as a chat.completion.chunk stream that stops before its
    finish_reason (no [DONE]), then closed: read to its end, it is whole as it came. It is kept and its
    task fails; asking again would buy it again."""
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "Half an"}, "finish_reason": None}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }

    async def handler(request: web.Request) -> web.StreamResponse:
        body = b"data: " + json.dumps(chunk).encode() + b"\n\n"
        return web.Response(body=body, content_type="text/event-stream")

    manifest = write("tasks:\n  - {kind: chat, id: odd, model: m, prompt: p}\n")
    with stub_server(handler) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        outcome = cli("run", manifest, "--out", tmp_path / "out", *FAST, *ATTEMPTS, env=env)
    assert outcome.code == 1, outcome.err
    record = results(tmp_path / "out")["odd"]
    assert record["status"] == "failed" and record["attempts"] == 1 and len(stub.requests) == 1
    assert record["error"]["type"] == "unreadable_answer" and "did not ask for" in record["error"]["message"]
    assert (tmp_path / "out" / record["answer_file"]).read_bytes().startswith(b"data: ")
    [line] = ledger(tmp_path / "out")
    assert line["total_tokens"] == 5 and not line.get("estimated")
    # its usage came on a chunk of a choice that never finished: the count so far, maybe more was billed
    assert record["maybe_billed"] == 1 and status(tmp_path / "out")["maybe_billed"] == 1


# --- half of a UTF-16 pair, where JSON allows it ----------------------------------------------------------

HALF = "\\ud83d"  # as JSON escapes it: the first half of an emoji, the second never sent

SURROGATES = {
    # kind of the tasks -> the bad task's answer, as JSON text
    "generate": json.dumps(
        {
            **IMAGE_ANSWER,
            "id": "imgHALF",
            "data": [{**IMAGE_ANSWER["data"][0], "revised_prompt": "a cat HALF"}],
        }  # type: ignore[dict-item]
    ).replace("HALF", HALF),
    "chat, model: m": json.dumps(chat_answer("TEXT")).replace("TEXT", f"half {HALF} and {HALF}"),
    "chat, model: m, stream: true": "SSE",
}


@pytest.mark.parametrize("kind", sorted(SURROGATES))
def test_half_a_utf16_pair_in_an_answer_is_read_and_the_run_goes_on(
    kind: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    stream = "stream" in kind

    async def handler(request: web.Request) -> web.StreamResponse:
        bad = is_bad(await request.read())
        if stream:
            text = f"half {HALF}" if bad else "fine"
            choice = {"index": 0, "delta": {"content": "TEXT"}, "finish_reason": "stop"}
            delta = json.dumps({"choices": [choice]}).replace("TEXT", text)
            usage = (
                b'{"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}}'
            )
            return sse(delta.encode(), usage, b"[DONE]")
        if bad:
            return web.Response(text=SURROGATES[kind], content_type="application/json")
        return web.json_response(chat_answer("fine") if kind.startswith("chat") else IMAGE_ANSWER)

    out = tmp_path / "out"
    with stub_server(handler) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        outcome = cli("run", three_tasks(write, kind), "--out", out, *FAST, *ATTEMPTS, env=env)
    assert outcome.code == 0, outcome.err
    done = results(out)
    assert {task["status"] for task in done.values()} == {"succeeded"}
    assert len(stub.requests) == 3  # none bought twice
    assert len(ledger(out)) == 3  # each paid answer in the ledger
    if kind.startswith("chat"):
        assert done["bad"]["text"].startswith("half \ufffd")
    else:
        assert (out / done["bad"]["files"][0]).is_file()
        assert "\ufffd" in json.dumps(done["bad"], ensure_ascii=False)


@pytest.mark.parametrize("header", ["x-request-id: req-\xff\xfe", "Content-Type: application/\xffjson"])
def test_a_header_byte_that_is_not_utf8_does_not_end_the_run(
    header: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    name, value = header.split(": ")

    def answer(key: str, number: int) -> bytes:
        odd = [(name, value)] if number == 2 else []
        plain = [] if odd and name == "Content-Type" else [("Content-Type", "application/json")]
        return http_answer("200 OK", [*plain, *odd, ("Content-Length", str(len(IMAGE_BODY)))], IMAGE_BODY)

    out = tmp_path / "out"
    with raw_server(answer) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        outcome = cli("run", three_tasks(write, "generate"), "--out", out, "-c", "1", *FAST, env=env)
    assert outcome.code == 0, outcome.err
    assert {task["status"] for task in results(out).values()} == {"succeeded"}
    assert len(stub.requests) == 3 and len(ledger(out)) == 3


# --- a stream cut after it finished --------------------------------------------------------------------

FINISHED = b"".join(
    b"data: " + json.dumps(event).encode() + b"\n\n"
    for event in (
        {"id": "c", "choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": "stop"}]},
        {"id": "c", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}},
    )
)
CUTS = {
    # chunked, and the connection closed before the last (zero-size) chunk
    "reset": [("Transfer-Encoding", "chunked")],
    # a Content-Length 100 bytes over what comes before the connection closes
    "short": [("Content-Length", str(len(FINISHED) + 100))],
}


def one_stream(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path, answer: Any
) -> tuple[Outcome, Path, int]:
    """A run of one streamed chat task `cut` against a raw server that closes after each answer."""
    manifest = write("tasks:\n  - {kind: chat, id: cut, model: m, prompt: hi, stream: true}\n")
    out = tmp_path / "out"
    with raw_server(answer, close=True) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        outcome = cli("run", manifest, "--out", out, *FAST, *ATTEMPTS, env=env)
    return outcome, out, len(stub.requests)


@pytest.mark.parametrize("cut", sorted(CUTS))
def test_a_stream_cut_after_every_choice_finished_is_a_whole_answer(
    cut: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    body = b"%x\r\n" % len(FINISHED) + FINISHED + b"\r\n" if cut == "reset" else FINISHED

    def answer(key: str, number: int) -> bytes:
        return http_answer("200 OK", [("Content-Type", "text/event-stream"), *CUTS[cut]], body)

    outcome, out, requests = one_stream(cli, write, tmp_path, answer)
    assert outcome.code == 0, outcome.err
    assert results(out)["cut"]["text"] == "hello"
    assert requests == 1  # not bought again
    assert [line["total_tokens"] for line in ledger(out)] == [12]  # what it said it cost


def test_a_stream_cut_before_its_choice_finished_is_asked_again(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    unfinished = b'data: {"id": "c", "choices": [{"index": 0, "delta": {"content": "hel"}}]}\n\n'
    body = b"%x\r\n" % len(unfinished) + unfinished + b"\r\n"

    def answer(key: str, number: int) -> bytes:
        if number == 2:
            return http_answer(
                "200 OK",
                [("Content-Type", "text/event-stream"), ("Content-Length", str(len(FINISHED)))],
                FINISHED,
            )
        return http_answer(
            "200 OK", [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")], body
        )

    outcome, out, requests = one_stream(cli, write, tmp_path, answer)
    assert outcome.code == 0, outcome.err
    assert results(out)["cut"]["text"] == "hello" and requests == 2


def _events(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events)


USAGE_CHUNK = {
    "id": "c",
    "choices": [],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
}
# Streams that end on the usage chunk of the whole request, with no [DONE] (a server sends that chunk once,
# after its choices are done): whole, whatever finish reasons a gateway left out. (text, status) expected.
ENDED_ON_USAGE = {
    "no finish reason": (
        _events({"id": "c", "choices": [{"index": 0, "delta": {"content": "hello"}}]}, USAGE_CHUNK),
        ("hello", "succeeded"),
    ),
    "usage without a choices key": (
        _events(
            {"id": "c", "choices": [{"index": 0, "delta": {"content": "hello"}}]},
            {"id": "c", "usage": USAGE_CHUNK["usage"]},
        ),
        ("hello", "succeeded"),
    ),
    # an answer of no choice at all (a prompt the model would not answer): kept and failed, as with [DONE]
    "the usage alone": (_events(USAGE_CHUNK), (None, "failed")),
}


@pytest.mark.parametrize("shape", sorted(ENDED_ON_USAGE))
def test_a_stream_that_ends_on_its_usage_without_done_is_whole_and_bought_once(
    shape: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    body, (text, task_status) = ENDED_ON_USAGE[shape]

    def answer(key: str, number: int) -> bytes:
        return http_answer(
            "200 OK", [("Content-Type", "text/event-stream"), ("Content-Length", str(len(body)))], body
        )

    outcome, out, requests = one_stream(cli, write, tmp_path, answer)
    record = results(out)["cut"]
    assert outcome.code == (0 if task_status == "succeeded" else 1), outcome.err
    assert requests == 1, record  # not bought again
    assert record["status"] == task_status and record.get("text") == text, record
    assert "maybe_billed" not in record
    assert [line["total_tokens"] for line in ledger(out)] == [12]
    if task_status == "failed":
        assert (out / record["answer_file"]).read_bytes() == body  # kept as it came


def test_a_stream_of_fewer_choices_than_n_that_ends_on_its_usage_is_whole(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """n: 2 asked, one choice sent and finished (a gateway that makes one), then the usage: whole."""
    body = _events(
        {"id": "c", "choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": "stop"}]},
        USAGE_CHUNK,
    )
    manifest = write("tasks:\n  - {kind: chat, id: two, model: m, prompt: hi, stream: true, n: 2}\n")
    out = tmp_path / "out"

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/event-stream")

    with stub_server(handler) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        outcome = cli("run", manifest, "--out", out, *FAST, *ATTEMPTS, env=env)
        requests = len(stub.requests)
    assert outcome.code == 0, outcome.err
    assert requests == 1 and results(out)["two"]["text"] == "hello"


def test_a_stream_cut_after_a_usage_chunk_and_more_of_its_answer_is_asked_again(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """A usage chunk of its own in the middle (a gateway's count so far), then a piece of the answer, then
    the end: the stream did not end on its usage, its choice never finished. Cut: asked again."""
    cut = _events(
        {"id": "c", "choices": [{"index": 0, "delta": {"content": "hel"}}]},
        USAGE_CHUNK,
        {"id": "c", "choices": [{"index": 0, "delta": {"content": "lo"}}]},
    )

    def answer(key: str, number: int) -> bytes:
        body = FINISHED if number == 2 else cut
        return http_answer(
            "200 OK", [("Content-Type", "text/event-stream"), ("Content-Length", str(len(body)))], body
        )

    outcome, out, requests = one_stream(cli, write, tmp_path, answer)
    assert outcome.code == 0, outcome.err
    assert results(out)["cut"]["text"] == "hello" and requests == 2


# --- a usage that reads as no count ---------------------------------------------------------------------

UNREADABLE_USAGE = {
    "strings": {"input_tokens": "252", "output_tokens": "4160", "total_tokens": "4412"},
    "empty": {},
    "beyond-float": {"input_tokens": 10**400, "output_tokens": 1, "total_tokens": 10**400 + 1},
}


@pytest.mark.parametrize("name", sorted(UNREADABLE_USAGE))
def test_a_usage_that_reads_as_no_count_is_booked_at_the_estimate(
    name: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    text = json.dumps(UNREADABLE_USAGE[name])  # json writes the 400-digit integer as it is

    async def handler(request: web.Request) -> web.StreamResponse:
        answer = json.dumps({**IMAGE_ANSWER, "usage": "USAGE"}).replace('"USAGE"', text)
        return web.Response(text=answer, content_type="application/json")

    manifest = write(
        "tasks:\n"
        + "".join(f"  - {{kind: generate, id: t{i}, model: gpt-image-1, prompt: p{i}}}\n" for i in range(6))
    )
    out = tmp_path / "out"
    with stub_server(handler) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        outcome = cli("run", manifest, "--out", out, "-c", "1", *FAST, env=env)
        plan = cli("run", manifest, "--out", tmp_path / "dry", "--dry-run", env=env)
    assert outcome.code == 0, outcome.err
    assert {task["status"] for task in results(out).values()} == {"succeeded"}
    lines = ledger(out)
    assert len(lines) == 6 == len(stub.requests)
    assert all(line["estimated"] is True and line["total_tokens"] > 0 and line["cost"] > 0 for line in lines)
    total = next(line for line in plan.out.splitlines() if line.split()[:1] == ["total"])
    estimate = float(total.split("$")[1])  # what --dry-run says the 6 would cost
    assert sum(line["cost"] for line in lines) == pytest.approx(estimate, rel=0.01)

    # and a budget counts them: with room for about two estimates, it stops the run (exit 3)
    budget = tmp_path / "budget"
    with stub_server(handler) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        stopped = cli(
            "run", manifest, "--out", budget, "-c", "1", "--max-cost", f"{estimate / 3:.4f}", *FAST, env=env
        )
    assert stopped.code == 3, stopped.out + stopped.err
    assert len(stub.requests) < 6


# --- codings ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["br", "x-Custom-Thing"])
def test_a_whole_answer_in_a_coding_not_asked_for_is_kept_and_not_bought_again(
    coding: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    wire = b"\x8b\x02\x80not what was asked for\x03"

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=wire, headers={"Content-Encoding": coding, "Content-Type": "application/json"}
        )

    out = tmp_path / "out"
    outcome, record, requests = one_task(cli, write, out, handler)
    assert outcome.code == 1, outcome.err
    assert record["status"] == "failed" and record["attempts"] == 1 and requests == 1
    said = record["error"]["message"]
    assert (
        ("'br'" in said) if coding == "br" else ("a coding it did not ask for" in said and coding not in said)
    )
    assert (out / record["answer_file"]).read_bytes() == wire  # kept as it came


def test_a_gzip_body_of_two_members_is_read_whole(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    half = len(IMAGE_BODY) // 2
    wire = gzip.compress(IMAGE_BODY[:half]) + gzip.compress(IMAGE_BODY[half:])  # RFC 1952: members in a row

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=wire, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    outcome, record, requests = one_task(cli, write, tmp_path / "out", handler)
    assert outcome.code == 0, outcome.err
    assert record["status"] == "succeeded" and requests == 1


TRANSFER_CODINGS = {
    "gzip, chunked": gzip.compress,
    "deflate, chunked": zlib.compress,
    "Gzip,Chunked": gzip.compress,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("coding", sorted(TRANSFER_CODINGS))
def test_a_body_in_a_transfer_coding_besides_chunked_is_read_once(
    coding: str, stream: bool, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """`Transfer-Encoding: gzip, chunked` (RFC 9112 allows codings before chunked): aiohttp takes the chunks
    off and hands over the compressed bytes, which were read as a body that is not JSON, and the answer
    bought again, three times, each the same."""
    body = FINISHED if stream else IMAGE_BODY
    wire = TRANSFER_CODINGS[coding](body)
    chunked = b"%x\r\n" % len(wire) + wire + b"\r\n0\r\n\r\n"
    content_type = "text/event-stream" if stream else "application/json"

    def answer(key: str, number: int) -> bytes:
        return http_answer("200 OK", [("Content-Type", content_type), ("Transfer-Encoding", coding)], chunked)

    kind = "chat, model: m, stream: true" if stream else "generate"
    manifest = write(f"tasks:\n  - {{kind: {kind}, id: coded, prompt: p}}\n")
    out = tmp_path / "out"
    with raw_server(answer) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        outcome = cli("run", manifest, "--out", out, *FAST, *ATTEMPTS, env=env)
    assert outcome.code == 0, outcome.err
    record = results(out)["coded"]
    assert record["status"] == "succeeded" and record["attempts"] == 1 and len(stub.requests) == 1
    if stream:
        assert record["text"] == "hello" and [line["total_tokens"] for line in ledger(out)] == [12]
    else:
        assert (out / record["files"][0]).read_bytes().startswith(b"\x89PNG")
        assert [line["total_tokens"] for line in ledger(out)] == [275]


# --- errors sent with a 200 -------------------------------------------------------------------------------


def test_an_error_code_of_non_ascii_digits_is_a_refusal_not_a_broken_answer(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"message": "nope", "code": "\u00b2"}})  # "²".isdigit() is True

    outcome, record, requests = one_task(cli, write, tmp_path / "out", handler)
    assert outcome.code == 1, outcome.err
    assert record["error"]["message"].startswith("nope") and requests == 1


def test_an_error_sent_with_a_200_is_cut_as_any_other(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"message": "x" * (4 * 2**20)}})

    out = tmp_path / "out"
    outcome, record, _ = one_task(cli, write, out, handler)
    assert outcome.code == 1
    assert len(record["error"]["message"]) < 2100
    assert (out / "results.jsonl").stat().st_size < 10_000
    assert len(outcome.err) < 20_000


def test_thousands_of_gzip_members_split_anywhere_are_inflated_in_a_loop_under_the_cap() -> None:
    """Members end anywhere in the pieces read; thousands of them (a few bytes each) are read without a
    recursion a member, and the cap holds over all of them."""
    from batch.running.bodies import Inflater

    wire = b"".join(gzip.compress(b"x%d," % i) for i in range(5000))
    inflater = Inflater("gzip", 10**6)
    pieces = [inflater.feed(wire[at : at + 4099]) for at in range(0, len(wire), 4099)]
    assert b"".join(pieces) + inflater.finish() == b"".join(b"x%d," % i for i in range(5000))
    at_once = Inflater("gzip", 10**6)  # 5,000 members in one piece: a recursion a member would overflow
    assert at_once.feed(wire) + at_once.finish() == b"".join(pieces)
    capped = Inflater("gzip", 1000)
    with pytest.raises(BrokenAnswerError, match="over the limit of 1,000 bytes"):
        for at in range(0, len(wire), 4099):
            capped.feed(wire[at : at + 4099])


def test_a_whole_answer_nested_deeper_than_the_journals_keep_is_kept_aside_not_bought_again(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """Valid JSON 300 levels deep (orjson reads 1,024): written into results.jsonl, every reader would
    skip the line, and json's writer breaks near 990 (the page, the exports, a run's end)."""
    deep = "[" * 300 + "]" * 300
    text = json.dumps({**IMAGE_ANSWER, "note": "DEEP"}).replace('"DEEP"', deep)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text=text, content_type="application/json")

    out = tmp_path / "out"
    outcome, record, requests = one_task(cli, write, out, handler)
    assert outcome.code == 1, outcome.err
    assert record["status"] == "failed" and "nested more than 200 levels" in record["error"]["message"]
    assert requests == 1 and (out / record["answer_file"]).read_bytes() == text.encode()


def test_zeros_after_the_last_gzip_member_are_padding_and_a_surrogate_in_utf8_bytes_is_cleaned() -> None:
    """gzip's own reader takes zeros after the last member as padding: read as an error, they had the
    answer bought again. A lone surrogate json passes through as UTF-8 bytes (not escaped) became U+FFFD
    only when it came escaped."""
    from batch import codec
    from batch.running.bodies import Inflater

    inflater = Inflater("gzip", 10**6)
    padded = gzip.compress(IMAGE_BODY) + b"\0" * 512
    assert inflater.feed(padded[:100]) + inflater.feed(padded[100:]) + inflater.finish() == IMAGE_BODY
    assert codec.loads_answer(b'{"a": "x\xed\xa0\x80y"}') == {"a": "x\ufffdy"}


# --- a gateway that throttles for good --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_gateway_that_answers_nothing_but_429_stops_the_run_at_the_outage_limit_tasks_pending(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """Every request answered 429 with a Retry-After that is obeyed: each 429 was taken for an answer (the
    service is up), so the outage limit was never reached; with `Retry-After: 300` a night's run went on
    for days, every task failing for good after its attempts (which the next night's run does not send
    again). Nothing but 429 for --outage-limit now stops the run as an outage does: exit 69, the tasks
    pending for the next run. (Retry-After: 1 here, and 20 attempts: the run took 20 s and exited 1.)"""

    async def handler(request: web.Request) -> web.StreamResponse:
        error = {"error": {"message": "slow down", "type": "rate_limit_exceeded"}}
        return web.json_response(error, status=429, headers={"Retry-After": "1"})

    manifest = write(
        "tasks:\n" + "".join(f"  - {{kind: generate, id: t{i}, prompt: p{i}}}\n" for i in range(2))
    )
    out = tmp_path / "out"
    with stub_server(handler) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        flags = ("--max-attempts", "20", "--outage-limit", "0.5", "-c", "2")
        outcome = cli("run", manifest, "--out", out, *FAST, *flags, env=env)
    assert outcome.code == 69, outcome.out + outcome.err
    assert "answered nothing but HTTP 429 (rate limited)" in outcome.out + outcome.err
    assert results(out) == {}  # pending: the next run sends them
    assert len(stub.requests) <= 4
    assert cli("status", out, "--json").code == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chats_first", [False, True], ids=["an image answered first", "the chats first"])
def test_an_endpoint_that_answers_nothing_but_429_is_left_alone_and_the_others_tasks_go_on(
    chats_first: bool, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """The chat deployment throttled for good (a day's quota spent: Gemini's RESOURCE_EXHAUSTED), the
    image one fine. A 429 spends no attempt, so each chat task held its worker until --task-deadline;
    once every worker held one, nothing but 429 came back, and the run stopped at --outage-limit with
    the image tasks never sent. An endpoint that answers nothing but 429 for --outage-limit, while
    another answers, is now left alone: its tasks are left pending, the others' are done, exit 69.
    With the chat tasks first, more of them than --concurrency, no other endpoint had answered yet, so
    none could be given up and every resume did the same: one not heard from yet counts as one that may
    answer."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if "/ep-chat/" in request.path:
            error = {"error": {"message": "Resource has been exhausted (e.g. check quota).", "code": 429}}
            return web.json_response(error, status=429)
        return web.Response(body=IMAGE_BODY, content_type="application/json")

    chats = "".join(f"  - {{kind: chat, id: c{i}, model: m, prompt: p{i}}}\n" for i in range(4))
    images = [f"  - {{kind: generate, id: i{i}, prompt: p{i}}}\n" for i in range(4)]
    tasks = chats + "".join(images) if chats_first else images[0] + chats + "".join(images[1:])
    manifest = write("tasks:\n" + tasks)
    out = tmp_path / "out"
    with stub_server(handler) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url}
        endpoints = ("--endpoint", "chat=ep-chat", "--endpoint", "generate=ep-images")
        flags = ("--backoff", "0.05", "--backoff-max", "0.1", "--outage-limit", "1", "-c", "2")
        outcome = cli("run", manifest, "--out", out, *endpoints, *flags, env=env)
    assert outcome.code == 69, outcome.out + outcome.err
    done = results(out)
    assert sorted(done) == [f"i{i}" for i in range(4)]  # every image; no chat failed, all pending
    assert all(record["status"] == "succeeded" for record in done.values())
    assert "ep-chat has answered nothing but HTTP 429 (rate limited)" in outcome.err
    assert "4 task(s) left pending, rate limited" in outcome.out and "4 not run" in outcome.out
    assert stub.count("/images/generations") == 4


@pytest.mark.timeout(60)
def test_a_429_sent_after_part_of_a_stream_spends_an_attempt_as_it_may_have_been_billed(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """A 429 costs no attempt because nothing was taken, nor billed. One sent as an error event after a
    chunk that carried a usage came after part of an answer: billed, at least in part. It spends an
    attempt as any paid failure does; free, it was bought again and again until --task-deadline."""
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Half"}, "finish_reason": None}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    error = {"error": {"message": "Resource has been exhausted (e.g. check quota).", "code": 429}}

    async def handler(request: web.Request) -> web.StreamResponse:
        return sse(json.dumps(chunk).encode(), json.dumps(error).encode())

    manifest = write("tasks:\n  - {kind: chat, id: t, model: m, prompt: p, stream: true}\n")
    out = tmp_path / "out"
    with stub_server(handler) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        flags = ("--task-deadline", "5", "--outage-limit", "60")
        outcome = cli("run", manifest, "--out", out, *FAST, *ATTEMPTS, *flags, env=env)
    assert outcome.code == 1, outcome.out + outcome.err
    record = results(out)["t"]
    assert record["status"] == "failed" and record["attempts"] == 3 == len(stub.requests)
    assert record["maybe_billed"] == 3 and len(ledger(out)) == 3


@pytest.mark.timeout(60)
def test_a_task_left_pending_at_its_deadline_keeps_its_maybe_billed_usage_in_the_summarys_cost(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """Part of a stream with a usage, then a 502 error event: maybe billed, its usage so far in the
    ledger's cost. Then nothing but 429 until --task-deadline: the task is left pending. The summary
    said of that request "0 in the cost above, 1 in no cost", though its usage is in the cost (as
    `report` says): a task left pending, or its endpoint given up, dropped its part of the split."""
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Half"}, "finish_reason": None}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    cut = {"error": {"message": "upstream connection closed", "code": 502}}
    throttled = {"error": {"message": "Resource has been exhausted (e.g. check quota).", "code": 429}}

    async def handler(request: web.Request) -> web.StreamResponse:
        if len(stub.requests) == 1:
            return sse(json.dumps(chunk).encode(), json.dumps(cut).encode())
        return web.json_response(throttled, status=429)

    manifest = write("tasks:\n  - {kind: chat, id: t, model: m, prompt: p, stream: true}\n")
    out = tmp_path / "out"
    with stub_server(handler) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        flags = ("--backoff", "0.05", "--backoff-max", "0.1", "--task-deadline", "1", "--outage-limit", "60")
        outcome = cli("run", manifest, "--out", out, *flags, env=env)
        requests = len(stub.requests)
    assert outcome.code == 69, outcome.out + outcome.err
    assert requests > 2 and results(out) == {}  # pending
    assert [line["total_tokens"] for line in ledger(out)] == [5]
    assert "1 request(s) may have been billed" in outcome.out
    assert "1 in the cost above (a usage so far: they may have cost more), 0 in no cost" in outcome.out
    report = json.loads(cli("report", out, "--json").out)
    assert report["maybe_billed"] == 1 and report["maybe_billed_counted"] == 1, report


# --- bytes that are no HTTP after a whole answer ----------------------------------------------------------

WHOLE = http_answer(
    "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(IMAGE_BODY)))], IMAGE_BODY
)


@pytest.mark.timeout(60)
def test_a_stray_byte_after_each_answer_is_an_answer_maybe_billed_and_named_as_such(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """A space after every whole answer, in the same write: aiohttp reads it as the status line of the
    answer that would follow, and hands over none of what it parsed before it; the answer is lost. What
    can be said is said: each request may have been billed (status counts them), and the failure names
    what happened; it read "connection failed: 400", as if the API had refused the request."""

    def answer(key: str, number: int) -> bytes:
        return WHOLE + b" "

    manifest = write("tasks:\n  - {kind: generate, id: odd, prompt: p}\n")
    out = tmp_path / "out"
    with raw_server(answer) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        outcome = cli("run", manifest, "--out", out, *FAST, "--max-attempts", "2", env=env)
    assert outcome.code == 1, outcome.err
    record = results(out)["odd"]
    assert record["status"] == "failed" and record["maybe_billed"] == 2 == len(stub.requests)
    message = record["error"]["message"]
    assert message.startswith("the answer could not be read as HTTP") and "400" not in message.split(":")[0]
    assert json.loads(cli("status", out, "--json").out)["maybe_billed"] == 2


@pytest.mark.timeout(60)
def test_junk_before_the_next_answer_on_a_kept_connection_costs_that_request_once_counted(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """The junk comes after the next request went out on the kept-alive connection (a proxy that flushes
    a stray byte late): that request's answer is the one lost. It is counted maybe billed, said as what it
    is, and asked again on a new connection; the answer before it was whole and is kept."""

    def answer(key: str, number: int) -> bytes:
        return (b" " if number == 2 else b"") + WHOLE

    manifest = write(
        "tasks:\n  - {kind: generate, id: a, prompt: a}\n  - {kind: generate, id: b, prompt: b}\n"
    )
    out = tmp_path / "out"
    with raw_server(answer) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        outcome = cli("run", manifest, "--out", out, *FAST, "-c", "1", "--verbose", env=env)
    assert outcome.code == 0, outcome.err
    done = results(out)
    assert {record["status"] for record in done.values()} == {"succeeded"}
    assert len(stub.requests) == 3 and len(ledger(out)) == 2
    [second] = [record for record in done.values() if record["attempts"] == 2]
    assert second["maybe_billed"] == 1
    assert "the answer could not be read as HTTP" in outcome.err
    assert json.loads(cli("status", out, "--json").out)["maybe_billed"] == 1
