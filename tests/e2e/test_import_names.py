"""The library runs from a pipeline's folder that has a `jobs` package of its own: the kinds are reached as
`batch.jobs`, never under the generic name `jobs`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

PIPELINE = """
import sys
import batch

summary = batch.run(sys.argv[1], sys.argv[2], simulate=True, gallery=False)
assert summary.exit_code == 0, summary
import jobs  # the pipeline's own package, untouched by the library
print("own jobs:", jobs.MINE, "kinds from:", sys.modules["batch.jobs"].__name__)
assert "jobs.chat" not in sys.modules and "jobs.generate" not in sys.modules
"""


@pytest.mark.timeout(120)
def test_the_library_runs_from_a_folder_with_its_own_jobs_package(tmp_path: Path) -> None:
    own = tmp_path / "jobs"
    own.mkdir()
    (own / "__init__.py").write_text("MINE = 'label-cleanup jobs'\n")
    (own / "chat.py").write_text("raise ImportError('this is the pipeline’s jobs/chat.py')\n")
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    manifest = tmp_path / "job.yaml"
    manifest.write_text(
        "tasks:\n  - {kind: chat, model: gemini-2.5-flash, prompt: hello}\n  - {kind: generate, prompt: a fox}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env.pop("PYTHONPATH", None)  # as a user runs it: the folder first on sys.path, the installed library
    run = subprocess.run(
        [sys.executable, "pipeline.py", str(manifest), str(tmp_path / "out")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "own jobs: label-cleanup jobs kinds from: batch.jobs" in run.stdout


@pytest.mark.timeout(120)
def test_the_command_runs_from_a_folder_with_its_own_batch_and_jobs_packages(tmp_path: Path) -> None:
    """A cron job whose folder holds a `batch` package of its own (a generic name): the command is not
    affected, since its script does not put the working folder on sys.path."""
    for name in ("batch", "jobs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('the folder’s own {name}')\n")
    manifest = tmp_path / "job.yaml"
    manifest.write_text("tasks:\n  - {kind: generate, prompt: a fox}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env.pop("PYTHONPATH", None)
    installed = Path(sysconfig.get_path("scripts")) / "maas-batch"
    command = str(installed) if installed.exists() else shutil.which("maas-batch")
    assert command, "the maas-batch command is installed"
    run = subprocess.run(
        [command, "run", "job.yaml", "--out", "out", "--simulate", "--no-progress"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 succeeded" in run.stdout
