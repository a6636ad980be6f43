"""The producer that feeds the workers' stream of tasks (running.dispatch.Runner._produce)."""

from __future__ import annotations

from types import SimpleNamespace

import anyio
import pytest

from batch.running.dispatch import Runner

pytestmark = pytest.mark.anyio


async def test_the_producer_ends_quietly_when_the_workers_are_gone() -> None:
    """A stop while the producer builds its next batch (in a worker thread) closes the workers' end of
    the stream; the batch it then hands over must end the producer, not the run with a traceback
    (BrokenResourceError out of send_nowait, seen on a run stopped by two SIGTERMs)."""
    send, receive = anyio.create_memory_object_stream[str](4)
    batches = [["a", "b", "c"], ["d"], []]

    def next_batch() -> list[str]:
        return batches.pop(0)

    await receive.aclose()  # the workers have gone
    producer = SimpleNamespace(
        _producer_scope=anyio.CancelScope(),
        _threads=anyio.CapacityLimiter(1),
        _next_batch=next_batch,
    )
    with anyio.fail_after(5):
        await Runner._produce(producer, send)  # type: ignore[arg-type]
    assert batches == [["d"], []]  # it stopped at the first batch it could not hand over
