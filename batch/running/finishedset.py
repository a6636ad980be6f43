"""Which tasks of a plan have a result line already, by their position in the plan's order: one bit a
task, where an id set of them took 8 bytes. A resume of a million finished tasks holds 125 KB for them.

The result lines' ids and the order's digests are joined by digest in partitions of an unlinked
temporary file (a hash join): a million tasks' in 128 partitions, each joined in memory in turn through
a map of its share of the order. An order held in memory (under order.WINDOW tasks, or where no
temporary file can be written) is joined in memory, through an id set of the lines (8 bytes each).
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from batch.running import order as order_module
from batch.running.idset import IdSet, digest, request_key
from batch.running.order import Order

Lines = Callable[[], Iterable[tuple[str, bool]]]  # (id, failed) of each result line, from the start


class Finished:
    """The positions of an order whose tasks are finished (`position in finished`), how many (`count`),
    and of them how many had a failed line (`failed`); `orphaned`: the result lines whose id is no task
    of the order (a prompt, a setting or the endpoint changed since they ran, or the task was removed)."""

    __slots__ = ("__weakref__", "_bits", "changed", "count", "failed", "orphaned")

    def __init__(self, size: int = 0) -> None:
        self._bits = bytearray((size + 7) // 8)
        self.count = 0
        self.failed = 0
        self.orphaned = 0
        self.changed = 0  # of them, those whose result lines name another request (find_changed)

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
    or not be in the order); failed: those that came with a failed line. `lines` is called once, twice
    where they are more than FEW (then joined through a temporary file), or three times where that file
    fails part-way (the join then starts again in memory)."""
    return _joined(order, lines, digest)


Keyed = Callable[[], Iterable[tuple[Any, bool]]]  # lines as (what key_of makes a digest of, failed)


def _joined(order: Order, lines: Keyed, key_of: Callable[[Any], int]) -> Finished:
    """find_finished, with each line's digest made by `key_of` from what it gives."""
    if order.on_disk:
        few = _joined_few(order, lines, key_of)
        if few is not None:
            return few
        try:
            return _joined_on_disk(order, lines, key_of)
        except OSError as exc:
            order_module.warn_once(f"finished tasks are looked for in memory (no temporary file: {exc})")
    return _joined_in_memory(order, lines, key_of)


Requests = Callable[[], Iterable[tuple[str, str]]]  # (id, request) of each result line that names one


def find_changed(order: Order, requests: Order, lines: Requests) -> int:
    """How many tasks of `order` have result lines that name their request (`lines`), none of them the
    request `requests` gives the task now: a task whose id is its own, run again with another prompt,
    setting or endpoint, finds its old result and is not sent (but with --rerun-changed)."""
    return changed_positions(order, requests, lines).bit_count()


