"""Which tasks of a plan have a result line already, by their position in the plan's order: one bit a
task, where an id set of them took 8 bytes. A resume of a million finished tasks holds 125 KB for them.

The result lines' ids and the order's digests are joined by digest: each side is sorted RUN digests at a
time into runs of an unlinked temporary file, and the runs are merged a block at a time, as the order's
search for repeated ids does (order.py). An order held in memory (under WINDOW tasks, or where no
temporary file can be written) is joined in memory, through an id set of the lines, as before.
"""

from __future__ import annotations

import heapq
import os
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator

from batch.running import order as order_module
from batch.running.idset import IdSet, digest
from batch.running.order import Order

Lines = Callable[[], Iterable[tuple[str, bool]]]  # (id, failed) of each result line, from the start


class Finished:
    """The positions of an order whose tasks are finished (`position in finished`), how many (`count`),
    and of them how many had a failed line (`failed`)."""

    __slots__ = ("__weakref__", "_bits", "count", "failed")

    def __init__(self, size: int = 0) -> None:
        self._bits = bytearray((size + 7) // 8)
        self.count = 0
        self.failed = 0

    def mark(self, position: int, failed: bool) -> None:
        index, bit = position >> 3, 1 << (position & 7)
        if not self._bits[index] & bit:
            self._bits[index] |= bit
            self.count += 1
            self.failed += failed

    def first_missing(self) -> int:
        """The first position not marked: the size, if all are."""
        rest = self._bits.lstrip(b"\xff")
        if not rest:
            return len(self._bits) * 8
        index = len(self._bits) - len(rest)
        byte = rest[0]
        return index * 8 + ((~byte) & (byte + 1)).bit_length() - 1

    def __contains__(self, position: object) -> bool:
        if not isinstance(position, int) or position < 0 or position >> 3 >= len(self._bits):
            return False
        return bool(self._bits[position >> 3] >> (position & 7) & 1)

    def __repr__(self) -> str:
        return f"<Finished: {self.count:,} of {len(self._bits) * 8:,} positions, {self.failed:,} failed>"


def find_finished(order: Order, lines: Lines) -> Finished:
    """The positions of `order` whose digest is that of an id of `lines` (an id may come more than once,
    or not be in the order); failed: those that came with a failed line. `lines` is called once, or
    twice where the temporary file fails part-way (the join then starts again in memory)."""
    if order.on_disk:
        try:
            return _joined_on_disk(order, lines)
        except OSError as exc:
            order_module.warn_once(f"finished tasks are looked for in memory (no temporary file: {exc})")
    return _joined_in_memory(order, lines)


def _joined_in_memory(order: Order, lines: Lines) -> Finished:
    done, failed = IdSet(), IdSet()
    for task_id, task_failed in lines():
        done.add(task_id)
        if task_failed:
            failed.add(task_id)
    done.freeze()
    failed.freeze()
    found = Finished(len(order))
    if len(done):
        for position, key in enumerate(order):
            if done.contains_digest(key):
                found.mark(position, failed.contains_digest(key))
    return found


def _joined_on_disk(order: Order, lines: Lines) -> Finished:
    """The join through sorted runs of a temporary file: the lines' digests (and the failed ones'), and
    the order's (digest, position) pairs, merged in digest order. OSError where the file fails."""
    found = Finished(len(order))
    with tempfile.TemporaryFile(prefix="maas-batch-found-", buffering=0) as handle:
        runs = _Runs(handle.fileno())
        done, failed = _Sorter(runs), _Sorter(runs)
        for task_id, task_failed in lines():
            key = digest(task_id)
            done.add(key)
            if task_failed:
                failed.add(key)
        done.flush()
        failed.flush()
        if not done.runs:
            return found
        pairs = []  # each window of the order as a run of (digest, position), sorted by digest
        for start in range(0, len(order), order_module.RUN):
            window = order[start : start + order_module.RUN]
            sorted_pairs: array[int] = array("Q")
            for index in sorted(range(len(window)), key=window.__getitem__):
                sorted_pairs.append(window[index])
                sorted_pairs.append(start + index)
            pairs.append(runs.write(sorted_pairs))
        done_keys = heapq.merge(*(runs.read(run) for run in done.runs))
        failed_keys = heapq.merge(*(runs.read(run) for run in failed.runs))
        next_done = next(done_keys, None)
        next_failed = next(failed_keys, None)
        for key, position in heapq.merge(*(runs.read_pairs(run) for run in pairs)):
            while next_done is not None and next_done < key:
                next_done = next(done_keys, None)
            if next_done != key:
                continue
            while next_failed is not None and next_failed < key:
                next_failed = next(failed_keys, None)
            found.mark(position, next_failed == key)
    return found


class _Runs:
    """Runs of 8-byte values written one after another into a temporary file, read back a block at a
    time: a run is (its first value's index, its count of values)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._written = 0

    def write(self, values: array[int]) -> tuple[int, int]:
        order_module.write_all(self._fd, values.tobytes(), self._written * order_module.ITEM)
        run = (self._written, len(values))
        self._written += len(values)
        return run

    def read(self, run: tuple[int, int]) -> Iterator[int]:
        first, count = run
        for start in range(first, first + count, order_module.RUN_BLOCK):
            yield from self._block(start, min(order_module.RUN_BLOCK, first + count - start))

    def read_pairs(self, run: tuple[int, int]) -> Iterator[tuple[int, int]]:
        first, count = run
        block = order_module.RUN_BLOCK * 2  # an even number of values: whole pairs
        for start in range(first, first + count, block):
            values = self._block(start, min(block, first + count - start))
            yield from zip(values[0::2], values[1::2], strict=True)

    def _block(self, start: int, count: int) -> array[int]:
        want = count * order_module.ITEM
        data = os.pread(self._fd, want, start * order_module.ITEM)
        if len(data) != want:
            raise OSError("a sorted run of the finished tasks ended early")
        values: array[int] = array("Q")
        values.frombytes(data)
        return values


class _Sorter:
    """Values added one at a time, written RUN at a time as sorted runs."""

    def __init__(self, runs: _Runs) -> None:
        self._runs = runs
        self._values: array[int] = array("Q")
        self.runs: list[tuple[int, int]] = []

    def add(self, value: int) -> None:
        self._values.append(value)
        if len(self._values) >= order_module.RUN:
            self.flush()

    def flush(self) -> None:
        if self._values:
            self.runs.append(self._runs.write(array("Q", sorted(self._values))))
            self._values = array("Q")
