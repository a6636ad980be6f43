"""The run's event loop: uvloop where it is installed (maas-batch[fast]), asyncio's own otherwise; both
run the same job, for the command line and the library."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import batch
import batch.config
from batch.simulator import RunningSimulator
from tests.conftest import Outcome, env_for, results

pytest.importorskip("uvloop", reason="uvloop is not installed (pip install 'maas-batch[fast]')")


def loops_of(out: Path) -> list[str]:
    starts = [json.loads(path.read_text().splitlines()[0]) for path in sorted((out / "runs").glob("*.jsonl"))]
    return [start["loop"] for start in starts]


@pytest.mark.parametrize(("installed", "loop"), [(True, "uvloop"), (False, "asyncio")])
def test_a_run_is_on_uvloop_where_installed_and_on_asyncio_otherwise(
    cli: Callable[..., Outcome],
    write: Callable[..., Path],
    tmp_path: Path,
    sim: RunningSimulator,
    monkeypatch: pytest.MonkeyPatch,
    installed: bool,
    loop: str,
) -> None:
    monkeypatch.setattr(batch.config, "uvloop_installed", lambda: installed)
    manifest = write("tasks:\n" + "".join(f"  - {{kind: generate, prompt: p {i}}}\n" for i in range(4)))
    done = cli("run", manifest, "--out", tmp_path / "out", env=env_for(sim))
    assert done.code == 0, done.out + done.err
    assert len(results(tmp_path / "out")) == 4
    assert loops_of(tmp_path / "out") == [loop]
    for name, value in env_for(sim).items():
        monkeypatch.setenv(name, value)
    summary = batch.run(batch.from_tasks([{"kind": "generate", "prompt": "q"}]), tmp_path / "lib")
    assert summary.exit_code == 0 and loops_of(tmp_path / "lib") == [loop]
