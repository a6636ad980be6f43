"""A Job narrowed to a shard walks the manifest's positions [start, end) only, and stops at `end`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from batch.manifest.plan import iter_tasks
from batch.running.job import _until_past, _within
from tests.conftest import checked


def test_a_shard_walk_yields_its_positions_and_reads_no_further(write: Callable[..., Path]) -> None:
    path = write(
        "tasks:\n"
        + "".join(
            f"  - {{kind: chat, id: q-{i}, model: gemini-2.5-flash, prompt: q {i}}}\n" for i in range(10)
        )
    )
    job = checked(path)
    asked: list[int] = []

    def finished(position: int) -> bool:
        asked.append(position)
        return position == 4  # already done on an earlier delivery

    tasks = _until_past(iter_tasks(job.manifest, job.builder, _within((3, 6), finished)))
    assert [spec.id for spec in tasks] == ["q-3", "q-5"]
    assert asked == [3, 4, 5]  # positions outside the shard never reach the resume check; none past 6
