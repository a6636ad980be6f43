"""A compact set of task ids: 64-bit digests in sorted arrays, 8 bytes per id.

A run that resumes a million finished tasks holds 8 MB for them instead of a Python set's ~100 MB. The
digests are split into 256 buckets by their top byte, so that sorting never needs more than one small
bucket as Python ints at a time. Two distinct ids share a digest with probability about n²/2⁶⁵ (3·10⁻⁸
for a million ids).
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable

_BUCKETS = 256


def digest(task_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(task_id.encode(), digest_size=8).digest(), "little")


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

    def repeated(self) -> set[int]:
        """Digests added more than once (the ids are found again by digest())."""
        self._sort()
        found: set[int] = set()
        for values in self._buckets:
            found.update(values[i] for i in range(1, len(values)) if values[i] == values[i - 1])
        return found
