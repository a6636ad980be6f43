"""A manifest's order: every task's id digest (idset.digest), 8 bytes each, in manifest order, without
holding them all in memory. The last WINDOW digests are in memory; the ones before, in an unlinked
temporary file (under TMPDIR: where that is a RAM-backed tmpfs, they are in memory after all), read back
a window at a time. A million tasks' order is 8 MB on disk and about 0.5 MB in the run's memory, so a
run's memory does not grow with its manifest. A plan DIR remembered (DIR/.cache/plan.ids) is read once
into an order of its own. Append from one thread, then read from any.

Repeated digests (duplicate ids) are found without the digests in memory either: RUN of them at a time
are sorted into a run of a second temporary file, and the runs are merged a block at a time.

Reads use os.pread, which does not move a file's position: worker threads may read an order at once.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import tempfile
import weakref
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, overload

from batch.errors import OutputError
from batch.output.files import reason
from batch.running.idset import repeated_in

log = logging.getLogger("batch.running.order")
_warned: set[str] = set()  # what was said once in this process


def warn_once(message: str) -> None:
    """A warning the first time it is met: every part of a sharded page would say it again."""
    first = message.partition(" (")[0]
    if first not in _warned:
        _warned.add(first)
        log.warning("%s", message)


WINDOW = 1 << 15  # digests held in memory (256 KB) and read back at a time
RUN = 1 << 14  # digests sorted at a time into a run, to find repeats (as ints: about 0.6 MB)
RUN_BLOCK = 1 << 9  # digests of each sorted run read at a time while merging them (4 KB a run)
ITEM = array("Q").itemsize  # 8


class Order(Sequence[int]):
    """Id digests in manifest order: append while walking, then read (iterate, index, slice). Past
    WINDOW digests, the earlier ones go to a temporary file; where no file can be written, they stay in
    memory, as an array would hold them."""

    def __init__(self, values: Iterable[int] = ()) -> None:
        self._head: array[int] = array("Q")  # the digests after the file's
        self._file: BinaryIO | None = None  # the digests before, from the first
        self._on_disk = 0  # how many the file holds
        self._spill = True  # False once a file could not be written: the rest stays in memory
        self._window: tuple[int, array[int]] = (0, array("Q"))  # the window last read from the file
        self.extend(values)

    @classmethod
    def from_file(cls, path: Path) -> Order:
        """The order a file of 8-byte digests holds (DIR/.cache/plan.ids), read once, a window at a time,
        into an order of its own: nothing done to the file afterwards (replaced, truncated, rewritten
        in place) changes what a run reads from it. OSError if it cannot be read; ValueError if its size
        is not a whole number of digests."""
        order = cls()
        with path.open("rb") as handle:
            while block := handle.read(WINDOW * ITEM):
                if len(block) % ITEM:
                    raise ValueError(f"{path}: not a whole number of 8-byte digests")
                if order._head or len(block) < WINDOW * ITEM or not order._to_file(block):
                    values: array[int] = array("Q")
                    values.frombytes(block)
                    order.extend(values)
        return order

    def _keep(self, handle: BinaryIO) -> None:
        self._file = handle
        weakref.finalize(self, handle.close)  # closed with the order, without a ResourceWarning

    # -- appending ---------------------------------------------------------------------------------

    def append(self, key: int) -> None:
        self._head.append(key)
        if len(self._head) >= WINDOW and self._spill:
            self._spill_head()

    def extend(self, values: Iterable[int]) -> None:
        """Append each of `values` (an array's, a window at a time)."""
        if isinstance(values, array):
            for start in range(0, len(values), WINDOW):
                self._head.extend(values[start : start + WINDOW])
                if len(self._head) >= WINDOW and self._spill:
                    self._spill_head()
        else:
            for key in values:
                self.append(key)

    def section(self, start: int, stop: int) -> Order:
        """The digests at [start, stop) as an order of their own (a shard's part), copied a window at a
        time."""
        part = Order()
        start, stop, _ = slice(start, stop).indices(len(self))
        for first in range(start, stop, WINDOW):
            part.extend(self[first : min(stop, first + WINDOW)])
        return part

    def _spill_head(self) -> None:
        """The digests in memory, to the end of the file."""
        if self._to_file(self._head.tobytes()):
            self._head = array("Q")

    def _to_file(self, data: bytes) -> bool:
        """Digests' bytes at the end of the file (made on the first call); False, and no more tries,
        where it cannot be written (no room in the temporary folder): the rest stays in memory."""
        if not self._spill:
            return False
        try:
            if self._file is None:
                self._keep(tempfile.TemporaryFile(prefix="maas-batch-order-", buffering=0))  # noqa: SIM115
            assert self._file is not None
            write_all(self._file.fileno(), data, self._on_disk * ITEM)
        except OSError as exc:
            warn_once(f"the manifest's order stays in memory (no temporary file: {exc})")
            self._spill = False
            return False
        self._on_disk += len(data) // ITEM
        return True

    # -- reading -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._on_disk + len(self._head)

    @property
    def on_disk(self) -> int:
        """How many of the digests, from the first, are in the temporary file."""
        return self._on_disk

    def _read(self, start: int, count: int) -> array[int]:
        """The digests at [start, start + count) of the file (count cut at its end)."""
        values: array[int] = array("Q")
        values.frombytes(self._read_bytes(start, count))
        return values

    def _read_bytes(self, start: int, count: int) -> bytes:
        """The bytes of the digests at [start, start + count) of the file (count cut at its end).
        OutputError if the file cannot be read back (the disk under TMPDIR failing): a run that meets it
        while dispatching stops as on a full disk (74), its requests in flight finished and recorded."""
        count = min(count, self._on_disk - start)
        if count <= 0:
            return b""
        assert self._file is not None
        want = count * ITEM
        try:
            data = os.pread(self._file.fileno(), want, start * ITEM)
            while len(data) < want:  # a short read: the rest
                more = os.pread(self._file.fileno(), want - len(data), start * ITEM + len(data))
                if not more:
                    raise OSError(f"it ended at digest {(start * ITEM + len(data)) // ITEM}")
                data += more
        except OSError as exc:
            raise OutputError(
                f"cannot read the manifest's order back from its temporary file in {tempfile.gettempdir()} "
                f"(TMPDIR): {reason(exc)}"
            ) from exc
        return data

    def windows(self, size: int = WINDOW) -> Iterator[array[int]]:
        """The digests in order, `size` at a time (the last part may be shorter)."""
        for start in range(0, self._on_disk, size):
            yield self._read(start, size)
        if self._head:
            yield self._head

    def __iter__(self) -> Iterator[int]:
        for window in self.windows():
            yield from window

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> array[int]: ...

    def __getitem__(self, index: int | slice) -> int | array[int]:
        """A digest; or the digests of a slice (step 1), as an array of their own."""
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("an order's slice takes no step")
            values = self._read(start, max(0, min(stop, self._on_disk) - start))
            values.extend(self._head[max(0, start - self._on_disk) : max(0, stop - self._on_disk)])
            return values
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("order index out of range")
        if index >= self._on_disk:
            return self._head[index - self._on_disk]
        first, window = self._window
        if not first <= index < first + len(window):
            first = index - index % WINDOW
            window = self._read(first, WINDOW)
            self._window = (first, window)  # one assignment: a thread reading meanwhile sees either
        return window[index - first]

    def blocks(self) -> Iterator[bytes]:
        """The digests' bytes, as array("Q", self).tobytes() would give them, a window at a time."""
        for start in range(0, self._on_disk, WINDOW):
            yield self._read_bytes(start, WINDOW)
        for start in range(0, len(self._head), WINDOW):  # more than a window where no file was had
            yield self._head[start : start + WINDOW].tobytes()

    def tobytes(self) -> bytes:
        """Every digest's bytes at once (8 bytes a task in memory: for small orders, and tests)."""
        return b"".join(self.blocks())

    def sha256(self) -> str:
        """The sha256 of tobytes(), read a window at a time."""
        digest = hashlib.sha256()
        for block in self.blocks():
            digest.update(block)
        return digest.hexdigest()

    def __eq__(self, other: object) -> bool:
        """The same digests in the same order, as another Order or an array("Q")."""
        if not isinstance(other, Order | array):
            return NotImplemented
        if len(self) != len(other):
            return False
        theirs = other.blocks() if isinstance(other, Order) else _blocks_of(other)
        return _same(self.blocks(), theirs)

    __hash__ = None  # type: ignore[assignment]  # appended to: not a key

    def __repr__(self) -> str:
        where = f", {self._on_disk:,} of them in a file" if self._on_disk else ""
        return f"<Order of {len(self):,} digests{where}>"

    # -- repeats -----------------------------------------------------------------------------------

    def repeated(self, *others: Order) -> set[int]:
        """The digests found more than once in this order and `others`. Orders held in memory are
        searched there (idset.repeated_in); one with a file, a part at a time: each RUN digests sorted
        into a run of a temporary file, then the runs merged, RUN_BLOCK digests of each at a time."""
        orders = (self, *others)
        if not any(order._on_disk for order in orders):
            return repeated_in(*(order._head for order in orders))
        try:
            return _merged_repeats(orders)
        except OSError as exc:  # no room for the sorted runs: in memory, 8 bytes a digest, as before
            warn_once(f"repeated ids are looked for in memory (no temporary file: {exc})")
            return repeated_in(*(array("Q", order) for order in orders))


def _merged_repeats(orders: Iterable[Order]) -> set[int]:
    """Orders' repeated digests: RUN of them sorted at a time into runs of a temporary file, the runs
    merged. OSError where the file cannot be written."""
    found: set[int] = set()
    with tempfile.TemporaryFile(prefix="maas-batch-runs-", buffering=0) as runs:
        bounds: list[tuple[int, int]] = []  # (first digest, count) of each sorted run in `runs`
        written = 0
        for order in orders:
            for window in order.windows(RUN):
                for start in range(0, len(window), RUN):  # the head may hold more than a run
                    ordered = array("Q", sorted(window[start : start + RUN]))
                    write_all(runs.fileno(), ordered.tobytes(), written * ITEM)
                    bounds.append((written, len(ordered)))
                    written += len(ordered)
        last: int | None = None
        for key in heapq.merge(*(_run(runs.fileno(), first, count) for first, count in bounds)):
            if key == last:
                found.add(key)
            last = key
    return found


def _run(fd: int, first: int, count: int) -> Iterator[int]:
    """The digests of one sorted run of a runs file, RUN_BLOCK at a time."""
    for start in range(first, first + count, RUN_BLOCK):
        values: array[int] = array("Q")
        want = min(RUN_BLOCK, first + count - start) * ITEM
        data = os.pread(fd, want, start * ITEM)
        if len(data) != want:
            raise OSError("a sorted run of the order ended early")
        values.frombytes(data)
        yield from values


def write_all(fd: int, data: bytes, offset: int) -> None:
    """All of `data` at `offset` of the file (os.pwrite may write less than it is given)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if not written:
            raise OSError("the temporary file took no more bytes")
        view, offset = view[written:], offset + written


def _blocks_of(values: array[int]) -> Iterator[bytes]:
    for start in range(0, len(values), WINDOW):
        yield values[start : start + WINDOW].tobytes()


def _same(mine: Iterator[bytes], theirs: Iterator[bytes]) -> bool:
    """Whether two streams of bytes are the same bytes, whatever their blocks: a block of each held."""
    left = right = memoryview(b"")
    while True:
        if not left:
            left = memoryview(next(mine, b""))
        if not right:
            right = memoryview(next(theirs, b""))
        if not left or not right:
            return not left and not right
        size = min(len(left), len(right))
        if left[:size] != right[:size]:
            return False
        left, right = left[size:], right[size:]
