"""A full disk ends the run cleanly (exit 74), leaves no half-written file, and the run resumes once there
is room again. Two ways to fill it: a real, tiny tmpfs (where this machine lets us mount one), and a file
size limit (RLIMIT_FSIZE, always available), under which writes fail the same way."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from batch.simulator import RunningSimulator
from tests.conftest import KEY, results

ROOT = Path(__file__).resolve().parents[2]


def run(
    manifest: Path, out: Path, sim: RunningSimulator, file_limit: int | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env.update(
        MAAS_API_KEY=KEY,
        MAAS_BASE_URL=sim.base_url,
        MAAS_ENDPOINT="ep",
        PYTHONPATH=str(ROOT),
        PYTHONDONTWRITEBYTECODE="1",
    )

    def limit() -> None:
        if file_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run(
        [sys.executable, "-m", "batch", "run", str(manifest), "--out", str(out), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )


def check_consistent(out: Path) -> dict[str, dict[str, object]]:
    """Whatever a crash or full disk left: whole result lines, every named file whole, no temporary files."""
    done = results(out)
    for record in done.values():
        for path in record["files"]:  # type: ignore[union-attr]
            with Image.open(out / str(path)) as image:
                image.load()
    assert not [p for p in out.rglob("*.tmp")], "temporary files left"
    for name in ("results.jsonl", "usage.jsonl"):
        data = (out / name).read_bytes()
        assert not data or data.endswith(b"\n"), f"{name} ends with a partial line"
    return done


@pytest.fixture
def manifest(write: Callable[..., Path]) -> Path:
    return write(
        "tasks:\n" + "".join(f"  - {{kind: generate, id: t{i}, prompt: picture {i}}}\n" for i in range(8))
    )


def test_file_size_limit_ends_the_run_with_74_and_it_resumes(
    manifest: Path, sim: RunningSimulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    full = run(manifest, out, sim, file_limit=20_000)  # each drawn image is larger than this
    assert full.returncode == 74, full.stdout + full.stderr
    assert "cannot write" in full.stdout + full.stderr
    assert check_consistent(out) == {}  # nothing finished: no image fitted
    billed = sim.state.billed_requests
    assert billed >= 1  # the answers came (and were billed) before the write failed: in the ledger
    assert len((out / "usage.jsonl").read_text().splitlines()) == billed

    again = run(manifest, out, sim)
    assert again.returncode == 0, again.stderr
    done = check_consistent(out)
    assert len(done) == 8 and all(r["status"] == "succeeded" for r in done.values())


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the RLIMIT_FSIZE test covers the same path")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_real_full_disk_ends_the_run_with_74_and_it_resumes_once_there_is_room(
    manifest: Path, sim: RunningSimulator, tiny_disk: Path
) -> None:
    out = tiny_disk / "out"
    full = run(manifest, out, sim)
    assert full.returncode == 74, full.stdout + full.stderr
    assert "no space left on the device" in full.stdout + full.stderr
    first = check_consistent(out)
    assert len(first) < 8

    grown = subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_disk)], capture_output=True)
    assert grown.returncode == 0, grown.stderr
    again = run(manifest, out, sim)
    assert again.returncode == 0, again.stderr
    done = check_consistent(out)
    assert len(done) == 8 and all(r["status"] == "succeeded" for r in done.values())
    for task_id in first:  # what was finished before the disk filled was not bought again
        assert sum(1 for r in sim.state.records if r.task_id == task_id and r.billed_tokens) == 1


@pytest.mark.parametrize("file_limit", [300, 1_500, 4_000, 9_000, 20_000, 60_000, 150_000])
def test_a_disk_that_fills_at_any_write_exits_74_with_its_message_and_no_traceback(
    file_limit: int, manifest: Path, sim: RunningSimulator, tmp_path: Path
) -> None:
    """Each limit makes a different write fail first: the attempt log, the plan cache, the ledger, an
    image, a result line, the gallery. Every one ends the run with 74, never 1 and a traceback."""
    out = tmp_path / "out"
    full = run(manifest, out, sim, file_limit=file_limit)
    said = full.stdout + full.stderr
    assert "Traceback" not in said and "ExceptionGroup" not in said, said
    assert full.returncode in (0, 74), said
    if full.returncode == 74:
        assert "cannot write" in said or "no space" in said or "too large" in said.lower(), said
    check_consistent(out)
    again = run(manifest, out, sim)
    assert again.returncode == 0, again.stderr
    assert len(check_consistent(out)) == 8
