"""The readers that need more than the journals, on an s3:// output (a real S3 on loopback, moto):
`export --format openai` reads the images from the store, the gallery's page and thumbnails are written
into it, and retry-failed runs a store's failed tasks again."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from batch.simulator import RunningSimulator, SimConfig, simulator_in_thread
from tests.conftest import FAST, KEY, Outcome, env_for
from tests.output.test_gallery import page_data
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
    write: Callable[..., Path], s3: S3, cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    manifest = write(
        "tasks:\n" + "".join(f"  - {{kind: generate, id: t{i:02d}, prompt: p {i}}}\n" for i in range(12))
    )
    # a server that fails a third of the answers for good (500s, with no retry left)
    flaky = SimConfig(api_key=KEY, error_rate=0.35, retry_after=0, seed=11)
    with simulator_in_thread(flaky) as sim:
        env = {**env_for(sim), **s3.env}
        # staged in a folder of its own, which stays: retry-failed's run must not be given it again
        stage = ("--stage", str(tmp_path / "stage"))
        first = cli("run", manifest, "--out", s3.url, *stage, *FAST, "--max-attempts", "1", env=env)
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


def test_the_gallery_of_a_store_goes_into_the_store_with_thumbnails_made_once(
    write: Callable[..., Path], sim: RunningSimulator, s3: S3, cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    manifest = write(
        "tasks:\n"
        "  - {kind: generate, id: t0, prompt: a fox, n: 2}\n"
        "  - {kind: generate, id: t1, prompt: a hen}\n"
        "  - {kind: generate, id: refused, prompt: something forbidden}\n"
        "  - {kind: chat, id: c0, model: gemini-2.5-flash, prompt: hello}\n"
    )
    done = cli("run", manifest, "--out", s3.url, "--no-progress", env={**env_for(sim), **s3.env})
    assert done.code == 1, done.err  # the refused one
    images = [str(name) for record in results(s3).values() for name in record["files"]]  # type: ignore[attr-defined]
    assert len(images) == 3

    built = cli("gallery", s3.url, env=s3.env)

    assert built.code == 0, built.err
    assert f"{s3.url}/index.html written" in built.out
    objects = s3.objects()
    page = tmp_path / "index.html"
    page.write_bytes(objects["index.html"])
    data = page_data(page)
    assert data["title"] == "out" and data["statuses"] == {"succeeded": 3, "failed": 1}
    cards = {card["id"]: card for card in data["items"]}
    assert [len(cards[i]["thumbs"]) for i in ("t0", "t1", "refused", "c0")] == [2, 1, 0, 0]
    for card in cards.values():  # each picture the page shows is in the store, made from the store's image
        for thumb, image in zip(card["thumbs"], card["files"], strict=True):
            assert thumb == f"thumbs/{Path(image).name}.webp"
            assert objects[thumb][:4] == b"RIFF" and objects[thumb][8:12] == b"WEBP"
            assert Image.open(io.BytesIO(objects[thumb])).size[0] <= 320
    assert KEY.encode() not in objects["index.html"]

    # built again: the store's thumbnails are used, not made again (t1's image is gone from the store)
    s3.fs.rm(f"{s3.bucket}/out/{cards['t1']['files'][0]}")
    again = cli("gallery", s3.url, env=s3.env)
    assert again.code == 0, again.err
    page.write_bytes(s3.objects()["index.html"])
    assert [card["thumbs"] for card in page_data(page)["items"] if card["id"] == "t1"] == [
        cards["t1"]["thumbs"]
    ]


def test_the_gallery_of_a_store_reads_no_local_file_a_line_names(
    s3: S3, cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    """A result line in the store names a file outside the output (an absolute path, a way out through
    ".."): its thumbnail is not made from this machine's file, nor uploaded."""
    secret, other = tmp_path / "secret.png", tmp_path / "other.png"
    for picture in (secret, other):
        Image.new("RGB", (8, 8), "red").save(picture)
    outside = [str(secret), f"images/../../../../../../../../..{other}"]
    line = {"id": "evil", "kind": "generate", "status": "succeeded", "files": outside}
    s3.fs.pipe_file(
        f"{s3.bucket}/out/results/20260101T000000Z-aaaaaa-000000000000.jsonl",
        json.dumps(line).encode() + b"\n",
    )

    built = cli("gallery", s3.url, "--include-orphaned", env=s3.env)

    assert built.code == 0, built.err
    assert not [name for name in s3.objects() if name.startswith("thumbs/")]


