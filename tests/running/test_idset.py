"""The compact id structures (batch.running.idset): LineOffsets answers as the dict it replaces did."""

from __future__ import annotations

import tracemalloc

from batch.running.idset import LineOffsets, digest


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


def test_offsets_under_4_gib_take_4_bytes_a_line() -> None:
    """A million result lines: 12 MB of digests and offsets while the page of a run is written, not 16."""
    count = 100_000
    keys = [digest(f"t{i}") for i in range(count)]
    tracemalloc.start()
    try:
        offsets = LineOffsets()
        for at, key in enumerate(keys):
            offsets.add(key, at * 300)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert offsets.pop(keys[-1]) == (count - 1) * 300
    assert held < 14 * count, f"{held / count:.1f} bytes a line"
