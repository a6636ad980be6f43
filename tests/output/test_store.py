"""The output directory: lock, journals, torn lines, atomic files, decoded images."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from batch.jobs.generate import KIND as GENERATE
from PIL import Image

from batch.errors import BrokenAnswerError, DirLockedError, OutputError
from batch.kind import EncodedImage
from batch.output.files import cut_torn_tail, write_atomic, write_atomic_chunks
from batch.output.store import Journal, OutputDir, OutputFile, encode_line, finished_results
from batch.running.imaging import decode_images


def png_bytes(size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buffer, "PNG")
    return buffer.getvalue()


def test_torn_last_line_is_cut_and_whole_lines_kept(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "sta')
    assert cut_torn_tail(path) == len(b'{"id": "c", "sta')
    assert path.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'
    assert cut_torn_tail(path) == 0
    only_torn = tmp_path / "torn.jsonl"
    only_torn.write_bytes(b"x" * 200_000)  # no newline at all, longer than one read block
    cut_torn_tail(only_torn)
    assert only_torn.read_bytes() == b""


@pytest.mark.anyio
async def test_journal_appends_whole_lines_after_repairing(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b", "to')
    journal = Journal(path)
    journal.open()
    try:
        journal.write({"id": "c", "text": "ünïcode"})
        journal.write({"id": "d"})
        assert journal.dirty
        await journal.sync()
        assert not journal.dirty
    finally:
        journal.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "c", "d"]
    assert "ünïcode" in lines[1]


@pytest.mark.anyio
@pytest.mark.parametrize("interval", [0.0, 0.05])
async def test_output_dir_syncs_each_line_or_on_an_interval(tmp_path: Path, interval: float) -> None:
    import anyio

    store = OutputDir(tmp_path / "out", sync_interval=interval)
    store.open()
    synced = anyio.Event()
    sync = store.sync

    async def spy() -> None:  # the syncer calls store.sync(); tell the test when nothing is left unsynced
        await sync()
        if not store.usage.dirty:
            synced.set()

    store.sync = spy  # type: ignore[method-assign]
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(store.run_syncer)
            await store.append(store.usage, {"task_id": "a"})
            if interval == 0:
                assert not store.usage.dirty  # fsync'd before append returned
            else:
                assert store.usage.dirty  # in the kernel now, on disk within the interval
                with anyio.fail_after(5):
                    await synced.wait()
            group.cancel_scope.cancel()
    finally:
        store.close()
    assert (tmp_path / "out" / "usage.jsonl").read_text() == '{"task_id": "a"}\n'


def test_finished_results_reads_our_lines_fast_and_others_by_parsing(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(
        b'{"id": "fox-1", "kind": "generate", "status": "succeeded"}\n'
        b'{"id": "owl-2", "kind": "generate", "status": "failed"}\n'
        b'{"status": "failed", "id": "hand-written"}\n'
        b'{"id": "row-3", "kind": "chat", "status": "succeeded", "meta": {"status": "failed"}}\n'
        b'{"id": "row-4", "kind": "chat", "status": "failed", "meta": {"status": "succeeded"}}\n'
        b"garbage\n"
        b'{"id": "torn'
    )
    assert list(finished_results(path)) == [
        ("fox-1", False),
        ("owl-2", True),
        ("hand-written", True),
        ("row-3", False),  # the line's own status, not its meta's
        ("row-4", True),
    ]


def test_write_atomic_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "a.png"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_write_atomic_failure_cleans_up(tmp_path: Path) -> None:
    # The temporary file is written whole, then the rename fails (the target is a folder that is not
    # empty): the temporary file must go, and the target stay as it was.
    target = tmp_path / "a.png"
    target.mkdir()
    (target / "keep").write_bytes(b"k")
    with pytest.raises(OutputError, match="cannot write"):
        write_atomic(target, b"x" * 100_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    assert [p.name for p in target.iterdir()] == ["keep"]
    with pytest.raises(OutputError, match="cannot write"):
        write_atomic(tmp_path / "missing-folder" / "a.png", b"x")


def test_output_dir_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    first = OutputDir(tmp_path / "out")
    first.open()
    try:
        second = OutputDir(tmp_path / "out")
        with pytest.raises(DirLockedError, match="another run is using"):
            second.open()
    finally:
        first.close()
    third = OutputDir(tmp_path / "out")
    third.open()
    third.close()


def test_lock_of_a_killed_process_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = (
        "import sys, os, signal; sys.path.insert(0, sys.argv[2]);"
        "from pathlib import Path; from batch.output.store import OutputDir;"
        "d = OutputDir(Path(sys.argv[1])); d.open(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(out), str(Path(__file__).parents[2])], timeout=30)
    assert done.returncode == -9
    assert (out / ".lock").exists()
    again = OutputDir(out)
    again.open()
    again.close()


def test_open_sweeps_temporary_files_and_refuses_symlinked_images(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / ".a.png.1234.tmp").write_bytes(b"half")
    (out / ".results.jsonl.99.tmp").write_bytes(b"half")
    (out / "images" / "keep.png").write_bytes(b"done")
    store = OutputDir(out)
    store.open()
    store.close()
    assert sorted(p.name for p in (out / "images").iterdir()) == ["keep.png"]
    assert not list(out.glob(".*.tmp"))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(elsewhere, linked / "images")
    with pytest.raises(OutputError, match="symbolic link"):
        OutputDir(linked).open()
    assert list(elsewhere.iterdir()) == []


def test_save_writes_into_images_and_returns_relative_paths(tmp_path: Path) -> None:
    store = OutputDir(tmp_path / "out")
    store.open()
    try:
        paths = store.save([OutputFile("t.png", b"abc"), OutputFile("u~2.png", b"def")])
    finally:
        store.close()
    assert paths == ["images/t.png", "images/u~2.png"]
    assert (tmp_path / "out" / "images" / "u~2.png").read_bytes() == b"def"


def test_decode_images_names_by_real_format_and_count() -> None:
    png = base64.b64encode(png_bytes()).decode()
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "JPEG")
    jpeg = base64.b64encode(buffer.getvalue()).decode()
    assert [f.name for f in decode_images("fox", [EncodedImage(png)], GENERATE)] == ["fox.png"]
    files = decode_images("fox", [EncodedImage(png), EncodedImage(jpeg)], GENERATE)
    assert [f.name for f in files] == ["fox~1.png", "fox~2.jpg"]
    assert files[0].data == png_bytes()
    # of an n: 3 task, the images that came keep their numbers: the first's link was lost, one not sent
    files = decode_images("fox", [EncodedImage(png)], GENERATE, places=[1], count=3)
    assert [f.name for f in files] == ["fox~2.png"]


def test_decode_images_refuses_bad_base64_non_images_and_bombs() -> None:
    with pytest.raises(BrokenAnswerError, match="not valid base64"):
        decode_images("t", [EncodedImage("!!not base64!!")], GENERATE)
    with pytest.raises(BrokenAnswerError, match="not a readable image"):
        decode_images("t", [EncodedImage(base64.b64encode(b"plain text").decode())], GENERATE)
    truncated = png_bytes((64, 64))[:60]
    with pytest.raises(BrokenAnswerError, match="not a readable image"):
        decode_images("t", [EncodedImage(base64.b64encode(truncated).decode())], GENERATE)
    with pytest.raises(BrokenAnswerError, match="decompression bomb"):
        decode_images("t", [EncodedImage(base64.b64encode(bomb_png(30_000, 30_000)).decode())], GENERATE)
    # under Pillow's own limit but far over any size the API makes
    with pytest.raises(BrokenAnswerError, match="claims 10000x10000 pixels"):
        decode_images("t", [EncodedImage(base64.b64encode(bomb_png(10_000, 10_000)).decode())], GENERATE)


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (the pixels are never decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_write_atomic_chunks_leaves_nothing_when_the_pieces_fail(tmp_path: Path) -> None:
    (tmp_path / "page.html").write_text("the old page")

    def pieces() -> Iterator[bytes]:
        yield b"x" * (2 << 20)  # more than one write's worth is already on disk
        raise RuntimeError("the manifest changed")

    with pytest.raises(RuntimeError, match="manifest changed"):
        write_atomic_chunks(tmp_path / "page.html", pieces())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html"]
    assert (tmp_path / "page.html").read_text() == "the old page"


@pytest.mark.parametrize("inside", ["images", "answers", "thumbs/inputs/x", "runs/tonight"])
def test_a_dir_inside_another_dirs_own_folders_is_refused(tmp_path: Path, inside: str) -> None:
    """A run into DIR/images swept DIR's images/ of its temporary files as it started, while DIR's own run
    was between a picture's write and its rename (a review did it: the file was gone, the run exit 0)."""
    from batch.errors import OutputError
    from batch.output.store import OutputDir

    outer = OutputDir(tmp_path / "o1", fsync=False)
    outer.open()  # a run holds it
    pending = tmp_path / "o1" / "images" / ".t7.png.abcd.tmp"
    pending.write_bytes(b"a picture being saved")
    with pytest.raises(
        OutputError, match=r"is inside the output directory .*o1 \(its (images|answers|thumbs|runs)/ folder\)"
    ):
        OutputDir(tmp_path / "o1" / inside, fsync=False).open()
    assert pending.exists() and not (tmp_path / "o1" / inside / ".lock").exists()
    outer.close()


