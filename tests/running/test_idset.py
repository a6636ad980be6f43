"""The compact id structures (batch.running.idset): LineOffsets answers as the dict it replaces did."""

from __future__ import annotations

import itertools
import random
import tracemalloc
from array import array
from collections import Counter

from batch.running.idset import LineOffsets, digest, repeated_in
from tests.conftest import measured_apart


def test_the_last_line_of_an_id_is_its_offset_and_it_is_handed_out_once() -> None:
    offsets = LineOffsets()
    assert not offsets
    for at, task_id in enumerate(["x", "y", "a", "x", "b", "a"]):
        offsets.add(digest(task_id), at * 100)
    assert offsets and digest("a") in offsets and digest("c") not in offsets
    assert offsets.pop(digest("a")) == 500 and offsets.pop(digest("b")) == 400
    assert offsets.pop(digest("a")) is None and digest("a") not in offsets  # popped: as a dict's pop
    assert offsets.pop(digest("c")) is None
    # what is left, in file order: y's line before x's last one, though x was seen first
    assert list(offsets.left()) == [100, 300]


def test_many_ids_in_every_bucket() -> None:
    offsets = LineOffsets()
    ids = [f"t{i}" for i in range(5000)]
    for at, task_id in enumerate(ids):
        offsets.add(digest(task_id), at)
    for at in range(0, 5000, 2):
        assert offsets.pop(digest(ids[at])) == at
    assert list(offsets.left()) == list(range(1, 5000, 2))


def test_offsets_past_4_gib_are_held_as_8_bytes_and_those_before_kept() -> None:
    offsets = LineOffsets()
    offsets.add(digest("a"), 10)
    offsets.add(digest("b"), 2**32 - 2)
    assert offsets.pop(digest("a")) == 10  # handed out before the offsets widen: still handed out after
    offsets.add(digest("c"), 2**32 - 1)
    offsets.add(digest("d"), 2**40)
    assert digest("a") not in offsets and offsets.pop(digest("a")) is None
    assert [offsets.pop(digest(i)) for i in "bcd"] == [2**32 - 2, 2**32 - 1, 2**40]
    offsets.add(digest("e"), 2**33)
    assert list(offsets.left()) == [2**33]


OFFSETS_COUNTED = 100_000


def held_by_offsets() -> int:
    """The bytes LineOffsets holds for OFFSETS_COUNTED lines under 4 GiB (measured apart: it is 1.30 MB
    against a bound of 1.40, closer than another thread's allocations can come)."""
    keys = [digest(f"t{i}") for i in range(OFFSETS_COUNTED)]
    tracemalloc.start()
    try:
        offsets = LineOffsets()
        for at, key in enumerate(keys):
            offsets.add(key, at * 300)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert offsets.pop(keys[-1]) == (OFFSETS_COUNTED - 1) * 300
    return held


def test_offsets_under_4_gib_take_4_bytes_a_line() -> None:
    """A million result lines: 12 MB of digests and offsets while the page of a run is written, not 16."""
    held = measured_apart(held_by_offsets)
    assert held < 14 * OFFSETS_COUNTED, f"{held / OFFSETS_COUNTED:.1f} bytes a line"


def test_repeated_digests_are_found_a_part_at_a_time_as_a_count_finds_them() -> None:
    """repeated_in against collections.Counter: few digests (sorted in one go) and many (a sixteenth at a
    time, by their top four bits), repeats within one array and across two, at the parts' edges."""
    rng = random.Random(7)
    for count in (10, 1 << 16, (1 << 16) + 1, 200_000):
        order = array("Q", (rng.getrandbits(64) for _ in range(count)))
        edges = [part << 60 for part in range(16)] + [(part << 60) - 1 for part in range(1, 16)]
        order.extend([*edges, order[0], order[count // 2], edges[3]])
        others = array("Q", [order[5], 2**64 - 1, 2**64 - 1, edges[-1]])
        counted = Counter(itertools.chain(order, others))
        assert repeated_in(order, others) == {key for key, times in counted.items() if times > 1}
        assert repeated_in(array("Q", set(order))) == set()


def test_finding_repeats_holds_no_second_copy_of_many_digests() -> None:
    order = array("Q", (digest(f"t{i}") for i in range(200_000)))  # 1.6 MB
    tracemalloc.start()
    try:
        repeated_in(order)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_200_000  # a sixteenth as ints (0.5 MB) and a byte a digest (0.4): 0.82 MB; an IdSet: 1.6
