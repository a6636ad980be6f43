"""batch.running.order: a manifest's order, held on disk past a window, read as an array("Q") would be."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import tempfile
import threading
import tracemalloc
from array import array
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batch.running import dispatch
from batch.running import order as order_module
from batch.running.idset import digest
from batch.running.order import Order
from batch.simulator import RunningSimulator
from tests.conftest import Outcome, chat_lines, env_for


@pytest.fixture
def small_window(monkeypatch: pytest.MonkeyPatch) -> int:
    """Windows of 5 digests, so that a few dozen cross many of them."""
    monkeypatch.setattr(order_module, "WINDOW", 5)
    monkeypatch.setattr(order_module, "RUN", 4)
    monkeypatch.setattr(order_module, "RUN_BLOCK", 3)
    return 5


@pytest.mark.parametrize("count", [0, 1, 4, 5, 6, 23, 25])
def test_an_order_reads_as_an_array_of_the_same_digests(small_window: int, count: int) -> None:
    """The oracle is array("Q") with the same appends: every index (from either end), slices across
    the file and the memory, iteration, bytes, equality."""
    rng = random.Random(count)
    values = array("Q", (rng.getrandbits(64) for _ in range(count)))
    order = Order()
    for key in values:
        order.append(key)
    assert order._on_disk == count - count % small_window  # the earlier windows are in the file
    assert len(order) == count
    assert list(order) == list(values)
    for index in range(-count, count):
        assert order[index] == values[index]
    for index in (count, -count - 1):
        with pytest.raises(IndexError):
            order[index]
    for start in range(-2, count + 2):
        for stop in range(start, count + 3):
            assert order[start:stop] == values[start:stop], (start, stop)
            assert list(order.section(start, stop)) == list(values[start:stop])
    assert order.tobytes() == values.tobytes()
    assert order.sha256() == Order(values).sha256()
    assert order == values and order == Order(values) and values == order
    if count:
        changed = array("Q", values)
        changed[-1] ^= 1
        assert order != changed and order != Order(changed)
        assert order != values[:-1] and order != Order(values[:-1])


def test_a_million_digests_hold_a_window_in_memory_not_8_mb() -> None:
    # hashed before tracing starts (a million SHA-256s under tracemalloc took 3 s of the test's 5): each
    # digest read from the array is still a new int, allocated while traced, as the generator's were
    values = array("Q", (digest(f"t{i}") for i in range(1_000_000)))
    tracemalloc.start()
    try:
        order = Order()
        for key in values:
            order.append(key)
        _, appending = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert sum(1 for _ in order) == 1_000_000
        assert order[123_456] == digest("t123456") and order[-1] == digest("t999999")
        _, reading = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert appending < 1_000_000, f"appending: {appending / 1e6:.2f} bytes a digest"
    assert reading < 1_000_000, f"reading: {reading / 1e6:.2f} bytes a digest"


def _counted(*groups: array[int]) -> set[int]:
    counts = Counter(key for group in groups for key in group)
    return {key for key, times in counts.items() if times > 1}


@pytest.mark.parametrize("count", [3, 5, 40, 1000])
def test_repeated_digests_are_found_across_windows_as_a_count_finds_them(
    small_window: int, count: int
) -> None:
    rng = random.Random(count)
    values = array("Q", (rng.getrandbits(64) for _ in range(count)))
    values.extend([values[0], values[count // 2], values[-1], 0, 0, 2**64 - 1])  # at the ends, in the head
    values.insert(small_window, values[1])  # across a window's edge
    others = array("Q", [values[2], 2**64 - 1, 7, 7])
    order, problems = Order(values), Order(others)
    assert order.repeated(problems) == _counted(values, others)
    assert order.repeated() == _counted(values)
    assert Order(set(values)).repeated() == set()


def test_repeated_digests_of_orders_in_memory_are_found_there() -> None:
    values = array("Q", [5, 1, 5, 9])
    assert Order(values).repeated(Order(array("Q", [9, 3]))) == {5, 9}


def test_finding_repeats_of_many_digests_holds_no_copy_of_them() -> None:
    order = Order(digest(f"t{i}") for i in range(300_000))  # 2.4 MB
    order.append(digest("t7"))
    tracemalloc.start()
    try:
        found = order.repeated()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found == {digest("t7")}
    assert peak < 1_500_000  # a run sorted as ints (about 0.6 MB), a window read, a block of each run


def test_an_order_stays_in_memory_where_no_temporary_file_can_be_made(
    small_window: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refused(*args: object, **kwargs: object) -> object:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    monkeypatch.setattr(order_module, "_warned", set())
    values = array("Q", range(23))
    with caplog.at_level(logging.WARNING, logger="batch.running.order"):
        order = Order(values)
        again = Order(values)  # said once in a process, not for each order
    assert order._on_disk == 0 and order == values and list(order) == list(values) and again == values
    assert order[7] == 7 and order[3:9] == values[3:9]
    assert [len(block) for block in order.blocks()] == [40, 40, 40, 40, 24]  # a window at a time still
    assert caplog.text.count("stays in memory") == 1 and "No space left" in caplog.text


def test_repeats_are_looked_for_in_memory_where_no_file_for_the_runs_can_be_made(
    small_window: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The order went to its file, then the disk filled: the search for repeats still answers."""
    values = array("Q", [*range(23), 4, 22])
    order = Order(values)
    assert order._on_disk

    def refused(*args: object, **kwargs: object) -> object:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    monkeypatch.setattr(order_module, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="batch.running.order"):
        assert order.repeated(Order(array("Q", [9]))) == {4, 9, 22}
    assert "in memory" in caplog.text


