"""A fourth kind is one file: this one. An embeddings kind, written here and handed to `batch.run`, runs
end to end through the real engine against a stub server: validated, expanded from a prompts file, read
from an OpenAI Batch input line, sent, billed from its usage, kept in the result line, and resumed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import batch
from batch.errors import BrokenAnswerError
from batch.kind import Answer, ApiRequest, FileReader, TaskKind
from batch.manifest.fields import FieldIssue, IntRange, Text, check_rules
from tests.conftest import ledger, results
from tests.stub import stub_server

RULES = (
    Text("input", required=True, non_empty=True),
    Text("model", required=True),
    IntRange("dimensions", low=1),
)


class Embeddings(TaskKind):
    """`POST {base}/{endpoint}/embeddings`: a text in, a vector out. Everything else is the default."""

    name = "embed"
    known_fields = frozenset(rule.name for rule in RULES)
    openai_batch_urls = ("/v1/embeddings",)
    prompt_fields = ("input",)

    def check(self, fields: Mapping[str, Any]) -> list[FieldIssue]:
        return check_rules(fields, RULES)

    def build_request(self, fields: Mapping[str, Any], read: FileReader) -> ApiRequest:
        return ApiRequest("embeddings", json=dict(fields))

    def parse_answer(self, fields: Mapping[str, Any], body: Any) -> Answer:
        data = body.get("data") if isinstance(body, Mapping) else None
        vector = (
            data[0].get("embedding")
            if isinstance(data, list) and data and isinstance(data[0], Mapping)
            else None
        )
        if not isinstance(vector, list):
            raise BrokenAnswerError(
                "answer has no embedding", usage=self.usage_of(body), error_type="no_embedding"
            )
        return Answer(extra={"embedding": vector})


def vector_of(text: str) -> list[float]:
    return [float(len(text)), float(sum(map(ord, text)) % 97)]


async def embeddings(request: web.Request) -> web.StreamResponse:
    """What an embeddings endpoint answers: a vector per input, and the tokens read."""
    if not request.path.endswith("/embeddings"):
        return web.json_response({"error": {"message": f"no route {request.path}"}}, status=404)
    body = await request.json()
    usage = {"prompt_tokens": len(body["input"].split()), "total_tokens": len(body["input"].split())}
    return web.json_response(
        {"object": "list", "data": [{"index": 0, "embedding": vector_of(body["input"])}], "usage": usage}
    )


@pytest.fixture
def manifest(write: Callable[..., Path], tmp_path: Path) -> Path:
    (tmp_path / "sentences.txt").write_text("a red fox\nthe quick brown dog jumps\n", encoding="utf-8")
    return write(
        "defaults:\n  embed: {model: text-embedding-3-small}\n"
        "tasks:\n"
        "  - {kind: embed, id: one, input: hello world, dimensions: 2}\n"
        "  - {kind: embed, id: line, prompts_file: sentences.txt}\n"
    )


def test_a_kind_of_ones_own_runs_end_to_end_and_resumes(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    with stub_server(embeddings) as stub:
        for name, value in {
            "MAAS_API_KEY": "k",
            "MAAS_BASE_URL": stub.base_url,
            "MAAS_ENDPOINT": "ep",
        }.items():
            monkeypatch.setenv(name, value)
        summary = batch.run(manifest, out, kinds=[Embeddings()])
        again = batch.run(manifest, out, kinds=[Embeddings()])
    assert summary.exit_code == 0 and summary.succeeded == 3
    assert stub.count("/ep/embeddings") == 3  # and the second run sent nothing: every task had its line
    assert again.succeeded == 0 and stub.count("/embeddings") == 3
    done = results(out)
    assert done["one"]["embedding"] == vector_of("hello world")
    assert done["one"]["params"] == {"model": "text-embedding-3-small", "dimensions": 2}
    by_prompt = {record["prompt"]: record for record in done.values()}  # prompts_file filled `input`
    assert by_prompt["the quick brown dog jumps"]["embedding"] == vector_of("the quick brown dog jumps")
    assert by_prompt["the quick brown dog jumps"]["usage"] == {
        "input_tokens": 5,
        "output_tokens": 0,
        "total_tokens": 5,
    }
    assert all(record["files"] == [] and record["kind"] == "embed" for record in done.values())
    assert sorted(line["input_tokens"] for line in ledger(out)) == [2, 3, 5]


def test_openai_batch_lines_reach_the_kind_that_claims_their_url(tmp_path: Path) -> None:
    lines = tmp_path / "batch.jsonl"
    line = {
        "custom_id": "q-1",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "m", "input": "hi"},
    }
    lines.write_text(json.dumps(line) + "\n", encoding="utf-8")
    checked = batch.validate(lines, kinds=[Embeddings()], endpoint="ep")
    assert checked.plan.total == 1 and list(checked.plan.counts) == [("embed", "m", "ep")]
    lines.write_text(json.dumps({**line, "url": "/v1/moderations"}) + "\n", encoding="utf-8")
    with pytest.raises(
        batch.ManifestError, match=r"url: must be one of /v1/images/generations, .*/v1/embeddings"
    ):
        batch.validate(lines, kinds=[Embeddings()], endpoint="ep")


def test_without_the_kind_the_manifest_is_refused_before_anything_is_sent(manifest: Path) -> None:
    with pytest.raises(batch.ManifestError, match="kind: is not a task kind"):
        batch.validate(manifest, endpoint="ep")
