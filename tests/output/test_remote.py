"""Outputs on a store (output.remote) against a real S3 on loopback (moto): create-only files, the view
assembled from segments, and the usage errors of a URL that cannot be used."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batch.errors import DirLockedError, OutputError
from batch.output.remote import Mirror, Store, flush_kept, held_here, open_store, pull
from batch.output.store import RESULTS, USAGE, retried_ids
from batch.simulator import RunningSimulator
from tests.conftest import ROOT, Outcome, env_for
from tests.s3_server import S3

pytestmark = pytest.mark.timeout(60)


def test_an_image_the_store_holds_is_never_overwritten(
    write: Callable[..., Path], sim: RunningSimulator, store: S3, cli: Callable[..., Outcome]
) -> None:
    s3 = store  # S3 (moto), then Azure Blob (Azurite)
    # a worker that died saved t0's image but not its result line
    s3.fs.pipe_file(f"{s3.bucket}/out/images/t0.png", b"a dead worker's bytes")
    manifest = write(
        "tasks:\n  - {kind: generate, id: t0, prompt: a fox}\n  - {kind: generate, id: t1, prompt: b}\n"
    )
    done = cli("run", manifest, "--out", s3.url, "--no-progress", env={**env_for(sim), **s3.env})
    assert done.code == 0, done.err
    objects = s3.objects()
    assert objects["images/t0.png"] == b"a dead worker's bytes"
    results = {
        record["id"]: record
        for name, data in objects.items()
        if name.startswith("results/")
        for record in map(json.loads, data.decode().splitlines())
    }
    [kept] = results["t0"]["files"]
    assert kept != "images/t0.png" and kept.startswith("images/t0.") and kept.endswith(".png")
    assert objects[kept].startswith(b"\x89PNG")  # the paid answer is in the store, under its own name
    assert results["t1"]["files"] == ["images/t1.png"]
    # the run's gallery page, into the store at the end, names what the store holds
    assert f"(gallery: {s3.url}/index.html)" in done.out
    assert f'"{kept}"'.encode() in objects["index.html"] and b'"images/t0.png"' not in objects["index.html"]
    assert {f"thumbs/{Path(kept).name}.webp", "thumbs/t1.png.webp"} <= set(objects)


def test_the_view_keeps_a_tasks_first_line_and_counts_answers_not_saved_by_their_run(
    s3: S3, tmp_path: Path
) -> None:
    def put(name: str, *records: dict[str, object]) -> None:
        s3.fs.pipe_file(f"{s3.bucket}/out/{name}", b"".join(json.dumps(r).encode() + b"\n" for r in records))

    put("results/20260101T000000Z-aaaaaa-000001.jsonl", {"id": "t0", "status": "succeeded", "files": []})
    put(
        "results/20260101T010000Z-bbbbbb-000001.jsonl",
        {"id": "t0", "status": "failed"},
        {"id": "t1", "status": "succeeded", "files": []},
    )
    put(
        "runs/20260101T000000Z-aaaaaa/000001.jsonl",
        {"event": "start", "at": "x"},
        {"event": "sent", "request_id": "t0/aaaaaa.1", "task_id": "t0"},
        {"event": "done", "request_id": "t0/aaaaaa.1", "outcome": "answered", "status": 200},
        {"event": "sent", "request_id": "t1/aaaaaa.1", "task_id": "t1"},
        {"event": "done", "request_id": "t1/aaaaaa.1", "outcome": "answered", "status": 200},
        {"event": "sent", "request_id": "t2/aaaaaa.1", "task_id": "t2"},
    )
    put("runs/20260101T000000Z-aaaaaa/000002.jsonl", {"event": "end", "at": "y"})
    view = tmp_path / "view"
    pull(open_store(s3.url), view)
    lines = [json.loads(line) for line in (view / "results.jsonl").read_text().splitlines()]
    assert lines == [
        {"id": "t0", "status": "succeeded", "files": []},
        {"id": "t1", "status": "succeeded", "files": []},
    ]
    log = [
        json.loads(line)
        for line in (view / "runs" / "20260101T000000Z-aaaaaa.jsonl").read_text().splitlines()
    ]
    assert [r["event"] for r in log] == ["start", "sent", "done", "sent", "done", "sent", "end"]
    assert "maybe_billed" not in log[2]  # t0's answer: this run's line is the one kept
    assert log[4]["maybe_billed"] is True  # t1's answer was lost: another run's line is kept
    assert (view / "usage.jsonl").read_bytes() == b""


def test_the_view_drops_the_lines_of_runs_before_the_one_that_retried_a_task(s3: S3, tmp_path: Path) -> None:
    def put(name: str, *records: dict[str, object]) -> None:
        s3.fs.pipe_file(f"{s3.bucket}/out/{name}", b"".join(json.dumps(r).encode() + b"\n" for r in records))

    a, b, c = "20260101T000000Z-aaaaaa", "20260101T010000Z-bbbbbb", "20260101T020000Z-cccccc"
    put(
        f"results/{a}-000000000000.jsonl",
        {"id": "t0", "status": "failed", "run": "a"},
        {"id": "t1", "status": "failed", "run": "a"},
        {"id": "t2", "status": "failed", "run": "a"},
    )
    # a second run on the URL at once (not stopped on a store) failed t0 too
    put(f"results/{b}-000000000000.jsonl", {"id": "t0", "status": "failed", "run": "b"})
    # run c retried t0 and t1 (their first lines moved aside), saved t0's new line, and was stopped
    put(
        f"retried/{c}-000000000000.jsonl",
        {"id": "t0", "status": "failed", "run": "a"},
        {"id": "t1", "status": "failed", "run": "a"},
    )
    put(f"results/{c}-000000000000.jsonl", {"id": "t0", "status": "succeeded", "run": "c"})
    view = tmp_path / "view"
    pull(open_store(s3.url), view)

    kept = [json.loads(line) for line in (view / "results.jsonl").read_text().splitlines()]
    assert kept == [
        {"id": "t2", "status": "failed", "run": "a"},  # not retried: a's line stands
        {"id": "t0", "status": "succeeded", "run": "c"},  # neither a's nor b's failure
    ]  # and t1 is pending: the next --retry-failed sends it (retried_ids), as a plain run does
    assert retried_ids(view) == {"t0", "t1"}


def test_a_success_beats_a_failure_saved_before_it_and_a_retry_never_hides_it(s3: S3, tmp_path: Path) -> None:
    """Two runs at once on a URL (or a shard the queue gave twice): one failed t0, the other answered it.
    The answer is t0's result, before and after a --retry-failed; neither run's request is maybe billed."""

    def put(name: str, *records: dict[str, object]) -> None:
        s3.fs.pipe_file(f"{s3.bucket}/out/{name}", b"".join(json.dumps(r).encode() + b"\n" for r in records))

    a, a2, b = "20260101T000000Z-aaaaaa", "20260101T000001Z-a2a2a2", "20260101T010000Z-bbbbbb"
    failure = {"id": "t0", "status": "failed", "run": "a"}
    put(f"results/{a}-000000000000.jsonl", failure, {"id": "t1", "status": "succeeded", "run": "a"})
    put(f"results/{a2}-000000000000.jsonl", {"id": "t0", "status": "succeeded", "run": "a2"})
    for run, outcome in ((a, "broken"), (a2, "answered")):
        put(
            f"runs/{run}/000000000000.jsonl",
            {"event": "sent", "request_id": f"t0/{run}.1", "task_id": "t0"},
            {"event": "done", "request_id": f"t0/{run}.1", "outcome": outcome, "status": 200},
        )

    def view() -> tuple[list[object], list[object]]:
        folder = tmp_path / secrets.token_hex(3)
        pull(open_store(s3.url), folder)
        kept = [json.loads(line)["run"] for line in (folder / RESULTS).read_text().splitlines()]
        logs = [
            json.loads(li)
            for log in sorted((folder / "runs").glob("*.jsonl"))
            for li in log.read_text().splitlines()
        ]
        return kept, [line.get("maybe_billed") for line in logs if line["event"] == "done"]

    assert view() == (["a", "a2"], [None, None])  # t1 (a), then t0: a2's answer, not a's failure
    put(f"retried/{b}-000000000000.jsonl", failure)  # a retry that saw a's line first (an older version)
    assert view() == (["a", "a2"], [None, None])


@pytest.mark.parametrize(
    "args",
    [
        ("run", "job.yaml", "--out", "gs://bucket/out"),
        ("status", "ftp://host/out"),
        ("report", "s3://"),
    ],
)
def test_a_url_that_is_not_supported_is_a_usage_error(
    args: tuple[str, ...], cli: Callable[..., Outcome]
) -> None:
    done = cli(*args)
    assert done.code == 64
    assert "s3://bucket/prefix" in done.err and "Traceback" not in done.err


def test_a_file_url_is_the_local_directory_it_names(
    write: Callable[..., Path], sim: RunningSimulator, cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    manifest = write("tasks:\n  - {kind: generate, id: t0, prompt: a fox}\n")
    out = tmp_path / "out"
    done = cli("run", manifest, "--out", f"file://{out}", "--no-progress", env=env_for(sim))
    assert done.code == 0, done.err
    assert [json.loads(line)["id"] for line in (out / RESULTS).read_text().splitlines()] == ["t0"]
    assert (out / "images" / "t0.png").is_file() and (out / ".lock").exists()  # a DIR's own guarantees
    assert "1 succeeded" in cli("status", f"file://{out}").out
    other = cli("status", "file://host/out")
    assert other.code == 64 and "give file:///absolute/path" in other.err


def test_without_the_extra_a_url_is_a_usage_error(
    cli: Callable[..., Outcome], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)  # as if it were not installed
    done = cli("status", "s3://bucket/out")
    assert done.code == 64
    assert "pip install 'maas-batch[cloud]'" in done.err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("gallery",), "holds no output of maas-batch"),
        (("retry-failed",), "no run of maas-batch is recorded in s3://"),
        (("export", "--format", "openai"), "holds no output of maas-batch"),
        (("status",), "holds no output of maas-batch"),
    ],
)
def test_a_reader_on_an_empty_store_is_refused(
    args: tuple[str, ...], said: str, s3: S3, cli: Callable[..., Outcome]
) -> None:
    done = cli(args[0], s3.url, *args[1:], env=s3.env)
    assert done.code == 64
    assert said in done.err


def test_help_and_local_commands_do_without_fsspec() -> None:
    code = (
        "import sys\nfrom batch.cli import main\n"
        "try:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        "from batch.running import job\n"
        "print(sorted(m for m in ('fsspec', 's3fs', 'batch.output.remote') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


class MemoryStore:
    """A store in a dict, for the mirror's own rules: create-only, as S3 with If-None-Match. `land_then_fail`
    names an object whose upload lands but whose answer is lost on the way (a timeout)."""

    url = "s3://memory/out"

    def __init__(self, land_then_fail: str = "") -> None:
        self.objects: dict[str, bytes] = {}
        self.land_then_fail = land_then_fail

    def create(self, name: str, data: bytes) -> bool:
        if name in self.objects:
            return False
        self.objects[name] = data
        if name.startswith(self.land_then_fail) and self.land_then_fail:
            self.land_then_fail = ""
            raise OutputError(f"cannot write {self.url}/{name}: ReadTimeoutError")
        return True

    def read(self, name: str) -> bytes | None:
        return self.objects.get(name)

    def read_all(self, folder: str) -> Iterator[tuple[str, bytes]]:
        for name, data in sorted(self.objects.items()):
            if name.startswith(folder + "/"):
                yield name[len(folder) + 1 :], data

    def lines(self, folder: str) -> list[dict[str, object]]:
        return [
            json.loads(line)
            for name, data in sorted(self.objects.items())
            if name.startswith(folder + "/")
            for line in data.splitlines()
        ]


def append_task(root: Path, task_id: str) -> None:
    """What a run writes for a billed, saved task: its ledger line, then its result line."""
    with (root / USAGE).open("a") as usage:
        usage.write(json.dumps({"id": task_id, "request_id": f"{task_id}/r.1", "total_tokens": 10}) + "\n")
    with (root / RESULTS).open("a") as results:
        results.write(json.dumps({"id": task_id, "status": "succeeded", "files": []}) + "\n")


def test_a_result_line_never_reaches_the_store_before_its_ledger_line(tmp_path: Path) -> None:
    """The run writes on while a push reads: a task saved between the push's read of the ledger and its
    read of the results must wait for the next push, or a kill in between leaves a result in the store
    whose cost is in no ledger (and its resume never sends it again)."""
    store = MemoryStore()
    mirror = Mirror(store, tmp_path, "run1")  # type: ignore[arg-type]
    append_task(tmp_path, "a")
    read = mirror._new_lines

    def read_while_the_run_writes(path: Path, offset: int, end: int | None = None) -> bytes:
        data = read(path, offset, end)
        if path.name == USAGE:
            append_task(tmp_path, "b")  # saved by the run just after the push read the ledger
        return data

    mirror._new_lines = read_while_the_run_writes  # type: ignore[method-assign]
    mirror._push_journals()  # then the worker is killed
    billed = {line["id"] for line in store.lines("usage")}
    assert {line["id"] for line in store.lines("results")} <= billed
    mirror._new_lines = read  # type: ignore[method-assign]
    mirror._push_journals()
    assert [line["id"] for line in store.lines("results")] == ["a", "b"]
    assert sorted(line["id"] for line in store.lines("usage")) == ["a", "b"]


def test_an_upload_that_landed_though_it_failed_is_not_written_twice(tmp_path: Path) -> None:
    """A segment whose PUT timed out after S3 stored it: the next push finds it under the same name and
    goes on after its lines, so no ledger line (no cost) is counted twice."""
    store = MemoryStore(land_then_fail="usage/")
    mirror = Mirror(store, tmp_path, "run1")  # type: ignore[arg-type]
    append_task(tmp_path, "a")
    with pytest.raises(OutputError):
        mirror._push_journals()
    append_task(tmp_path, "b")
    mirror._push_journals()  # the run's last push
    assert sorted(line["id"] for line in store.lines("usage")) == ["a", "b"]
    assert sorted(line["id"] for line in store.lines("results")) == ["a", "b"]
    assert mirror.complete
    view = tmp_path / "view"
    pull(store, view)  # type: ignore[arg-type]
    assert len((view / USAGE).read_text().splitlines()) == 2


def test_merging_a_runs_segments_keeps_every_line_once_and_removes_them_a_merge_later(
    store: S3, tmp_path: Path
) -> None:
    s3, opened = store, open_store(store.url)  # S3 (moto), then Azure Blob (Azurite)
    stage = tmp_path / "stage"
    pull(opened, stage)
    mirror = Mirror(opened, stage, "20260101T000000Z-aaaaaa")
    mirror.log_path.parent.mkdir(exist_ok=True)

    def save(task_id: str) -> None:  # a task's lines, each push a segment in each folder
        with mirror.log_path.open("a") as log:
            log.write(
                json.dumps({"event": "sent", "request_id": f"{task_id}/r.1", "task_id": task_id}) + "\n"
            )
        append_task(stage, task_id)
        mirror._push_journals()
        mirror._push_log()

    def view() -> tuple[list[str], list[str], int]:
        folder = tmp_path / f"view-{secrets.token_hex(3)}"
        pull(opened, folder)
        results = [json.loads(line)["id"] for line in (folder / RESULTS).read_text().splitlines()]
        usage = [json.loads(line)["id"] for line in (folder / USAGE).read_text().splitlines()]
        [log] = (folder / "runs").glob("*.jsonl")
        return results, usage, len(log.read_text().splitlines())

    for task_id in "abc":
        save(task_id)
    assert len(s3.objects("usage")) == 3
    mirror.merge()
    objects = s3.objects()
    merged = "usage/20260101T000000Z-aaaaaa-000000000000-000000000110.jsonl"
    assert objects[merged] == (stage / USAGE).read_bytes()  # exactly the segments' bytes, in one object
    assert len(s3.objects("usage")) == 4  # the merged segments stay until the next merge: a reader
    assert view() == (["a", "b", "c"], ["a", "b", "c"], 3)  # that listed them finds them; each line once

    save("d")
    save("e")
    mirror.merge()
    second = "usage/20260101T000000Z-aaaaaa-000000000165"
    assert sorted(s3.objects("usage")) == [  # the first merge's segments are gone, the second's wait
        merged,
        f"{second}-000000000220.jsonl",
        f"{second}.jsonl",
        "usage/20260101T000000Z-aaaaaa-000000000220.jsonl",
    ]
    save("f")
    mirror.merge(final=True)  # the run's end: one segment alone stays as it is; no merged one kept twice
    assert len(s3.objects("usage")) == 3 and len(s3.objects("runs")) == 3
    assert view() == (list("abcdef"), list("abcdef"), 6)
    assert mirror.complete


def test_a_kept_staging_folder_goes_up_each_line_once_whether_it_landed_merged_or_not(
    s3: S3, tmp_path: Path
) -> None:
    """A run stopped by its store (74) keeps its staging folder, holding answers the store lacks. The next
    run given it (--stage) uploads them first, under that run's names: what had landed (segments merged,
    or not yet) is found and not written twice; the rest goes up; and nothing it holds is bought again."""
    opened, stage = open_store(s3.url), tmp_path / "stage"
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    before = Mirror(opened, earlier, "20250101T000000Z-eeeeee")
    append_task(earlier, "x")  # an earlier run's task, in the store already
    before._push_journals()
    pull(opened, stage)
    mirror = Mirror(opened, stage, "20260101T000000Z-aaaaaa")
    mirror.start()
    mirror.log_path.parent.mkdir(exist_ok=True)

    def save(task_id: str, push: bool = True) -> None:
        with mirror.log_path.open("a") as log:
            log.write(
                json.dumps({"event": "sent", "request_id": f"{task_id}/r.1", "task_id": task_id}) + "\n"
            )
        append_task(stage, task_id)
        if push:
            mirror._push_journals()
            mirror._push_log()

    save("a")
    save("b")
    mirror.merge()  # a's and b's segments in one object
    save("c")
    mirror.merge()  # theirs removed; c's alone, as it is
    (stage / "images").mkdir()
    (stage / "images" / "f.png").write_bytes(b"\x89PNG f")
    assert mirror._upload("images/f.png") == "images/f.png"  # its file went up; then the store failed:
    save("d", push=False)  # d, e and f are in the staging folder alone
    save("e", push=False)
    with (stage / USAGE).open("a") as usage, (stage / RESULTS).open("a") as results:
        usage.write(json.dumps({"id": "f", "request_id": "f/r.1", "total_tokens": 10}) + "\n")
        results.write(json.dumps({"id": "f", "status": "succeeded", "files": ["images/f.png"]}) + "\n")
    assert not mirror.complete
    flush_kept(opened, stage)
    view = tmp_path / "view"
    pull(opened, view)
    found = [json.loads(line) for line in (view / RESULTS).read_text().splitlines()]
    assert [line["id"] for line in found] == list("xabcdef")
    assert found[-1]["files"] == ["images/f.png"] and list(s3.objects("images")) == [
        "images/f.png"
    ]  # not twice
    assert [json.loads(line)["id"] for line in (view / USAGE).read_text().splitlines()] == list("xabcdef")
    assert len((view / "runs" / "20260101T000000Z-aaaaaa.jsonl").read_text().splitlines()) == 5
    flush_kept(opened, stage)  # twice: nothing more
    assert len(s3.objects("results")) == 4  # x; a and b merged; c; d, e and f in one


def test_a_kept_staging_folder_whose_run_set_failed_lines_aside_goes_up_from_the_runs_own_lines(
    s3: S3, tmp_path: Path
) -> None:
    """--retry-failed rewrites results.jsonl smaller (the failed lines set aside) before the mirror starts.
    The kept folder's upload started from the size pull had written: past the run's first line, mid-way
    into one, so a torn fragment went up and a paid line was lost. It starts where the mirror did."""
    opened, stage = open_store(s3.url), tmp_path / "stage"
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    before = Mirror(opened, earlier, "20250101T000000Z-eeeeee")
    append_task(earlier, "x")
    with (earlier / RESULTS).open("a") as results:  # a failed line of a long id, set aside below
        results.write(json.dumps({"id": "failed-" + "f" * 80, "status": "failed", "files": []}) + "\n")
    before._push_journals()
    pull(opened, stage)
    kept = [line for line in (stage / RESULTS).read_text().splitlines(True) if '"failed"' not in line]
    (stage / RESULTS).write_text("".join(kept))  # as OutputDir.set_aside rewrites it
    mirror = Mirror(opened, stage, "20260101T000000Z-aaaaaa")
    mirror.start()
    append_task(stage, "a")
    mirror._push_journals()  # a landed; then the store failed
    append_task(stage, "b")
    append_task(stage, "c")
    flush_kept(opened, stage)
    for name, data in s3.objects("results").items():
        for raw in data.decode().splitlines():
            assert json.loads(raw)["id"], (name, raw)  # whole lines only: no torn fragment
    view = tmp_path / "view"
    pull(opened, view)
    found = [json.loads(line)["id"] for line in (view / RESULTS).read_text().splitlines()]
    assert [task for task in found if task in "abc"] == list("abc"), found


def mirrored(s3: S3, root: Path, tasks: str) -> tuple[Store, Mirror]:
    """A run's mirror into the test's store, after it saved `tasks` (one push, so one segment, each)."""
    store = open_store(s3.url)
    mirror = Mirror(store, root, "20260101T000000Z-aaaaaa")
    for task_id in tasks:
        append_task(root, task_id)
        mirror._push_journals()
    return store, mirror


def test_a_store_that_refuses_to_remove_ends_the_merging_and_loses_nothing(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store, mirror = mirrored(s3, tmp_path, "ab")

    def refused(names: list[str]) -> None:
        if names:
            raise OutputError(f"cannot remove {s3.url}/{names[0]}: PermissionError: AccessDenied")

    monkeypatch.setattr(store, "remove", refused)
    mirror.merge(final=True)
    assert not mirror.merging and "no longer merged" in caplog.text
    append_task(tmp_path, "c")
    mirror._push_journals()
    mirror.merge(final=True)  # no more merged objects beside segments that cannot go
    assert len(s3.objects("usage")) == 4
    view = tmp_path / "view"
    pull(store, view)
    assert [json.loads(line)["id"] for line in (view / USAGE).read_text().splitlines()] == ["a", "b", "c"]


def test_a_view_read_while_a_merge_removes_its_segments_is_assembled_again(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, mirror = mirrored(s3, tmp_path, "ab")
    listed = store.names
    merges = iter([lambda: mirror.merge(final=True)])

    def names_then_merge(folder: str) -> list[str]:  # the run's last merge, just after a reader listed
        found = listed(folder)
        if folder == "results":
            next(merges, lambda: None)()
        return found

    monkeypatch.setattr(store, "names", names_then_merge)
    view = tmp_path / "view"
    view.mkdir(mode=0o700)  # a staging folder from mkdtemp: it keeps its mode when assembled again
    pull(store, view)
    assert view.stat().st_mode & 0o777 == 0o700
    assert [json.loads(line)["id"] for line in (view / RESULTS).read_text().splitlines()] == ["a", "b"]
    assert len(s3.objects("results")) == 1


def test_a_merge_keeps_the_lines_as_the_store_holds_them_where_a_file_was_renamed(
    s3: S3, tmp_path: Path
) -> None:
    store = open_store(s3.url)
    s3.fs.pipe_file(f"{s3.bucket}/out/images/a.png", b"a dead worker's bytes")
    mirror = Mirror(store, tmp_path, "20260101T000000Z-aaaaaa")
    (tmp_path / "images").mkdir()
    for task_id in "ab":
        (tmp_path / "images" / f"{task_id}.png").write_bytes(b"this run's bytes")
        with (tmp_path / RESULTS).open("a") as results:
            results.write(
                json.dumps({"id": task_id, "status": "succeeded", "files": [f"images/{task_id}.png"]}) + "\n"
            )
        mirror._push_journals()
    stored = b"".join(data for _, data in sorted(s3.objects("results").items()))
    assert b"images/a.20260101T000000Z-aaaaaa.png" in stored  # not the staging file's bytes
    mirror.merge(final=True)
    assert list(s3.objects("results").values()) == [stored]


def test_a_stores_error_quotes_no_credential() -> None:
    """An Azure error can quote a SAS URL or a connection string: its signature and key are withheld."""
    failure = Exception(
        "GET https://acct.blob.core.windows.net/c/out/x?sv=2024-08-04&sig=SIGNED%2Bsecret&se=2026 failed; "
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=KEYsecret==;EndpointSuffix=core.windows.net"
    )
    message = str(Store("az://c/out", None, "c/out")._error("read", "x", failure))
    assert "secret" not in message
    assert "sig=(withheld)" in message and "AccountKey=(withheld)" in message and "az://c/out/x" in message


def test_a_dry_run_or_a_refused_run_of_a_store_leaves_no_staging_folder_and_says_none_is_kept(
    write: Callable[..., Path],
    sim: RunningSimulator,
    s3: S3,
    cli: Callable[..., Outcome],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run on a store works in a temporary folder, kept (with a warning) when it may hold paid answers
    the store lacks. A dry run, and a run refused before it sent anything, left theirs behind each time,
    with that warning: false, and a folder more in TMPDIR at every cron start. One the store failed
    mid-way is still kept."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # mkdtemp reads TMPDIR (the test's folder) again
    manifest = write("tasks:\n  - {kind: generate, id: t0, prompt: a fox}\n")
    env = {**env_for(sim), **s3.env}

    def staged() -> list[Path]:
        return list(tmp_path.glob("maas-batch-stage-*"))

    dry = cli("run", manifest, "--out", s3.url, "--dry-run", env=env)
    assert dry.code == 0 and "dry run: nothing was sent" in dry.out, dry.err
    assert "is kept" not in dry.err and not staged()
    # a store a newer version started: refused (74) before anything was sent
    s3.fs.pipe_file(f"{s3.bucket}/out/.format", b'{"ids": 99}\n')
    refused = cli("run", manifest, "--out", s3.url, env=env)
    assert refused.code == 74 and "does not know: a newer version started it" in refused.err
    assert "is kept" not in refused.err and not staged()
    assert sim.state.requests_total == 0

    # the store takes the run's attempt log, then refuses its result line: the paid answer is only in
    # the staging folder, which stays
    s3.fs.rm(f"{s3.bucket}/out/.format")
    create = Store.create

    def refusing_results(store: Store, name: str, data: bytes) -> bool:
        if name.startswith("results/"):
            raise OutputError(f"cannot write {store.url}/{name}: AccessDenied")
        return create(store, name, data)

    monkeypatch.setattr(Store, "create", refusing_results)
    failed = cli("run", manifest, "--out", s3.url, env=env)
    assert failed.code == 74 and sim.state.requests_total == 1, failed.err
    [kept] = staged()
    assert f"the staging folder {kept} of {s3.url} is kept" in failed.err
    assert '"id": "t0"' in (kept / RESULTS).read_text()


def test_a_dry_run_of_a_store_names_the_store_not_its_staging_folder(
    write: Callable[..., Path], sim: RunningSimulator, s3: S3, cli: Callable[..., Outcome]
) -> None:
    """It said "left to do in /tmp/maas-batch-stage-...: 1 of 2 tasks", a folder gone by then."""
    env = {**env_for(sim), **s3.env}
    assert (
        cli("run", write("tasks:\n  - {kind: generate, id: t0, prompt: a}\n"), "--out", s3.url, env=env).code
        == 0
    )
    grown = write(
        "tasks:\n  - {kind: generate, id: t0, prompt: a}\n  - {kind: generate, id: t1, prompt: b}\n"
    )

    dry = cli("run", grown, "--out", s3.url, "--dry-run", env=env)

    assert dry.code == 0, dry.err
    assert f"left to do in {s3.url}: 1 of 2 tasks" in dry.out and "maas-batch-stage" not in dry.out


@pytest.mark.parametrize("prefix", ["night[1]", "night*", "night?"])
def test_a_run_under_a_prefix_with_glob_characters_removes_the_segments_it_merged(
    prefix: str, write: Callable[..., Path], sim: RunningSimulator, s3: S3, cli: Callable[..., Outcome]
) -> None:
    """fsspec's rm reads [, * and ? as a pattern: under s3://bucket/night[1] a run's merged segments were
    never removed (night[1] matches night1), and every later start read them all to skip them."""
    url = f"s3://{s3.bucket}/{prefix}"
    manifest = write(
        "tasks:\n" + "".join(f"  - {{kind: generate, id: t{i}, prompt: p {i}}}\n" for i in range(3))
    )

    done = cli("run", manifest, "--out", url, "--no-progress", env={**env_for(sim), **s3.env})

    assert done.code == 0, done.err
    s3.fs.invalidate_cache()
    logs = [name.rpartition("/")[2] for name in s3.fs.find(f"{s3.bucket}/{prefix}/runs")]
    # the attempt log went up in two segments at least (before the requests left, at the end), merged
    # at the run's end into one, which alone is left
    [merged] = logs
    assert re.fullmatch(r"\d{12}-\d{12}\.jsonl", merged), logs
    status = cli("status", url, "--json", env=s3.env)
    assert status.code == 0 and json.loads(status.out)["succeeded"] == 3, status.err


def test_a_merge_under_a_prefix_with_a_star_leaves_the_objects_of_other_prefixes(
    s3: S3, tmp_path: Path
) -> None:
    """Under s3://bucket/night*, fsspec's rm of a merged segment took the object of that name under every
    prefix night* matches: another batch's lines."""
    neighbour = open_store(f"s3://{s3.bucket}/night-2")
    mirror = Mirror(open_store(f"s3://{s3.bucket}/night*"), tmp_path, "20260101T000000Z-aaaaaa")
    for task_id in "ab":
        append_task(tmp_path, task_id)
        mirror._push_journals()
    segments = {name: data for name, data in mirror.store.read_all("usage")}
    for name, data in segments.items():  # the same names under another prefix (another batch's lines)
        assert neighbour.create(f"usage/{name}", data)

    mirror.merge(final=True)

    assert neighbour.names("usage") == sorted(segments)
    assert mirror.store.names("usage") == ["20260101T000000Z-aaaaaa-000000000000-000000000055.jsonl"]