def test_an_order_fills_up_the_file_it_has_then_stays_in_memory(
    small_window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails once a file holds some windows (a full disk): those stay in the file, the
    rest in memory."""
    writes = 0
    write = os.pwrite

    def filling(fd: int, data: bytes, offset: int) -> int:
        nonlocal writes
        writes += 1
        if writes > 2:
            raise OSError(28, "No space left on device")
        return write(fd, data, offset)

    monkeypatch.setattr(order_module.os, "pwrite", filling)
    values = array("Q", range(31))
    order = Order(values)
    assert order._on_disk == 2 * small_window
    assert list(order) == list(values) and order[12] == 12 and order[8:14] == values[8:14]


def test_an_order_from_a_file_is_read_once_whatever_happens_to_the_file(tmp_path: Path) -> None:
    """A resume skips the tasks its plan's order names: the file replaced, truncated or rewritten in
    place during the run must not change that order."""
    values = array("Q", range(100_000))
    path = tmp_path / "plan.ids"
    path.write_bytes(values.tobytes())
    order = Order.from_file(path)
    assert len(order) == 100_000 and order[99_999] == 99_999 and order == values
    with path.open("r+b") as handle:  # the same file rewritten in place, the same size
        handle.write(array("Q", range(7, 100_007)).tobytes())
    assert order[0] == 0 and order[99_999] == 99_999 and order == values
    os.truncate(path, 8)  # then cut short
    assert order[98_000] == 98_000 and order == values
    path.write_bytes(values.tobytes())
    order = Order.from_file(path)
    replacement = tmp_path / "new.ids"
    replacement.write_bytes(array("Q", range(5)).tobytes())
    os.replace(replacement, path)  # as write_atomic replaces it
    assert len(order) == 100_000 and order[50_000] == 50_000 and order == values
    path.write_bytes(b"\0" * 12)
    with pytest.raises(ValueError, match="whole number"):
        Order.from_file(path)
    with pytest.raises(OSError):
        Order.from_file(tmp_path / "missing.ids")


def test_threads_read_one_order_at_once(small_window: int) -> None:
    """os.pread moves no file position: two threads reading far apart each get their own digests."""
    values = array("Q", range(2000))
    order = Order(values)
    wrong: list[int] = []

    def read(step: int) -> None:
        for index in range(0, 2000, step):
            if order[index] != index or order[index : index + 3] != values[index : index + 3]:
                wrong.append(index)

    threads = [threading.Thread(target=read, args=(step,)) for step in (1, 7, 13)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert wrong == []


# where the disk fails: the manifest resumed, and which reads of the order's file fail (fd, size, offset)
FAILING_READS = {
    # a new manifest: its check walk's search for repeated ids reads the order back
    "validation": (chat_lines(range(20)), lambda offset: True),
    # the same manifest, its plan remembered: counting its finished tasks reads the order back
    "counting finished tasks": (chat_lines(range(10)), lambda offset: True),
    # fifteen new tasks, then five done: the walk checks each task it builds against the order, and
    # reads positions 10-14 (one window: offset 80) once it has handed the first ten out (2 at a time);
    # the disk fails once the dispatch has begun (the resume read every window before it, to find the
    # finished tasks)
    "dispatch walk": (chat_lines([*range(10, 25), *range(5)]), lambda offset: dispatching and offset == 80),
}
dispatching = False  # set by the test while the run dispatches


@pytest.mark.parametrize("where", FAILING_READS)
def test_a_resume_whose_order_cannot_be_read_back_ends_with_a_message_and_loses_nothing(
    small_window: int,
    where: str,
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The disk under TMPDIR failing during a resume: reading the order's file back raises EIO. The run
    ends with 74 and a message that says so; DIR keeps every line it had, every answer paid for has its
    lines, and the next run sends only what is left."""
    out = tmp_path / "out"
    ten = write(chat_lines(range(10)), "ten.jsonl")
    assert cli("run", ten, "--out", out, env=env_for(sim)).code == 0
    journals = {name: (out / name).read_bytes() for name in ("results.jsonl", "usage.jsonl")}
    text, fails = FAILING_READS[where]
    manifest = write(text, "again.jsonl")
    monkeypatch.setattr(dispatch, "PRODUCER_BATCH", 2)
    pread = os.pread
    failed = []

    def failing(fd: int, size: int, offset: int) -> bytes:
        if fails(offset):
            failed.append(offset)
            raise OSError(errno.EIO, "Input/output error")
        return pread(fd, size, offset)

    run = dispatch.Runner.run

    async def dispatching_run(self: dispatch.Runner) -> Any:
        global dispatching
        dispatching = True
        try:
            return await run(self)
        finally:
            dispatching = False

    with monkeypatch.context() as disk:
        disk.setattr(os, "pread", failing)
        disk.setattr(dispatch.Runner, "run", dispatching_run)
        again = cli("run", manifest, "--out", out, env=env_for(sim))
    assert failed
    assert again.code == 74, again.err
    assert "cannot read the manifest's order back from its temporary file in" in again.err
    for name, before in journals.items():
        assert (out / name).read_bytes().startswith(before)
    sent = sim.state.billed_requests - 10
    lines = {name: (out / name).read_bytes().count(b"\n") - 10 for name in journals}
    assert lines == {"results.jsonl": sent, "usage.jsonl": sent}
    assert (sent > 0) == (where == "dispatch walk"), again.err
    # the disk mended: the rest, each task once
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    ids = {f"t{i}" for i in range(10)} | {json.loads(line)["id"] for line in text.splitlines()}
    assert sim.state.billed_requests == len(ids)
