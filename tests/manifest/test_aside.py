"""A run's manifest check in a child process while the run imports its HTTP stack (manifest.aside): the
same plan as a check in the run, the same refusal, nothing sent before either; any other end of the child
and the run checks the manifest itself."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.kind import builtin_registry
from batch.manifest import aside, plancache
from batch.manifest.checked import check
from batch.manifest.tasks import BuildSettings
from batch.simulator import RunningSimulator
from tests.conftest import ROOT, chat_lines, env_for, make_image, results

TASKS = 1500  # about 110 KB of JSONL: over aside.ASIDE_FROM


def big(tmp_path: Path, last: str = "") -> Path:
    manifest = tmp_path / "tasks.jsonl"
    manifest.write_text(chat_lines(range(TASKS)) + last)
    assert manifest.stat().st_size >= aside.ASIDE_FROM
    return manifest


def run(sim: RunningSimulator, *args: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env = {**env, **env_for(sim), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "batch", "run", *map(str, args), "-v", "--no-progress"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def leftovers() -> set[str]:
    return {p.name for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("maas-batch-check-*")}


def test_a_big_manifest_is_checked_aside_and_run_as_the_run_would_have_checked_it(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    before = leftovers()
    manifest, out = big(tmp_path), tmp_path / "out"
    done = run(sim, manifest, "--out", out, "-c", "32")
    assert done.returncode == 0, done.stderr
    assert "checked in a child process" in done.stderr
    assert len(results(out)) == TASKS and sim.state.billed_requests == TASKS
    start = json.loads((next((out / "runs").glob("*.jsonl"))).read_text().splitlines()[0])
    assert start["plan"] == "validated"  # by this run (in its child), not remembered from an earlier one
    # the plan remembered in DIR is the one a check in the run would have made: its order, byte for byte
    direct = check(
        manifest, BuildSettings(env_endpoint=env_for(sim)["MAAS_ENDPOINT"]), builtin_registry()
    ).plan
    saved = (out / plancache.FOLDER / plancache.IDS).read_bytes()
    assert saved == b"".join(direct.order.blocks()) and len(saved) == 8 * TASKS
    document = json.loads((out / plancache.FOLDER / plancache.PLAN).read_bytes())
    assert document["total"] == TASKS and document["counts"] == [[*k, n] for k, n in direct.counts.items()]
    assert leftovers() <= before  # the child's folder is gone
    again = run(sim, manifest, "--out", out)  # a resume takes DIR's plan: no child
    assert again.returncode == 0 and "checked in a child process" not in again.stderr
    assert sim.state.billed_requests == TASKS


def test_a_big_manifest_refused_by_the_child_is_refused_as_the_run_refuses_it(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    manifest = big(tmp_path, '{"kind": "chat", "id": "t0", "model": "gemini-2.5-flash", "prompt": "again"}\n')
    refused = run(sim, manifest, "--out", tmp_path / "out")
    assert refused.returncode == 65, refused.stderr
    assert "checked in a child process" in refused.stderr
    assert f"{manifest}:{TASKS + 1}" in refused.stderr and "t0" in refused.stderr
    assert "nothing was sent" in refused.stderr and sim.state.requests_total == 0


class Ended:
    """A child process that is over, with this exit code."""

    def __init__(self, code: int | None) -> None:
        self.exitcode = code

    def join(self) -> None:
        pass


@pytest.mark.parametrize("code", [1, 2, -9])
def test_a_child_that_ended_otherwise_leaves_the_check_to_the_run(code: int, tmp_path: Path) -> None:
    settings = BuildSettings(env_endpoint="ep")
    folder = tmp_path / "child"
    folder.mkdir()
    taken = aside.CheckAside(big(tmp_path), settings, Ended(code), folder)  # type: ignore[arg-type]
    assert taken.take(settings, builtin_registry()) is None
    taken.close()
    assert not folder.exists()


def test_other_settings_than_the_childs_leave_the_check_to_the_run(tmp_path: Path) -> None:
    folder = tmp_path / "child"
    folder.mkdir()
    child = aside.CheckAside(
        big(tmp_path),
        BuildSettings(env_endpoint="ep"),
        Ended(aside.READY),
        folder,  # type: ignore[arg-type]
    )
    assert child.take(BuildSettings(env_endpoint="other"), builtin_registry()) is None


def test_closing_ends_a_child_still_checking(tmp_path: Path) -> None:
    process = multiprocessing.get_context("fork").Process(target=time.sleep, args=(600,), daemon=True)
    process.start()
    folder = tmp_path / "child"
    folder.mkdir()
    aside.CheckAside(tmp_path / "m.jsonl", BuildSettings(), process, folder).close()
    assert process.exitcode is not None and not process.is_alive() and not folder.exists()


def test_it_is_not_worth_a_child_for_a_small_or_yaml_manifest_or_a_dir_that_remembers_a_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: Callable[..., Path]
) -> None:
    monkeypatch.setattr(aside.threading, "active_count", lambda: 1)  # as in the command, not this worker
    manifest, out = big(tmp_path), tmp_path / "out"
    assert aside.worth_it(manifest, out)
    small = tmp_path / "small.jsonl"
    small.write_text(chat_lines(range(3)))
    assert not aside.worth_it(small, out)
    yaml = write("tasks:\n" + "".join(f"  - {{kind: chat, prompt: q{i}}}\n" for i in range(3000)))
    assert yaml.stat().st_size >= aside.ASIDE_FROM and not aside.worth_it(yaml, out)
    (out / plancache.FOLDER).mkdir(parents=True)
    (out / plancache.FOLDER / plancache.PLAN).write_text("{}")
    assert not aside.worth_it(manifest, out)
    monkeypatch.setattr(aside.threading, "active_count", lambda: 2)  # a thread (s3's loop) would not fork
    assert not aside.worth_it(manifest, tmp_path / "elsewhere")


def test_the_input_files_the_child_inspected_are_not_read_again_by_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit's input image is hashed by the check; the dispatch walk takes that digest, not the file's
    bytes again (the run's own inspector is given the child's)."""
    make_image(tmp_path / "in.png")
    line = '{{"kind": "edit", "id": "e{0}", "prompt": "a hat {0}", "image": "in.png"}}\n'
    manifest = tmp_path / "edits.jsonl"
    manifest.write_text("".join(line.format(i) for i in range(1500)))
    monkeypatch.setattr(aside.threading, "active_count", lambda: 1)
    settings = BuildSettings(env_endpoint="ep")
    child = aside.start(manifest, settings, tmp_path / "out", lambda plan, name: [])
    assert child is not None
    try:
        checked = child.take(settings, builtin_registry())
    finally:
        child.close()
    assert checked is not None and not isinstance(checked, aside.Refusal)
    assert checked.plan.total == 1500 and not checked.cached
    known = checked.builder.inspector.known()
    assert [key[0] for key, _ in known] == [str(tmp_path / "in.png")] and known[0][1].digest
