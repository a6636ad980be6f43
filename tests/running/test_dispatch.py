"""The producer that feeds the workers' stream of tasks (running.dispatch.Runner._produce)."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from batch.cli.progress import LogLines
from batch.events import Billed, Event, TaskFinished
from batch.manifest import read
from batch.manifest.regular import open_regular
from batch.manifest.tasks import TaskBuilder
from batch.running import dispatch
from batch.running.dispatch import Runner
from batch.simulator import RunningSimulator
from tests.conftest import FailingReads, Outcome, chat_lines, env_for, ledger, results

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


def test_a_manifest_that_cannot_be_read_during_the_dispatch_stops_the_run_and_loses_nothing(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The manifest's disk failing after its check (EIO in the dispatch's walk, 8 lines in): the run
    stops as on a full disk (74), its requests in flight finished and recorded, and the next run sends
    only the rest."""
    manifest = write(chat_lines(range(12)), "tasks.jsonl")
    monkeypatch.setattr(dispatch, "PRODUCER_BATCH", 2)
    opened = 0

    def failing_after_the_check(path: Path) -> Any:
        nonlocal opened
        opened += 1
        handle = open_regular(path)
        return (
            handle if opened == 1 else FailingReads(handle, good=8)
        )  # the check's walk, then the dispatch's

    out = tmp_path / "out"
    with monkeypatch.context() as disk:
        disk.setattr(read, "open_regular", failing_after_the_check)
        stopped = cli("run", manifest, "--out", out, env=env_for(sim))
    assert stopped.code == 74, stopped.err
    assert "cannot read the manifest during the run: Input/output error" in stopped.out + stopped.err
    sent = sim.state.billed_requests
    assert 0 < sent <= 8
    for name in ("results.jsonl", "usage.jsonl"):
        assert (out / name).read_bytes().count(b"\n") == sent
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    assert sim.state.billed_requests == 12


def test_a_fault_of_ours_in_the_dispatch_walk_stops_the_run_with_its_requests_in_flight_recorded(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug met while building the fifth task of the dispatch walk (after the check built all twelve):
    the run stops (1, the error named), the requests in flight finish and are recorded, as a worker's
    fault fails only its task; before, the exception ended the run and cancelled them."""
    manifest = write(chat_lines(range(12)), "tasks.jsonl")
    monkeypatch.setattr(dispatch, "PRODUCER_BATCH", 1)
    build = TaskBuilder.build
    built = 0

    def faulty(self: TaskBuilder, entry: Any) -> Any:
        nonlocal built
        built += 1
        if built == 12 + 5:
            raise RuntimeError("a fault of ours")
        return build(self, entry)

    monkeypatch.setattr(TaskBuilder, "build", faulty)
    out = tmp_path / "out"
    stopped = cli("run", manifest, "--out", out, env=env_for(sim))
    assert stopped.code == 1, stopped.err
    assert "stopped: unexpected RuntimeError in the walk of the manifest: a fault of ours" in stopped.out
    sent = sim.state.billed_requests
    assert 0 < sent <= 4
    for name in ("results.jsonl", "usage.jsonl"):
        assert (out / name).read_bytes().count(b"\n") == sent
    monkeypatch.undo()
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    assert sim.state.billed_requests == 12


@pytest.mark.parametrize("failing_on", [Billed, TaskFinished])
def test_a_view_of_the_run_that_fails_is_dropped_and_the_run_goes_on(
    failing_on: type,
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run's display raising (a terminal gone, a closed stdout under the bar's messages) on a paid
    answer's Billed event failed that task after it was paid for; on TaskFinished, after its result
    line, it ended the run and cancelled the requests in flight. The view is dropped with a warning."""
    manifest = write(chat_lines(range(8)), "tasks.jsonl")
    shown = LogLines.__call__

    def failing(self: LogLines, event: Event) -> None:
        if isinstance(event, failing_on):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        shown(self, event)

    monkeypatch.setattr(LogLines, "__call__", failing)
    out = tmp_path / "out"
    ran = cli("run", manifest, "--out", out, env=env_for(sim))
    assert ran.code == 0, ran.err
    assert "a view of the run failed (BrokenPipeError: [Errno 32] Broken pipe)" in ran.err
    assert ran.err.count("a view of the run failed") == 1
    assert "8 succeeded, 0 failed" in ran.out
    assert sim.state.billed_requests == 8
    assert {r["status"] for r in results(out).values()} == {"succeeded"} and len(ledger(out)) == 8


def test_a_run_starts_no_more_workers_than_it_has_tasks(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """-c 10000 on 3 tasks: 3 workers (100,000 once took 850 MB and half a minute before a request)."""
    started = 0
    work = Runner._work

    async def counted(self: Runner, receive: Any) -> None:
        nonlocal started
        started += 1
        await work(self, receive)

    monkeypatch.setattr(Runner, "_work", counted)
    manifest = write(chat_lines(range(3)), "tasks.jsonl")
    outcome = cli("run", manifest, "--out", tmp_path / "out", "-c", "10000", env=env_for(sim))
    assert outcome.code == 0, outcome.err
    assert started == 3 and sim.state.billed_requests == 3
    refused = cli("run", manifest, "--out", tmp_path / "out", "-c", "10001", env=env_for(sim))
    assert refused.code == 64 and "at most 10,000" in refused.err
    # a resume counts what is left to send, not the finished tasks: 2 more tasks, 2 more workers
    manifest.write_text(chat_lines(range(5)))
    outcome = cli("run", manifest, "--out", tmp_path / "out", "-c", "10000", env=env_for(sim))
    assert outcome.code == 0, outcome.err
    assert started == 5 and sim.state.billed_requests == 5