def test_this_machines_lock_on_a_store_names_it_by_bucket_prefix_and_endpoint_and_never_by_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`held_here`: one run at a time on a store from this machine. s3:// and s3a:// name one store,
    and so do `a//b/` and `a/b`; another prefix, or the same bucket on another S3 server, is another
    store. A connection string's account key is no part of the name, and no lock that cannot be made
    stops a run: it is warned of."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    held = Store("s3://bucket/tonight", None, "bucket/tonight")
    with held_here(held):
        same = Store("s3a://bucket//tonight/", None, "bucket//tonight/")
        with (
            pytest.raises(DirLockedError, match=r"another run on this machine is using s3a://"),
            held_here(same),
        ):
            pass
        with held_here(Store("s3://bucket/other", None, "bucket/other")):
            pass
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9001")
        with held_here(Store("s3://bucket/tonight", None, "bucket/tonight")):
            pass
    with held_here(held):  # released with its run
        pass

    key = secrets.token_hex(16)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"AccountName=acct;AccountKey={key};BlobEndpoint=x")
    identity = Store("az://box/out", None, "box/out").identity()
    assert "acct" in identity and key not in identity
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=acct;AccountKey=other;BlobEndpoint=x")
    assert Store("az://box/out", None, "box/out").identity() == identity  # the account's, whatever key

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # no folder can be made under it
    with caplog.at_level("WARNING", "batch.output.remote"), held_here(held):
        pass
    assert "cannot lock s3://bucket/tonight on this machine" in caplog.text


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An endpoint that takes connections and requests, and never answers: a store stalled behind a
    gateway or a load balancer."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    done = threading.Event()

    def take() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    taker = threading.Thread(target=take, daemon=True)
    taker.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        listener.close()
        for conn in held:
            conn.close()


