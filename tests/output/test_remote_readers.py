"""The readers that need more than the journals, on an s3:// output (a real S3 on loopback, moto):
`export --format openai` reads the images from the store, the gallery's page and thumbnails are written
into it, and retry-failed runs a store's failed tasks again."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.simulator import RunningSimulator, SimConfig, simulator_in_thread
from tests.conftest import FAST, KEY, Outcome, env_for
from tests.s3_server import S3

pytestmark = pytest.mark.timeout(60)


def results(s3: S3) -> dict[str, dict[str, object]]:
    """The store's result lines by task id (a task's first line, as a reader sees it)."""
    found: dict[str, dict[str, object]] = {}
    for _, data in sorted(s3.objects("results").items()):
        for line in data.decode().splitlines():
            record = json.loads(line)
            found.setdefault(record["id"], record)
    return found


def test_export_openai_of_a_store_streams_each_image_from_the_store(
    write: Callable[..., Path], sim: RunningSimulator, s3: S3, cli: Callable[..., Outcome]
) -> None:
    manifest = write(
        "tasks:\n"
        "  - {kind: generate, id: t0, prompt: a fox}\n"
        "  - {kind: generate, id: t1, prompt: a hen}\n"
        "  - {kind: chat, id: c0, model: gemini-2.5-flash, prompt: hello}\n"
    )
    done = cli("run", manifest, "--out", s3.url, "--no-progress", env={**env_for(sim), **s3.env})
    assert done.code == 0, done.err
    saved = results(s3)
    [t0_image] = saved["t0"]["files"]  # type: ignore[misc]
    [t1_image] = saved["t1"]["files"]  # type: ignore[misc]
    s3.fs.rm(f"{s3.bucket}/out/{t1_image}")  # lost from the store since: its line has one image fewer

    exported = cli("export", s3.url, "--format", "openai", env=s3.env)

    assert exported.code == 0, exported.err
    lines = {line["custom_id"]: line for line in map(json.loads, exported.out.splitlines())}
    assert sorted(lines) == ["c0", "t0", "t1"]
    # the OpenAI Batch output format: an images answer's body is {"created", "data": [{"b64_json"}], ...}
    [image] = lines["t0"]["response"]["body"]["data"]
    assert base64.b64decode(image["b64_json"]) == s3.objects()[str(t0_image)]
    assert lines["t1"]["response"]["body"]["data"] == []
    assert f"{t1_image} is not in the store" in exported.err
    assert lines["c0"]["response"]["body"]["object"] == "chat.completion"


def test_retry_failed_of_a_store_sends_only_the_failed_tasks_and_their_new_lines_count(
    write: Callable[..., Path], s3: S3, cli: Callable[..., Outcome]
) -> None:
    manifest = write(
        "tasks:\n" + "".join(f"  - {{kind: generate, id: t{i:02d}, prompt: p {i}}}\n" for i in range(12))
    )
    # a server that fails a third of the answers for good (500s, with no retry left)
    flaky = SimConfig(api_key=KEY, error_rate=0.35, retry_after=0, seed=11)
    with simulator_in_thread(flaky) as sim:
        env = {**env_for(sim), **s3.env}
        first = cli("run", manifest, "--out", s3.url, *FAST, "--max-attempts", "1", env=env)
    assert first.code == 1
    failed = sorted(k for k, r in results(s3).items() if r["status"] == "failed")
    assert failed and len(failed) < 12
    assert f"maas-batch retry-failed {s3.url}" in first.out
    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        again = cli("retry-failed", s3.url, env={**env_for(sim), **s3.env})
        assert again.code == 0, again.err
        assert sim.state.requests_total == len(failed)  # the failed tasks, and nothing else
        assert f"{len(failed)} failed task(s) were given another go" in again.out
        # done: a plain run, or the retry again, sends nothing
        assert cli("run", manifest, "--out", s3.url, env={**env_for(sim), **s3.env}).code == 0
        assert cli("retry-failed", s3.url, env={**env_for(sim), **s3.env}).code == 0
        assert sim.state.requests_total == len(failed)
    status = json.loads(cli("status", s3.url, "--json", env=s3.env).out)
    assert (status["succeeded"], status["failed"], status["pending"]) == (12, 0, 0)
    # the first lines of the failures are kept in the store, for the record, as in a directory
    moved = [
        json.loads(line) for data in s3.objects("retried").values() for line in data.decode().splitlines()
    ]
    assert sorted(r["id"] for r in moved) == failed and all(r["status"] == "failed" for r in moved)
    exported = cli("export", s3.url, "--format", "jsonl", env=s3.env)
    assert [json.loads(line)["status"] for line in exported.out.splitlines()] == ["succeeded"] * 12
