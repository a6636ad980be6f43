"""A journal of DIR that cannot be read (its disk failing: EIO on a read) ends a command with 74 and a
message naming the file, before a run sends anything; before, each of these ended with a traceback and 1."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batch.simulator import RunningSimulator
from tests.conftest import FailingReads, Outcome, chat_lines, env_for


def _failing(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Reads of DIR's `name` fail from now on (it opens; its bytes cannot be read)."""
    real_open = pathlib.Path.open

    def opening(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(self, mode, *args, **kwargs)
        return FailingReads(handle) if self.name == name and mode == "rb" else handle

    monkeypatch.setattr(pathlib.Path, "open", opening)


@pytest.fixture
def done(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> tuple[Path, Path]:
    """A manifest of 6 chat tasks, 4 of them run into DIR."""
    write(chat_lines(range(4)), "first.jsonl")
    manifest = write(chat_lines(range(6)), "tasks.jsonl")
    out = tmp_path / "out"
    assert cli("run", tmp_path / "first.jsonl", "--out", out, env=env_for(sim)).code == 0
    return manifest, out


@pytest.mark.parametrize("name", ["results.jsonl", "usage.jsonl"])
def test_a_run_whose_journal_cannot_be_read_sends_nothing_and_says_which(
    name: str,
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    done: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """results.jsonl is read for the finished tasks, usage.jsonl for what --max-cost has spent."""
    manifest, out = done
    sent, logs = sim.state.billed_requests, sorted((out / "runs").iterdir())
    _failing(monkeypatch, name)
    stopped = cli("run", manifest, "--out", out, "--max-cost", "10", env=env_for(sim))
    assert stopped.code == 74, stopped.err
    assert f"cannot read {out / name}: Input/output error" in stopped.err
    assert "Traceback" not in stopped.err
    assert sim.state.billed_requests == sent and sorted((out / "runs").iterdir()) == logs
    monkeypatch.undo()
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    assert sim.state.billed_requests == sent + 2  # the two that were never run, and no other


@pytest.mark.parametrize("command", ["status", "report", "export", "gallery"])
def test_a_report_over_an_unreadable_results_file_says_which(
    command: str,
    cli: Callable[..., Outcome],
    done: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, out = done
    _failing(monkeypatch, "results.jsonl")
    ended = cli(command, out)
    assert ended.code == 74, ended.err
    assert f"cannot read {out / 'results.jsonl'}: Input/output error" in ended.err
    assert "Traceback" not in ended.err
