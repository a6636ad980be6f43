"""The plan of a sharded batch: pure data and its file, no Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch.cluster.plan import BatchPlan, is_sharded, queue_name, read_plan, split, write_plan
from batch.errors import UsageError


def test_split_covers_every_position_once_in_order() -> None:
    assert split(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert split(8, 4) == [(0, 4), (4, 8)]
    assert split(0, 4) == []
    with pytest.raises(UsageError):
        split(10, 0)


def test_queue_name_is_per_directory_and_readable(tmp_path: Path) -> None:
    name = queue_name(tmp_path / "tonight run")
    assert name.startswith("maas-batch.tonight-run.")
    assert name != queue_name(tmp_path / "other" / "tonight run")
    assert name == queue_name(tmp_path / "tonight run")


def test_a_plan_is_written_once_and_read_back(tmp_path: Path) -> None:
    plan = BatchPlan("/m.yaml", str(tmp_path), "q", 10, "ab", 4, split(10, 4), ["--concurrency", "2"], "ep")
    assert not is_sharded(tmp_path)
    write_plan(tmp_path, plan)
    assert is_sharded(tmp_path)
    assert read_plan(tmp_path) == plan
    assert read_plan(tmp_path).shard(2).size == 2
    with pytest.raises(UsageError, match="already holds a submitted batch"):
        write_plan(tmp_path, plan)