def changed_digests(order: Order, requests: Order, lines: Requests) -> IdSet:
    """The id digests of the tasks find_changed counts (8 bytes each), for --rerun-changed to set their
    lines aside."""
    found = IdSet()
    bits = changed_positions(order, requests, lines)
    raw = bits.to_bytes((bits.bit_length() + 7) // 8, "little")
    for index, byte in enumerate(raw):
        while byte:
            low = byte & -byte
            found.add_digest(order[index * 8 + low.bit_length() - 1])
            byte ^= low
    found.freeze()
    return found


def changed_positions(order: Order, requests: Order, lines: Requests) -> int:
    """find_changed's tasks, as a number whose bit p is set for the task at position p of `order`.

    At most FEW lines are held (a set of each), and the order read past them. More are joined as
    find_finished joins, of the lines (their id's digest, and its request_key with their request) with
    the order and its request keys one after the other: a task is named by a line at its position, and
    has a line of its request now at its position plus the order's size. 0 when `requests` is not the
    order's (a plan that has none)."""
    size = len(order)
    if len(requests) != size or not size:
        return 0
    named: array[int] = array("Q")  # each line's id digest and request, while there are FEW at most
    sent: array[int] = array("Q")
    for task_id, request in lines():
        if len(named) == FEW:
            break
        named.append(digest(task_id))
        sent.append(int(request, 16))
    else:  # a few: the order read past them (a shard's resume, a store's), not joined through a file
        ids, same = set(named), set(map(request_key, named, sent))
        changed = bytearray((size + 7) // 8)
        for start in range(0, size, order_module.WINDOW):
            window = order[start : start + order_module.WINDOW]
            for offset, key in enumerate(window):
                if key in ids and request_key(key, requests[start + offset]) not in same:
                    position = start + offset
                    changed[position >> 3] |= 1 << (position & 7)
        return int.from_bytes(changed, "little")
    both = Order()
    for window in order.windows():
        both.extend(window)
    for start in range(0, size, order_module.WINDOW):
        stop = start + order_module.WINDOW
        both.extend(array("Q", map(request_key, order[start:stop], requests[start:stop])))

    def joined() -> Iterator[tuple[int, bool]]:
        for task_id, request in lines():
            key = digest(task_id)
            yield key, False
            yield request_key(key, int(request, 16)), False

    found = int.from_bytes(_joined(both, joined, int)._bits, "little")
    at_ids, at_requests = found & ((1 << size) - 1), found >> size
    return at_ids & ~at_requests


def _joined_few(order: Order, lines: Keyed, key_of: Callable[[Any], int]) -> Finished | None:
    """The join of at most FEW lines (a shard's, a resume's early on) with an order of any size: the lines'
    digests in memory, the order read past them a window at a time, not written out in partitions. None
    for more lines (the partitioned join then reads them again)."""
    keys: array[int] = array("Q")
    failing: set[int] = set()
    for task_id, task_failed in lines():
        if len(keys) == FEW:
            return None
        key = key_of(task_id)
        keys.append(key)
        if task_failed:
            failing.add(key)
    found = Finished(len(order))
    wanted, matched = set(keys), set()
    position = 0
    for window in order.windows(order_module.WINDOW):
        for key in window:
            if key in wanted:
                found.mark(position, key in failing)
                matched.add(key)
            position += 1
    found.orphaned = sum(1 for key in keys if key not in matched)
    return found


FEW = 1 << 13  # lines joined in memory with an order on disk (their digests in sets: under 1 MB)


def _joined_in_memory(order: Order, lines: Keyed, key_of: Callable[[Any], int]) -> Finished:
    tasks = IdSet()  # the order's digests (8 bytes a task): a line of none of them is orphaned
    for key in order:
        tasks.add_digest(key)
    tasks.freeze()
    done, failed = IdSet(), IdSet()
    found = Finished(len(order))
    for task_id, task_failed in lines():
        key = key_of(task_id)
        if not tasks.contains_digest(key):
            found.orphaned += 1
            continue
        done.add_digest(key)
        if task_failed:
            failed.add_digest(key)
    done.freeze()
    failed.freeze()
    if len(done):
        for position, key in enumerate(order):
            if done.contains_digest(key):
                found.mark(position, failed.contains_digest(key))
    return found


def _joined_on_disk(order: Order, lines: Keyed, key_of: Callable[[Any], int]) -> Finished:
    """The join through partitions of a temporary file: each line's digest (and each failed line's) goes
    to the partition its low bits name, and so does each (digest, position) of the order; then, a
    partition at a time, its lines are looked up in a map of its share of the order (about PART digests,
    however many lines there are). BUFFERS values in all are held before they go to the file.
    OSError where the file fails."""
    found = Finished(len(order))
    parts = 1
    while parts * PART < len(order):
        parts *= 2
    mask = parts - 1
    with tempfile.TemporaryFile(prefix="maas-batch-finished-", buffering=0) as handle:
        fd, end = handle.fileno(), _Offset()  # one file, written end to end by the three
        done, failed, pairs = (_Partitions(fd, end, parts, width) for width in (1, 1, 2))
        seen = False
        for task_id, task_failed in lines():
            key = key_of(task_id)
            done.add(key & mask, key)
            if task_failed:
                failed.add(key & mask, key)
            seen = True
        if not seen:
            return found
        position = 0
        for window in order.windows(order_module.WINDOW):
            for key in window:
                pairs.add_pair(key & mask, key, position)
                position += 1
        mark = found.mark
        for part in range(parts):
            values = iter(pairs.values(part))  # digest, position, digest, position...
            where = dict(zip(values, values, strict=True))  # the part's share of the order
            if not where:
                found.orphaned += sum(len(chunk) for chunk in done.chunks(part))
                continue
            failing = {where[key] for chunk in failed.chunks(part) for key in chunk if key in where}
            for chunk in done.chunks(part):  # however many lines there are, a chunk of them at a time
                for key in chunk:
                    at = where.get(key)
                    if at is not None:
                        mark(at, at in failing)
                    else:
                        found.orphaned += 1
    return found


PART = 1 << 13  # the order's digests in a partition of the join (as a map: about 1 MB)
BUFFERS = 1 << 17  # values held in all before they go to the file (1 MB), shared by the partitions
LEAST = 16  # values a buffer holds however many partitions there are (the chunks' index: 0.5 B a value)


def _buffer(parts: int) -> int:
    """Values each of a partition's lines, failed lines and order pairs (two values each) holds."""
    return max(LEAST, BUFFERS // (4 * parts))


class _Offset:
    """Where the next values go in the join's file (8-byte values from its start)."""

    def __init__(self) -> None:
        self.next = 0


class _Partitions:
    """Values sent to partitions, `width` at a time, a buffer of each partition held in memory and the rest
    in chunks of a buffer's size in the file (their places in an array: 8 bytes a chunk)."""

    def __init__(self, fd: int, end: _Offset, parts: int, width: int) -> None:
        self._fd = fd
        self._end = end
        self._size = _buffer(parts) * width
        self._buffers = [array("Q") for _ in range(parts)]
        self._chunks = [array("Q") for _ in range(parts)]

    def add(self, part: int, value: int) -> None:
        buffer = self._buffers[part]
        buffer.append(value)
        if len(buffer) >= self._size:
            self._spill(part, buffer)

    def add_pair(self, part: int, key: int, position: int) -> None:
        buffer = self._buffers[part]
        buffer.append(key)
        buffer.append(position)
        if len(buffer) >= self._size:
            self._spill(part, buffer)

    def _spill(self, part: int, buffer: array[int]) -> None:
        first = self._end.next
        order_module.write_all(self._fd, buffer.tobytes(), first * order_module.ITEM)
        self._end.next += len(buffer)
        self._chunks[part].append(first)
        self._buffers[part] = array("Q")

    def chunks(self, part: int) -> Iterator[array[int]]:
        """The values sent to `part`, in the order sent, a chunk at a time."""
        want = self._size * order_module.ITEM
        for first in self._chunks[part]:
            data = os.pread(self._fd, want, first * order_module.ITEM)
            if len(data) != want:
                raise OSError("a partition of the finished tasks ended early")
            chunk: array[int] = array("Q")
            chunk.frombytes(data)
            yield chunk
        yield self._buffers[part]

    def values(self, part: int) -> array[int]:
        """Every value sent to `part`, in the order sent."""
        values: array[int] = array("Q")
        for chunk in self.chunks(part):
            values.extend(chunk)
        return values
