"""The compact id structures (batch.running.idset): LineOffsets answers as the dict it replaces did."""

from __future__ import annotations

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