@pytest.mark.timeout(60)
def test_a_store_that_never_answers_is_an_output_error_in_bounded_time(black_hole: str) -> None:
    """s3fs sends a PUT with `Expect: 100-continue` and waited for the 100 with no timeout at all: a store
    that took the request and never answered held the run, sending nothing, all night (over 15 minutes
    here, then stopped by hand). Every call to the store is cut off after Store.timeout: exit 74."""
    s3fs = pytest.importorskip("s3fs")
    fs = s3fs.S3FileSystem(endpoint_url=black_hole, key="testing", secret="testing", skip_instance_cache=True)
    timeout = 1  # seconds: the store's default is longer; any will do against a store that never answers
    store = Store("s3://stalled/out", fs, "stalled/out", timeout=timeout)
    for call in (lambda: store.create("results/a.jsonl", b"{}\n"), lambda: store.read("results/a.jsonl")):
        started = time.monotonic()
        with pytest.raises(OutputError, match=rf"the store did not answer within {timeout} s"):
            call()
        assert time.monotonic() - started < 5 * timeout  # one cut, not one a retry


def test_emptying_a_kept_staging_folder_keeps_the_answers_its_start_finishes_tasks_from(
    tmp_path: Path,
) -> None:
    """A kept staging folder is emptied before the store is assembled in it. Its answers/ held, for a
    kill's window, paid answers of image links and big inline ones whose tasks have no result line: they
    went, and the next run bought them again. They stay, with the carried answers; an answer a result line
    names (in the store with it), the list to finish (listed again from the killed run's log), a torn
    write and everything else go. So does a paid failure's raw body (.body, .sse) a line names; one no
    line names stays, for the carried failure to end its task with."""
    from batch.output.remote import empty

    answers = tmp_path / "answers"
    answers.mkdir()
    for name in ("t1.abc.1.json", "t2.abc.1.json", "t3.abc.1.json", ".carried.jsonl", ".to-finish.jsonl"):
        (answers / name).write_text("{}\n")
    (answers / ".t4.abc.1.json.1234.tmp").write_text("{")
    (answers / "t5.abc.1.sse").write_text("data: {}\n")  # a paid failure's raw body, its line carried
    (answers / "t6.abc.1.body").write_text("{}")  # one its task's line names
    (tmp_path / RESULTS).write_text(
        json.dumps({"id": "t2", "status": "failed", "answer_file": "answers/t2.abc.1.json"})
        + "\n"
        + json.dumps({"id": "t0", "status": "succeeded", "files": ["images/t0.png"]})
        + "\n"
        + json.dumps({"id": "t6", "status": "failed", "answer_file": "answers/t6.abc.1.body"})
        + "\n"
    )
    (tmp_path / "results.retried.jsonl").write_text(
        json.dumps({"id": "t3", "status": "failed", "answer_file": "answers/t3.abc.1.json"}) + "\n"
    )
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "t1~1.png").write_bytes(b"\x89PNG")
    (tmp_path / USAGE).write_text("{}\n")
    empty(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["answers"]
    assert sorted(path.name for path in answers.iterdir()) == [
        ".carried.jsonl",
        "t1.abc.1.json",
        "t5.abc.1.sse",
    ]


def test_a_staging_folder_whose_run_stopped_before_its_mirror_started_is_taken_for_its_store_only(
    s3: S3, tmp_path: Path
) -> None:
    """A run killed at its start, once it assembled its --stage folder and found a killed run's answers
    kept there, but before its mirror started (it sent nothing): the folder has no .mirroring, and the
    next --stage refused it (64) as no kept folder, leaving those answers to be bought again. It is taken
    as one with nothing to upload, for the store it was assembled from only."""
    from batch.errors import UsageError
    from batch.output.remote import left_by_a_run

    opened, stage = open_store(s3.url), tmp_path / "stage"
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    append_task(earlier, "x")
    Mirror(opened, earlier, "20250101T000000Z-eeeeee")._push_journals()
    pull(opened, stage)
    with (stage / USAGE).open("a") as usage:  # booked by the killed start: written again by the next
        usage.write(json.dumps({"id": "y", "request_id": "y/r.1", "total_tokens": 10}) + "\n")
    assert left_by_a_run(stage)
    objects = s3.objects()
    flush_kept(opened, stage)
    assert s3.objects() == objects  # nothing of its own to upload
    with pytest.raises(UsageError, match=f"the staging folder of {re.escape(s3.url)}, not of "):
        flush_kept(open_store(f"{s3.url}-other"), stage)
    assert not left_by_a_run(tmp_path / "earlier")
