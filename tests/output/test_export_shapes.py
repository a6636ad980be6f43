"""`export`: results leave as completely as they came in. jsonl carries every field of a result line;
openai writes the OpenAI Batch output format, answers rebuilt in the API's shape, images read back from DIR."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batch.output import export as export_module
from batch.simulator import RunningSimulator
from tests.conftest import Outcome, env_for, make_image, results

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"sku": "A1"}'}}
CALL_B = {"id": "call_2", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
CHAT = {
    "id": "two-choices",
    "kind": "chat",
    "status": "succeeded",
    "model": "gemini-2.5-flash",
    "custom_id": "row-7",
    "prompt": "label it",
    "params": {"n": 2},
    "files": [],
    "text": None,
    "texts": [None, "a lamp"],
    "finish_reason": "tool_calls",
    "finish_reasons": ["tool_calls", "stop"],
    "tool_calls": [CALL],
    "tool_calls_per_choice": [[CALL], [CALL_B]],
    "reasoning": "the user wants a label",
    "request_id": "req-abc",
    "answer_file": "answers/two-choices.json",
    "usage": {"input_tokens": 21, "output_tokens": 1065, "total_tokens": 1086, "reasoning_tokens": 1060},
    "cost": 0.0027,
    "attempts": 1,
    "meta": {"row": 7},
    "finished_at": "2026-11-22T23:00:02.000+00:00",
    "a_field_added_later": {"kept": True},
}
IMAGES = {
    "id": "short",
    "kind": "generate",
    "status": "succeeded",
    "model": "gpt-image-1",
    "files": ["images/short~1.png", "images/short~2.png"],
    "images_missing": 1,
    "request_id": "req-img",
    "usage": {"input_tokens": 5, "output_tokens": 544, "total_tokens": 549},
    "cost": 0.02,
    "attempts": 1,
    "finished_at": "2026-11-22T23:00:03.500+00:00",
}
REFUSED = {
    "id": "refused",
    "kind": "generate",
    "status": "failed",
    "model": "gpt-image-1",
    "custom_id": "row-9",
    "files": [],
    "usage": None,
    "error": {"type": "moderation_blocked", "status": 400, "message": "rejected by the safety system"},
    "attempts": 1,
}
CUT = {
    "id": "cut",
    "kind": "chat",
    "status": "failed",
    "model": "gemini-2.5-flash",
    "files": [],
    "error": {"type": "transport", "status": None, "message": "connection reset (after 6 attempts)"},
    "attempts": 6,
}


def write_results(root: Path, *records: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return root


def lines_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def assert_batch_output_line(line: dict[str, Any]) -> None:
    """The per-line object of an OpenAI Batch output (or error) file, field by field."""
    assert list(line) == ["id", "custom_id", "response", "error"]
    assert isinstance(line["id"], str) and line["id"].startswith("batch_req_")
    assert isinstance(line["custom_id"], str) and line["custom_id"]
    response, error = line["response"], line["error"]
    assert response is not None or error is not None
    if response is not None:
        assert set(response) == {"status_code", "request_id", "body"}
        assert isinstance(response["status_code"], int) and isinstance(response["request_id"], str)
        assert isinstance(response["body"], dict)
    if error is not None:
        assert set(error) == {"code", "message"}
        assert all(isinstance(v, str) for v in error.values())
    else:
        assert response is not None and response["status_code"] == 200


def assert_chat_completion(body: dict[str, Any]) -> None:
    assert body["object"] == "chat.completion" and isinstance(body["id"], str) and body["id"]
    assert isinstance(body["created"], int) and isinstance(body["model"], str)
    assert [choice["index"] for choice in body["choices"]] == list(range(len(body["choices"])))
    for choice in body["choices"]:
        assert choice["message"]["role"] == "assistant"
        assert choice["message"]["content"] is None or isinstance(choice["message"]["content"], str)
        assert "finish_reason" in choice
    usage = body["usage"]
    assert all(isinstance(usage[k], int) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))


def assert_images_response(body: dict[str, Any]) -> None:
    assert set(body) == {"created", "data", "usage"} and isinstance(body["created"], int)
    assert all(set(item) == {"b64_json"} and isinstance(item["b64_json"], str) for item in body["data"])
    assert all(isinstance(body["usage"][k], int) for k in ("input_tokens", "output_tokens", "total_tokens"))


@pytest.mark.timeout(30)
def test_jsonl_export_carries_every_field_of_every_result_line(
    cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    root = write_results(tmp_path / "out", CHAT, IMAGES, REFUSED, CUT)
    rows = lines_of(cli("export", root, "--format", "jsonl").out)
    assert [r["id"] for r in rows] == ["two-choices", "short", "refused", "cut"]
    for record, row in zip((CHAT, IMAGES, REFUSED, CUT), rows, strict=True):
        assert {k: row.get(k) for k in record} == record, "no field of the result line is left behind"
    chat, images, refused, cut = rows
    assert chat["texts"] == [None, "a lamp"] and chat["tool_calls_per_choice"] == [[CALL], [CALL_B]]
    assert (chat["input_tokens"], chat["total_tokens"]) == (21, 1086), "the flat columns are still there"
    assert images["images_missing"] == 1 and images["meta"] == {}
    assert (refused["error_type"], refused["error_message"]) == (
        "moderation_blocked",
        REFUSED["error"]["message"],
    )
    assert cut["text"] is None and cut["files"] == []


@pytest.mark.timeout(30)
def test_openai_export_rebuilds_answers_and_failures_in_the_batch_output_shape(
    cli: Callable[..., Outcome],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(export_module, "CHUNK", 12)  # an image goes out in many pieces: they must join
    root = write_results(tmp_path / "out", CHAT, IMAGES, REFUSED, CUT)
    saved = make_image(root / "images" / "short~1.png", (40, 30)).read_bytes()  # short~2.png was deleted
    first = cli("export", root, "--format", "openai")
    assert first.code == 0 and "short: images/short~2.png is not in" in first.err
    lines = lines_of(first.out)
    for line in lines:
        assert_batch_output_line(line)
    chat, images, refused, cut = lines
    assert [line["custom_id"] for line in lines] == ["row-7", "short", "row-9", "cut"]
    assert len({line["id"] for line in lines}) == 4
    assert [line["id"] for line in lines_of(cli("export", root, "--format", "openai").out)] == [
        line["id"] for line in lines
    ], "the line ids are stable from one export to the next"

    assert chat["response"]["request_id"] == "req-abc" and chat["error"] is None
    body = chat["response"]["body"]
    assert_chat_completion(body)
    first_choice, second_choice = body["choices"]
    assert first_choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [CALL],
        "reasoning_content": "the user wants a label",
    }
    assert first_choice["finish_reason"] == "tool_calls"
    assert second_choice["message"] == {"role": "assistant", "content": "a lamp", "tool_calls": [CALL_B]}
    assert second_choice["finish_reason"] == "stop"
    assert body["usage"] == {
        "prompt_tokens": 21,
        "completion_tokens": 1065,
        "total_tokens": 1086,
        "completion_tokens_details": {"reasoning_tokens": 1060},
    }
    assert body["created"] == 1795388402

    image_body = images["response"]["body"]
    assert_images_response(image_body)
    assert [base64.b64decode(item["b64_json"], validate=True) for item in image_body["data"]] == [saved]
    assert image_body["usage"] == {"input_tokens": 5, "output_tokens": 544, "total_tokens": 549}

    assert refused["response"]["status_code"] == 400
    assert refused["response"]["body"]["error"]["message"] == "rejected by the safety system"
    assert refused["error"] == {"code": "moderation_blocked", "message": "rejected by the safety system"}
    assert cut["response"] is None
    assert cut["error"] == {"code": "transport", "message": "connection reset (after 6 attempts)"}


@pytest.mark.timeout(30)
def test_openai_export_reads_tool_calls_written_as_a_list_per_choice(
    cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    older = {**CHAT, "texts": None, "text": None, "finish_reasons": None, "tool_calls": [[CALL, CALL_B]]}
    del older["tool_calls_per_choice"]
    root = write_results(tmp_path / "out", older)
    (line,) = lines_of(cli("export", root, "--format", "openai").out)
    (choice,) = line["response"]["body"]["choices"]
    assert choice["message"]["tool_calls"] == [CALL, CALL_B] and choice["finish_reason"] == "tool_calls"


@pytest.mark.timeout(60)
def test_openai_export_of_a_simulated_run_reads_as_openai_batch_output(
    cli: Callable[..., Outcome], sim: RunningSimulator, tmp_path: Path
) -> None:
    source = EXAMPLES / "openai-batch.jsonl"
    out = tmp_path / "out"
    assert cli("run", source, "--out", out, env=env_for(sim)).code == 0
    written = tmp_path / "batch_output.jsonl"
    outcome = cli("export", out, "--format", "openai", "--output", written)
    assert outcome.code == 0 and "4 rows written" in outcome.err
    lines = lines_of(written.read_text(encoding="utf-8"))
    inputs = {json.loads(line)["custom_id"]: json.loads(line) for line in source.read_text().splitlines()}
    assert sorted(line["custom_id"] for line in lines) == sorted(inputs)
    by_custom_id = {r["custom_id"]: r for r in results(out).values()}
    for line in lines:
        assert_batch_output_line(line)
        assert line["error"] is None
        body = line["response"]["body"]
        record = by_custom_id[line["custom_id"]]
        if inputs[line["custom_id"]]["url"].endswith("/chat/completions"):
            assert_chat_completion(body)
            assert body["choices"][0]["message"]["content"] == record["text"]
            assert body["choices"][0]["finish_reason"] == "stop"
            assert body["usage"]["total_tokens"] == record["usage"]["total_tokens"] > 0
        else:
            assert_images_response(body)
            decoded = [base64.b64decode(item["b64_json"], validate=True) for item in body["data"]]
            assert decoded == [(out / path).read_bytes() for path in record["files"]] and decoded
            assert body["usage"]["total_tokens"] == record["usage"]["total_tokens"] > 0
