"""A run's blocking work on DIR (journal scans and rewrites, recovering killed runs' logs, summing the
ledger, remembering the plan) happens in a worker thread, never on the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batch.manifest import plancache
from batch.output.store import OutputDir
from batch.running import job
from batch.simulator import RunningSimulator
from tests.conftest import Outcome, env_for


def where(name: str, calls: list[tuple[str, bool]], function: Callable[..., Any]) -> Callable[..., Any]:
    """`function`, noting whether each call ran on an event loop."""

    def noted(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            calls.append((name, True))
        except RuntimeError:
            calls.append((name, False))
        return function(*args, **kwargs)

    return noted


def test_the_journals_are_read_and_rewritten_off_the_event_loop(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, bool]] = []
    for name in ("recover", "ledger_spent", "finished_results", "read_lines"):
        monkeypatch.setattr(job, name, where(name, calls, getattr(job, name)))
    monkeypatch.setattr(plancache, "save", where("plancache.save", calls, plancache.save))
    monkeypatch.setattr(OutputDir, "set_aside", where("set_aside", calls, OutputDir.set_aside))
    manifest = write(
        "defaults: {model: gpt-image-1}\ntasks:\n  - {kind: generate, id: a, prompt: a fox}\n  - {kind: generate, id: b, prompt: b}\n"
    )
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, "--max-cost", "5", env=env_for(sim)).code == 0
    assert cli("run", manifest, "--out", out, "--retry-failed", env=env_for(sim)).code == 0
    names = {name for name, _ in calls}
    assert names == {
        "recover",
        "ledger_spent",
        "finished_results",
        "read_lines",  # results.retried.jsonl (Job._waiting)
        "plancache.save",
        "set_aside",
    }
    assert [name for name, on_loop in calls if on_loop] == []
