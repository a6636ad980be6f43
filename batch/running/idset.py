"""A compact set of task ids: 64-bit digests in sorted arrays, 8 bytes per id; and a compact map of ids
to the byte offsets of their lines in a JSONL file, 12 bytes per id (16 for a file past 4 GiB).

A million ids are 8 MB here instead of a Python set's ~100 MB (a resume's finished tasks need less:
finishedset.py, a bit each). The digests are split into 256 buckets by their top byte, so that sorting
never needs more than one small bucket as Python ints at a time. Two distinct ids share a digest with
probability about n²/2⁶⁵ (3·10⁻⁸ for a million ids).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator

_BUCKETS = 256


def digest(task_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(task_id.encode(), digest_size=8).digest(), "little")


def request_key(id_digest: int, request: int) -> int:
    """One digest of a task's id (its digest) and its request (TaskSpec.request as a number, as a plan's
    `requests` holds it): both are uniform 64-bit hashes, so their exclusive or is one too, and it is
    another for every other request of the same id."""
    return id_digest ^ request


class IdSet:
    """Add ids, then ask membership. A bucket that was added to is sorted again on the next lookup."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._buckets = [array("Q") for _ in range(_BUCKETS)]
        self._unsorted: set[int] = set()
        for task_id in ids:
            self.add(task_id)

    def add(self, task_id: str) -> None:
        self.add_digest(digest(task_id))

    def add_digest(self, key: int) -> None:
        bucket = key >> 56
        self._buckets[bucket].append(key)
        self._unsorted.add(bucket)

    def _sort(self) -> None:
        for bucket in self._unsorted:
            self._buckets[bucket] = array("Q", sorted(self._buckets[bucket]))
        self._unsorted.clear()

    def __contains__(self, task_id: object) -> bool:
        if not isinstance(task_id, str):
            return False
        return self.contains_digest(digest(task_id))

    def contains_digest(self, key: int) -> bool:
        self._sort()
        values = self._buckets[key >> 56]
        at = bisect_left(values, key)
        return at < len(values) and values[at] == key

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets)

    def freeze(self) -> None:
        """Sort now, so that later lookups (from worker threads too) only read."""
        self._sort()


_PARTS = 16  # the digests of repeated_in, a sixteenth at a time by their top four bits
_TOP_BYTE = 7 if sys.byteorder == "little" else 0  # where an array("Q") item's top byte is
_PART_OF_TOP_BYTE = bytes(byte >> 4 for byte in range(256))


def repeated_in(*arrays: array[int]) -> set[int]:
    """The digests found more than once in `arrays` (each an array("Q")), without a second copy of them
    (an IdSet of them would be 8 bytes more a digest): a sixteenth of them at a time, by their top four
    bits, as sorted Python ints. A million digests take about 1.3 s here, against 0.6 for an IdSet."""
    total = sum(len(values) for values in arrays)
    if total <= 1 << 16:  # a small plan in one go: some 3 MB of ints at most
        return _adjacent(sorted(itertools.chain.from_iterable(arrays)))
    found: set[int] = set()
    # a byte a digest, its part's number: bytes.find then walks each part without a Python loop over all
    parts = [_top_bytes(values).translate(_PART_OF_TOP_BYTE) for values in arrays]
    for part in range(_PARTS):
        mark = bytes([part])
        keys: list[int] = []
        for values, numbers in zip(arrays, parts, strict=True):
            at = numbers.find(mark)
            while at != -1:
                keys.append(values[at])
                at = numbers.find(mark, at + 1)
        keys.sort()
        found |= _adjacent(keys)
    return found


def _top_bytes(values: array[int]) -> bytes:
    """The top byte of each 8-byte value, in order: a byte a value."""
    with memoryview(values) as view, view.cast("B") as raw:
        return bytes(raw[_TOP_BYTE :: values.itemsize])


def _adjacent(keys: list[int]) -> set[int]:
    """The values of a sorted list that occur more than once."""
    return {keys[i] for i in range(1, len(keys)) if keys[i] == keys[i - 1]}


_TAKEN = 2**64 - 1  # the offset of a digest that LineOffsets.pop has handed out (8-byte offsets)
_NARROW_TAKEN = 2 ** (8 * array("I").itemsize) - 1  # the same, while the offsets are 4 bytes


class LineOffsets:
    """The byte offset of the last line of each id digest in a JSONL file, held as a dict would hold
    them (add, pop, what is left) in 12 bytes a line instead of a dict's ~120: a million result lines
    are 12 MB here, not 120. The offsets take 4 bytes each until one does not fit (a file past 4 GiB),
    then 8. Add every line first, in file order; then look up."""

    def __init__(self) -> None:
        self._keys = [array("Q") for _ in range(_BUCKETS)]
        self._offsets = [array("I") for _ in range(_BUCKETS)]
        self._taken = _NARROW_TAKEN  # the offset of a line handed out: one no offset of these can be
        self._unsorted: set[int] = set()

    def add(self, key: int, offset: int) -> None:
        """The line of digest `key` at `offset`; a later line of the same digest replaces it."""
        if offset >= self._taken:
            self._widen()
        bucket = key >> 56
        self._keys[bucket].append(key)
        self._offsets[bucket].append(offset)
        self._unsorted.add(bucket)

    def _widen(self) -> None:
        """8-byte offsets from now on, the ones held so far too."""
        taken = self._taken
        self._offsets = [
            array("Q", (_TAKEN if o == taken else o for o in offsets)) for offsets in self._offsets
        ]
        self._taken = _TAKEN

    def _sort(self) -> None:
        """Each bucket added to, sorted by digest, keeping the last line of a digest added twice (the
        largest offset: lines come in file order)."""
        for bucket in self._unsorted:
            keys, offsets = array("Q"), array(self._offsets[bucket].typecode)
            pairs = sorted(zip(self._keys[bucket], self._offsets[bucket], strict=True))
            for at, (key, offset) in enumerate(pairs):
                if at + 1 < len(pairs) and pairs[at + 1][0] == key:
                    continue  # a later line of the same digest follows
                keys.append(key)
                offsets.append(offset)
            self._keys[bucket], self._offsets[bucket] = keys, offsets
        self._unsorted.clear()

    def __contains__(self, key: int) -> bool:
        """Whether `key` has a line that was not popped."""
        if self._unsorted:
            self._sort()
        keys = self._keys[key >> 56]
        at = bisect_left(keys, key)
        return at < len(keys) and keys[at] == key and self._offsets[key >> 56][at] != self._taken

    def pop(self, key: int) -> int | None:
        """The offset of `key`'s line, handed out once: None the next time, as for a digest not held."""
        if self._unsorted:
            self._sort()
        keys = self._keys[key >> 56]
        at = bisect_left(keys, key)
        if at == len(keys) or keys[at] != key:
            return None
        offsets = self._offsets[key >> 56]
        offset = offsets[at]
        if offset == self._taken:
            return None
        offsets[at] = self._taken
        return offset

    def __bool__(self) -> bool:
        """Whether any line was added."""
        return any(self._keys)

    def left(self) -> Iterator[int]:
        """The offsets not popped, in file order."""
        self._sort()
        taken = self._taken
        each = (array("Q", sorted(o for o in offsets if o != taken)) for offsets in self._offsets)
        return heapq.merge(*each)
