"""Process behaviour through the real command in a subprocess: signals, grace, the lock."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batch.output.report import report, status
from batch.running.prices import PriceTable
from batch.simulator import RunningSimulator, SimConfig, simulator_in_thread
from batch.simulator.state import CLIENT_CLOSED_STATUS
from tests.conftest import KEY, Run, results


@pytest.fixture
def manifest(write: Callable[..., Path]) -> Path:
    return write(
        "tasks:\n" + "".join(f"  - {{kind: generate, id: t{i}, prompt: p {i}}}\n" for i in range(10))
    )


@pytest.fixture
def slow_sim(request: pytest.FixtureRequest) -> Iterator[RunningSimulator]:
    with simulator_in_thread(SimConfig(api_key=KEY, latency=request.param)) as sim:
        yield sim


def wait_for_in_flight(sim: RunningSimulator, count: int) -> None:
    sim.state.wait_for_sync(lambda state: state.inflight >= count, within=30)


@pytest.mark.parametrize("slow_sim", [1.0], indirect=True)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_stops_dispatch_lets_in_flight_finish_and_exits_75(
    manifest: Path, tmp_path: Path, slow_sim: RunningSimulator, signum: int
) -> None:
    process = Run(manifest, tmp_path / "out", slow_sim, "--concurrency", "2")
    wait_for_in_flight(slow_sim, 2)
    process.send(signum)
    code, out, err = process.finish()
    assert code == 75, err
    assert f"{signal.Signals(signum).name}: stopped dispatching" in out
    done = results(tmp_path / "out")
    assert len(done) == 2 and all(r["status"] == "succeeded" for r in done.values())  # in flight, saved
    assert slow_sim.state.requests_total == 2  # nothing sent after the signal
    assert "run the same command again to resume" in out


@pytest.mark.parametrize("slow_sim", [60.0], indirect=True)
def test_a_second_signal_cancels_what_is_in_flight_and_the_run_resumes(
    manifest: Path, tmp_path: Path, slow_sim: RunningSimulator
) -> None:
    process = Run(manifest, tmp_path / "out", slow_sim, "--concurrency", "3")
    wait_for_in_flight(slow_sim, 3)
    started = time.monotonic()
    process.send(signal.SIGINT)
    process.wait_for_log("stopping: SIGINT")  # the first signal was handled (signals do not queue)
    process.send(signal.SIGINT)
    code, out, _ = process.finish()
    assert code == 75
    assert time.monotonic() - started < 20  # not the 60 s the answers would take
    assert results(tmp_path / "out") == {}
    assert "3 request(s) may have been billed without a saved result" in out
    [log] = (tmp_path / "out" / "runs").glob("*.jsonl")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    cancelled = [r for r in records if r.get("outcome") == "cancelled"]
    assert len(cancelled) == 3 and all(r["maybe_billed"] for r in cancelled)
    assert records[-1]["event"] == "end" and records[-1]["exit_code"] == 75
    # status and report count them from the attempt log, though no task has a result line to say so
    slow_sim.state.wait_for_sync(lambda state: state.inflight == 0, within=30)
    abandoned = slow_sim.state.status_counts().get(CLIENT_CLOSED_STATUS, 0)
    assert status(tmp_path / "out")["maybe_billed"] == abandoned == 3
    assert report(tmp_path / "out", PriceTable())["maybe_billed"] == 3


@pytest.mark.parametrize("slow_sim", [60.0], indirect=True)
def test_the_grace_period_ends_with_the_in_flight_requests_cancelled(
    manifest: Path, tmp_path: Path, slow_sim: RunningSimulator
) -> None:
    process = Run(manifest, tmp_path / "out", slow_sim, "--concurrency", "2", "--grace", "0.5")
    wait_for_in_flight(slow_sim, 2)
    started = time.monotonic()
    process.send(signal.SIGTERM)
    code, _, err = process.finish()
    assert code == 75
    assert time.monotonic() - started < 20
    assert "grace period of 0.5 s over" in err
    slow_sim.state.wait_for_sync(lambda state: state.inflight == 0, within=30)
    abandoned = slow_sim.state.status_counts().get(CLIENT_CLOSED_STATUS, 0)
    assert status(tmp_path / "out")["maybe_billed"] == abandoned == 2


def test_resuming_after_signals_completes_the_manifest(manifest: Path, tmp_path: Path) -> None:
    with simulator_in_thread(SimConfig(api_key=KEY, latency=60.0)) as slow:
        process = Run(manifest, tmp_path / "out", slow, "--concurrency", "2", "--grace", "0")
        wait_for_in_flight(slow, 2)
        process.send(signal.SIGTERM)
        assert process.finish()[0] == 75
    with simulator_in_thread(SimConfig(api_key=KEY)) as fast:
        code, out, _ = Run(manifest, tmp_path / "out", fast).finish()
    assert code == 0
    assert len(results(tmp_path / "out")) == 10
    assert "2 request(s)" not in out  # the cancelled ones were accounted for by the run that cancelled them
    assert status(tmp_path / "out")["maybe_billed"] == 2  # and stay counted after the manifest is done


@pytest.mark.parametrize("slow_sim", [60.0], indirect=True)
def test_a_second_run_on_a_locked_directory_exits_75_at_once_writing_nothing(
    manifest: Path, tmp_path: Path, slow_sim: RunningSimulator
) -> None:
    out = tmp_path / "out"
    first = Run(manifest, out, slow_sim, "--concurrency", "1")
    try:
        wait_for_in_flight(slow_sim, 1)
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
        contents = {p: p.read_bytes() for p in before if p.is_file()}
        started = time.monotonic()
        second = Run(manifest, out, slow_sim)
        code, _, err = second.finish()
        elapsed = time.monotonic() - started
        assert code == 75
        assert "another run is using" in err
        # at once: the first run holds DIR for a minute; the bound leaves room for a loaded machine
        assert elapsed < 10.0, f"took {elapsed:.2f} s"
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
        assert {p: p.read_bytes() for p in before if p.is_file()} == contents
        assert (slow_sim.state.inflight, slow_sim.state.requests_total) == (1, 0)  # only the first run's
    finally:
        first.kill()


def test_rehearse_a_bad_night_against_the_standalone_simulator(manifest: Path, tmp_path: Path) -> None:
    """About half of all requests fail (5xx, resets, cut answers): every task gets there, given attempts.
    With 10 attempts a task failed all of them about once in a hundred runs of this test (0.49^10 for
    each of 10 tasks); 40 make that 10^-12."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    command = [
        sys.executable,
        "-m",
        "batch",
        "simulate",
        "--port",
        "0",
        "--seed",
        "3",
        "--error-rate",
        "0.2",
        "--fault",
        "reset=0.2",
        "--fault",
        "truncate=0.2",
        "--latency",
        "0.01",
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    ) as server:
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            assert line.startswith("MaaS simulator listening on http://127.0.0.1:"), line
            base_url = line.split()[-1]
            run = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "batch",
                    "run",
                    str(manifest),
                    "--out",
                    str(tmp_path / "out"),
                    "--backoff",
                    "0",
                    "--max-attempts",
                    "40",
                ],
                env={**env, "MAAS_API_KEY": "rehearsal", "MAAS_BASE_URL": base_url, "MAAS_ENDPOINT": "ep"},
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    assert run.returncode == 0, run.stdout + run.stderr
    done = results(tmp_path / "out")
    assert len(done) == 10 and any(r["attempts"] > 1 for r in done.values())
    assert server.returncode == 0
