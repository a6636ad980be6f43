"""A directory whose manifest changed between two runs: the reports' scope (output.scope) at work."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from batch.simulator import RunningSimulator
from tests.conftest import Outcome, env_for

FIRST = """
    defaults: {model: gpt-image-1, size: 1024x1024, quality: low}
    tasks:
      - {kind: generate, id: lake, prompt: a lake}
      - {kind: generate, prompt: a fox}
      - {kind: generate, prompt: something forbidden}
"""
# the fox's quality raised and the refused prompt fixed: two new tasks, two orphaned lines
SECOND = """
    defaults: {model: gpt-image-1, size: 1024x1024, quality: low}
    tasks:
      - {kind: generate, id: lake, prompt: a lake}
      - {kind: generate, prompt: a fox, quality: high}
      - {kind: generate, prompt: something fine}
      - {kind: chat, model: gemini-2.5-flash, prompt: hello}
"""


@pytest.fixture
def edited(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> Path:
    """DIR after a night with a failure, then a run of the fixed manifest that ended 0."""
    out = tmp_path / "out"
    assert cli("run", write(FIRST, "first.yaml"), "--out", out, env=env_for(sim)).code == 1
    assert cli("run", write(SECOND, "second.yaml"), "--out", out, env=env_for(sim)).code == 0
    return out