def test_a_dir_with_another_dir_in_its_own_folders_is_refused(tmp_path: Path) -> None:
    """The other way round: DIR/images made a DIR of its own (by an older version), then a run into DIR."""
    from batch.errors import OutputError
    from batch.output.store import OutputDir

    (tmp_path / "o1" / "images").mkdir(parents=True)
    (tmp_path / "o1" / "images" / ".lock").write_text("")
    with pytest.raises(OutputError, match=r"images is an output directory of its own"):
        OutputDir(tmp_path / "o1", fsync=False).open()
    sibling = OutputDir(tmp_path / "o1-next", fsync=False)  # beside it, or in a folder of its own: fine
    sibling.open()
    sibling.close()
    shard = OutputDir(tmp_path / "o1" / "shards" / "0", fsync=False)
    shard.open()
    shard.close()


def test_a_number_that_is_no_json_number_is_written_as_text_not_as_infinity() -> None:
    """A server's usage of 1e999 (or NaN) reached usage.jsonl as `Infinity`, which JSON.parse and
    SQLite's json_extract refuse: the ledger's other readers lost the line."""

    def strict(constant: str) -> None:
        raise ValueError(f"{constant} is no JSON")

    line = encode_line(
        {"usage": {"total_tokens": float("inf"), "x": [float("nan"), -float("inf")]}, "n": 1.5}
    )
    assert json.loads(line, parse_constant=strict) == {
        "usage": {"total_tokens": "inf", "x": ["nan", "-inf"]},
        "n": 1.5,
    }


