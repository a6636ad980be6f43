"""bench/peers.py runs end to end on a tiny scale: both peers measured, the table printed, the JSON written.
Timings are not checked (tests check behaviour); BENCHMARKS.md has the figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(script: str, options: list[str], folder: Path) -> subprocess.CompletedProcess[str]:
    """bench/`script` with `options`, run in `folder`, its temporary files there too (TMPDIR)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *options],
        capture_output=True,
        text=True,
        timeout=80,
        cwd=folder,
        env={**os.environ, "TMPDIR": str(folder)},
    )


@pytest.mark.timeout(90)
def test_peers_prints_a_row_per_peer_and_writes_the_figures(tmp_path: Path) -> None:
    figures = tmp_path / "peers.json"
    options = [
        "--tasks",
        "50",
        "--rounds",
        "1",
        "--concurrency",
        "8",
        "--latency",
        "0",
        "--json",
        str(figures),
    ]
    done = _bench("peers.py", options, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["peer", "maas-batch", "hand-written"]
    assert "cookbook: skipped" in done.stderr
    peers = json.loads(figures.read_text())["peers"]["peers"]
    assert peers["hand-written"]["cpu_s_ratio"] == 1.0
    for row in peers.values():
        assert row["cpu_s"] > 0 and row["peak_rss_mb"] > 0 and row["first_request_s"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peers.json"]  # its temporary folder is gone


def test_a_missing_cookbook_is_a_clear_failure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "peers.py"), "--cookbook", str(tmp_path / "nowhere.py")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "no such file" in done.stderr


@pytest.mark.timeout(90)
@pytest.mark.parametrize("http", [True, False])
def test_cpu_ab_runs_each_version_and_prints_its_median(tmp_path: Path, http: bool) -> None:
    options = ["--tasks", "20", "--rounds", "1", "--latency", "0", "--concurrency", "4"]
    options += [] if http else ["--no-http"]
    done = _bench("cpu_ab.py", ["HEAD", ".", *options], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    medians = [line.split(":")[0].strip() for line in done.stdout.splitlines() if ": median " in line]
    assert medians == ["HEAD", "."]
    assert ("C=4, no HTTP;" in done.stdout) is not http
    assert list(tmp_path.iterdir()) == []  # its temporary folder is gone


@pytest.mark.timeout(90)
def test_turnaround_splits_a_requests_cycle_and_each_part_holds_the_next(tmp_path: Path) -> None:
    """The simulator's handling holds its sleep of L; the request, as the engine times it, holds the
    handling; the share of C/L printed is L over the cycle."""
    options = ["--tasks", "40", "--concurrency", "4", "--latency", "0.05"]
    done = _bench("turnaround.py", options, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    means = {
        name: float(line.split("mean")[1].split("ms")[0])
        for line in done.stdout.splitlines()
        for name in ("turn", "request", "handling")
        if f"{name} (" in line or f"{name}:" in line
    }
    assert set(means) == {"turn", "request", "handling"}, done.stdout
    assert 50 <= means["handling"] <= means["request"] and means["turn"] >= 0
    cycle = float(done.stdout.split("a worker's cycle: mean ")[1].split(" ms")[0])
    share = float(done.stdout.split(" of C/L at most")[0].rsplit(" ", 1)[1].rstrip("%"))
    assert cycle == pytest.approx(means["turn"] + means["request"], abs=0.02)
    assert share == pytest.approx(100 * 50 / cycle, abs=0.1)
    assert list(tmp_path.iterdir()) == []
