"""batch.running.finishedset: which positions of a plan's order have a result line, one bit a task. The oracle
is Python sets over the same ids."""

from __future__ import annotations

import logging
import random
import tempfile
import tracemalloc

import pytest

from batch.running import finishedset
from batch.running import order as order_module
from batch.running.finishedset import Finished, find_finished
from batch.running.idset import digest
from batch.running.order import Order
from tests.conftest import measured_apart


@pytest.fixture
def small_window(monkeypatch: pytest.MonkeyPatch) -> int:
    """Windows of 5 digests, partitions of the join of 4 tasks, buffers of 2 values: a few dozen tasks
    cross many of each."""
    monkeypatch.setattr(order_module, "WINDOW", 5)
    monkeypatch.setattr(finishedset, "PART", 4)
    monkeypatch.setattr(finishedset, "BUFFERS", 8)
    monkeypatch.setattr(finishedset, "LEAST", 1)  # a buffer of 1 value: every line and pair goes to the file
    return 5


def lines_for(ids: list[str], rng: random.Random) -> list[tuple[str, bool]]:
    """Result lines (id, failed): some of the plan's ids, some twice (a failed line then a succeeded one,
    or the other way), and ids the plan does not have (orphaned lines)."""
    lines = [(task_id, rng.random() < 0.3) for task_id in ids if rng.random() < 0.6]
    lines += [(task_id, rng.random() < 0.5) for task_id in rng.sample(ids, len(ids) // 5)]
    lines += [(f"gone-{i}", rng.random() < 0.5) for i in range(len(ids) // 4 + 1)]
    rng.shuffle(lines)
    return lines


def oracle(ids: list[str], lines: list[tuple[str, bool]]) -> tuple[set[int], set[int]]:
    done = {task_id for task_id, _ in lines}
    failed = {task_id for task_id, task_failed in lines if task_failed}
    marked_positions = {position for position, task_id in enumerate(ids) if task_id in done}
    return marked_positions, {position for position in marked_positions if ids[position] in failed}


@pytest.mark.parametrize("count", [0, 1, 4, 5, 6, 17, 23, 40, 97])
@pytest.mark.parametrize("join", ["partitioned", "few lines", "in memory"])
def test_the_finished_positions_are_those_whose_ids_have_a_line(
    small_window: int, count: int, join: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An order on disk is joined with its lines through partitions of a temporary file, or, for no more
    than FEW lines, by reading it past them; an order in memory through an id set of it."""
    rng = random.Random(count)
    ids = [f"t{i}-{rng.getrandbits(20)}" for i in range(count)]
    on_disk = join != "in memory"
    if not on_disk:
        monkeypatch.setattr(order_module, "WINDOW", 1 << 15)
    if join == "partitioned":
        monkeypatch.setattr(finishedset, "FEW", 0)
    order = Order(digest(task_id) for task_id in ids)
    assert bool(order.on_disk) == (on_disk and count >= small_window)
    lines = lines_for(ids, rng)
    calls = []

    def read() -> list[tuple[str, bool]]:
        calls.append(1)
        return lines

    found = find_finished(order, read)
    expected, expected_failed = oracle(ids, lines)
    assert {position for position in range(count) if position in found} == expected
    assert (found.count, found.failed) == (len(expected), len(expected_failed))
    assert found.orphaned == sum(task_id not in set(ids) for task_id, _ in lines)  # the lines of no task
    assert -1 not in found and count not in found and count + 8 not in found and "0" not in found
    # the lines are read once; twice where there are more than FEW (the partitioned join)
    assert len(calls) == (2 if join == "partitioned" and order.on_disk and lines else 1)


def test_no_lines_finish_nothing(small_window: int) -> None:
    order = Order(digest(f"t{i}") for i in range(12))
    found = find_finished(order, lambda: [])
    assert (found.count, found.failed) == (0, 0) and not any(p in found for p in range(12))
    assert Finished().count == 0 and 0 not in Finished()


@pytest.mark.parametrize("fails_after", [0, 2], ids=["no file at all", "a file that fills up"])
def test_without_room_for_the_runs_the_finished_tasks_are_found_in_memory(
    small_window: int,
    fails_after: int,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The order went to its file, then the disk filled: the finished tasks are still found, once."""
    monkeypatch.setattr(finishedset, "FEW", 0)  # more lines than are joined without the file
    rng = random.Random(7)
    ids = [f"t{i}" for i in range(31)]
    order = Order(digest(task_id) for task_id in ids)
    assert order.on_disk
    lines = lines_for(ids, rng)
    made = tempfile.TemporaryFile
    writes = 0

    def filling(*args: object, **kwargs: object) -> object:
        return made(*args, **kwargs) if fails_after else refused()  # type: ignore[call-overload]

    def refused() -> object:
        raise OSError(28, "No space left on device")

    pwrite = order_module.os.pwrite

    def full(fd: int, data: bytes, offset: int) -> int:
        nonlocal writes
        writes += 1
        if writes > fails_after:
            raise OSError(28, "No space left on device")
        return pwrite(fd, data, offset)

    monkeypatch.setattr(tempfile, "TemporaryFile", filling)
    monkeypatch.setattr(order_module.os, "pwrite", full)
    monkeypatch.setattr(order_module, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="batch.running.order"):
        found = find_finished(order, lambda: lines)
    expected, expected_failed = oracle(ids, lines)
    assert {position for position in range(31) if position in found} == expected
    assert found.failed == len(expected_failed)
    assert caplog.text.count("finished tasks are looked for in memory") == 1


def peak_of_finding(count: int) -> int:
    """The peak of find_finished() over `count` tasks, two thirds of them with a line."""
    ids = [f"t{i}" for i in range(count)]
    order = Order(digest(task_id) for task_id in ids)
    lines = [(task_id, position % 7 == 0) for position, task_id in enumerate(ids) if position % 3]
    tracemalloc.start()
    try:
        found = find_finished(order, lambda: iter(lines))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found.count == len(lines) and found.failed == sum(failed for _, failed in lines)
    return peak


def growth_of_finding() -> int:
    """How much more the peak of finding the finished is for 100,000 tasks than for 25,000, at sizes an
    eighth of the defaults' (measured apart: once 268,813 bytes in a pytest worker, 122 KB alone)."""
    order_module.WINDOW = 4096
    finishedset.PART //= 8
    finishedset.BUFFERS //= 8
    finishedset.FEW //= 8  # 25,000 tasks' 16,667 lines: partitioned too
    return peak_of_finding(100_000) - peak_of_finding(25_000)


def test_finding_the_finished_holds_a_bit_a_task_not_an_id_set() -> None:
    """An id set of the 50,000 more finished tasks of 75,000 more would add about 470 KB to the peak. The
    join holds a bit a task, its buffers (BUFFERS values in all), a map of one partition's share of the
    order, and 8 bytes for each buffer that went to the file. Sizes an eighth of the defaults': the same
    join over fewer tasks (it grows by about 0.6 bytes a task at the default sizes; an id set by 6)."""
    growth = measured_apart(growth_of_finding)
    assert growth < 200_000, f"{growth:,} bytes more for 75,000 more tasks"


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 16, 23, 64])
def test_the_first_missing_position_is_the_first_not_marked(size: int) -> None:
    rng = random.Random(size)
    for share in (0.0, 0.5, 0.9, 1.0):
        found = Finished(size)
        marked = {p for p in range(size) if rng.random() < share}
        prefix = rng.randrange(size + 1)  # a finished stretch first, as a resume's usually is
        for position in sorted(marked | set(range(prefix))):
            found.mark(position, False)
        expected = next((p for p in range(size) if p not in found), size)
        assert found.first_missing() == expected