JOURNAL_VALUES = [
    {
        "id": "t0",
        "text": 'caf\u00e9 \u2028 \U0001f98a "quoted" \\ \n\t\x00\x1f',
        "cost": 6.8e-05,
        "seconds": 0.081,
    },
    {"usage": {"prompt_tokens": 10, "total_tokens": 2**70, "x": -0.0}, "n": [1, 2.5, True, None, [], {}]},
    {
        1: "int key",
        2.5: "float key",
        None: "none key",
        False: "bool key",
        "nested": {"a": {"b": [{"c": 1e300}]}},
    },
    {"path": Path("/tmp/a b.png"), "tuple": ("a", 1), "bytes_like": bytearray(b"x"), "empty": ""},
    {"big": 1e16, "small": 1e-7, "neg": -12345678901234567890, "third": 1 / 3},
]


@pytest.mark.parametrize("record", JOURNAL_VALUES, ids=range(len(JOURNAL_VALUES)))
def test_a_journal_line_is_json_dumps_own_bytes(record: dict[object, object]) -> None:
    """encode_line keeps json's C encoder between lines (JSONEncoder.encode makes one per call): the
    bytes are json.dumps's with the journals' settings, key order, spacing, escapes and floats alike."""
    expected = json.dumps(record, ensure_ascii=False, default=str, allow_nan=False) + "\n"
    assert encode_line(record) == expected.encode("utf-8", "replace")


def test_a_journal_line_with_a_lone_surrogate_or_a_cycle_fails_as_it_did() -> None:
    assert encode_line({"text": "cut \ud83e"}) == b'{"text": "cut ?"}\n'  # never fails the line
    cycle: dict[str, object] = {"id": "a"}
    cycle["self"] = cycle
    with pytest.raises(RecursionError):  # as it did through the cycle check's ValueError, then _finite
        encode_line(cycle)