def test_rerun_changed_of_a_store_sends_the_changed_task_and_its_new_line_is_the_one_read(
    write: Callable[..., Path], sim: RunningSimulator, s3: S3, cli: Callable[..., Outcome]
) -> None:
    """The store's first line of a task is its result; the line --rerun-changed sets aside is a success,
    which the rule for --retry-failed's failures does not drop: it is dropped by its bytes."""

    def tasks(q: str) -> str:
        return f"tasks:\n  - {{kind: chat, id: q, model: gemini-2.5-flash, prompt: {q}}}\n" + "".join(
            f"  - {{kind: chat, id: t{i}, model: gemini-2.5-flash, prompt: p {i}}}\n" for i in range(3)
        )

    env = {**env_for(sim), **s3.env}
    assert cli("run", write(tasks("hi")), "--out", s3.url, env=env).code == 0
    sent = sim.state.requests_total
    fixed = write(tasks("hi there"))

    rerun = cli("run", fixed, "--out", s3.url, "--rerun-changed", env=env)

    assert rerun.code == 0 and "1 finished task(s) whose request changed were given another go" in rerun.out
    assert sim.state.requests_total == sent + 1
    exported = [
        json.loads(line) for line in cli("export", s3.url, "--format", "jsonl", env=s3.env).out.splitlines()
    ]
    assert [(line["id"], line["prompt"]) for line in exported if line["id"] == "q"] == [("q", "hi there")]
    shown = cli("status", s3.url, "--json", env=env)
    assert shown.code == 0, shown.err
    status = json.loads(shown.out)
    assert (status["succeeded"], status["failed"], status["pending"]) == (4, 0, 0), status
    # with --manifest, its tasks' endpoint is MAAS_ENDPOINT, as `run` takes it (a store's view remembers
    # no run's): it was refused, exit 78, "no endpoint for this chat task"
    checked = cli("status", s3.url, "--json", "--manifest", fixed, env=env)
    assert checked.code == 0, checked.err
    assert (json.loads(checked.out)["changed"], json.loads(checked.out)["succeeded"]) == (0, 4)
    # a run after it sends nothing: the store's view holds the new line, not the old one
    assert cli("run", fixed, "--out", s3.url, "--rerun-changed", env=env).code == 0
    assert sim.state.requests_total == sent + 1
    moved = [
        json.loads(line) for data in s3.objects("retried").values() for line in data.decode().splitlines()
    ]
    assert [(line["id"], line["prompt"], line["status"]) for line in moved] == [("q", "hi", "succeeded")]


def test_a_staging_folder_that_cannot_be_made_is_exit_74_with_its_reason(
    write: Callable[..., Path], s3: S3, cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    """Every store command assembles a folder first: a full or unwritable disk there was a traceback
    and exit 1, which a cron job reads as "some tasks failed"."""
    manifest = write("tasks:\n  - {kind: chat, id: q, model: gemini-2.5-flash, prompt: hi}\n")
    (tmp_path / "file").write_text("not a folder")
    env = {**s3.env, "MAAS_API_KEY": KEY, "MAAS_ENDPOINT": "ep"}
    done = cli("run", manifest, "--out", s3.url, "--stage", tmp_path / "file" / "stage", env=env)
    assert done.code == 74 and "Traceback" not in done.err, done.err
    assert f"cannot assemble {tmp_path / 'file' / 'stage'} from {s3.url}" in done.err
