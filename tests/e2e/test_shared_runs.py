"""Three runs on one key, sharing its limits through a real redis-server, against a simulator that
enforces N requests per second per key: each run is the real command in a subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batch.simulator import RunningSimulator, SimConfig, simulator_in_thread
from tests.conftest import FAST, KEY, Run, results
from tests.redis_server import RedisServer, free_port, needs_redis, redis_server

N = 10  # requests per second the simulator takes from the key
TASKS = 40  # per run: 120 requests in all


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path)


@pytest.fixture
def limited_sim() -> Iterator[RunningSimulator]:
    with simulator_in_thread(SimConfig(api_key=KEY, rps=N, latency=0.02)) as sim:
        yield sim


def manifests(write: Callable[..., Path], runs: int, tasks: int = TASKS) -> list[Path]:
    return [
        write(
            "tasks:\n"
            + "".join(
                f"  - {{kind: chat, id: r{run}-{i}, model: gemini-2.5-flash, prompt: question {i}}}\n"
                for i in range(tasks)
            ),
            f"run{run}.yaml",
        )
        for run in range(runs)
    ]


def start(paths: list[Path], tmp_path: Path, sim: RunningSimulator, *args: str) -> list[Run]:
    return [Run(path, tmp_path / f"out{i}", sim, "--rpm", str(60 * N), *args) for i, path in enumerate(paths)]


def rate_and_refusals(sim: RunningSimulator) -> tuple[float, float]:
    """The answered requests a second while every run was sending (from the last run's first request
    to the first run's last: not the processes' start-up), and the share of all refused with 429."""
    records = [record for record in sim.state.records if record.kind == "chat"]
    by_run: dict[str, list[float]] = {}
    for record in records:
        by_run.setdefault(str(record.task_id).split("-")[0], []).append(record.time)
    together = max(min(times) for times in by_run.values()), min(max(times) for times in by_run.values())
    answered = [r.time for r in records if r.status == 200 and together[0] <= r.time <= together[1]]
    refused = sum(record.status == 429 for record in records)
    return (len(answered) - 1) / (together[1] - together[0]), refused / len(records)


@needs_redis
@pytest.mark.timeout(60)
def test_three_runs_on_one_key_share_its_rate_and_keep_the_key_out_of_redis(
    write: Callable[..., Path], tmp_path: Path, limited_sim: RunningSimulator, server: RedisServer
) -> None:
    runs = start(manifests(write, 3), tmp_path, limited_sim, "--redis", server.url, "--concurrency", "32")
    with server.monitor() as commands:  # every command the runs sent to Redis, keys and values
        outcomes = [run.finish() for run in runs]
    assert [code for code, _, _ in outcomes] == [0, 0, 0], outcomes
    rate, refused = rate_and_refusals(limited_sim)
    assert 0.95 * N <= rate <= 1.05 * N, (rate, refused)
    # with the rate shared, 0-0.3% of requests are refused on a quiet machine and 1.6-2.2% on one whose
    # cores are starved (the runs' requests bunch into the simulator's one-second window); without it,
    # each run pacing itself to the whole limit, 30-64% (BENCHMARKS.md, "Three runs on one key")
    assert refused < 0.05, refused
    for i in range(3):
        assert len(results(tmp_path / f"out{i}")) == TASKS
    sent = commands.read_text()
    assert ":ep:requests" in sent and ":ep:inflight" in sent and "EVALSHA" in sent, sent[:2000]
    for piece in {KEY, KEY[:8], KEY[-8:], KEY[5:13]}:  # neither the key nor any piece of it
        assert piece not in sent
    assert not any(KEY[:8] in key or KEY[:8] in value for key, value in server.dump().items())


@needs_redis
@pytest.mark.timeout(60)
def test_redis_killed_mid_run_the_runs_finish_on_their_own_limits(
    write: Callable[..., Path], tmp_path: Path, limited_sim: RunningSimulator, server: RedisServer
) -> None:
    # 15 requests shared through Redis, then 25 with it gone (the rate test needs 120, not this one)
    tasks = TASKS // 2
    runs = start(manifests(write, 2, tasks), tmp_path, limited_sim, "--redis", server.url)
    limited_sim.state.wait_for_sync(lambda state: state.requests_total >= 15, within=30)
    server.kill()
    outcomes = [run.finish() for run in runs]
    assert [code for code, _, _ in outcomes] == [0, 0], outcomes
    for i, (_, _, err) in enumerate(outcomes):
        assert len(results(tmp_path / f"out{i}")) == tasks
        warnings = [line for line in err.splitlines() if "WARNING" in line and "Redis" in line]
        assert len(warnings) == 1, err
        assert server.url in warnings[0] and "own limits" in warnings[0]


def test_redis_unreachable_at_start_exits_78_naming_it_without_its_password(
    write: Callable[..., Path], tmp_path: Path, limited_sim: RunningSimulator
) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    [run] = start(manifests(write, 1), tmp_path, limited_sim, "--redis", url)
    code, out, err = run.finish()
    assert code == 78, err
    assert f"redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in err and "hunter2" not in out + err
    assert limited_sim.state.requests_total == 0
    assert not results(tmp_path / "out0")  # nothing was sent, nothing recorded


@needs_redis
@pytest.mark.timeout(60)
def test_a_429s_retry_after_pauses_the_whole_run_and_is_shared(
    write: Callable[..., Path], tmp_path: Path, server: RedisServer
) -> None:
    # Half a second a Retry-After, and no backoff of the run's own: the waits are the Retry-After's alone
    # (a backoff's jitter, doubling on a task refused again, drew up to 3.4 s: most of the test's time)
    pause = 0.5
    config = SimConfig(api_key=KEY, rate_429=0.2, retry_after=pause, seed=3, latency=0.2)
    with simulator_in_thread(config) as sim, server.monitor() as commands:
        [run] = [
            Run(path, tmp_path / "out", sim, "--redis", server.url, "-c", "2", *FAST)
            for path in manifests(write, 1, 12)
        ]
        code, _, err = run.finish()
    assert code == 0, err
    records = sorted(sim.state.records, key=lambda record: record.time)
    refusals = [record.time for record in records if record.status == 429]
    assert refusals, "the simulator refused nothing"
    for refused in refusals:  # every worker waits out the Retry-After, not just the one refused
        # (a request already on its way when the 429 came may arrive just after it)
        after = [record.time for record in records if refused + 0.05 < record.time < refused + 0.9 * pause]
        assert not after, (refused, after)
    assert ":ep:cooldown" in commands.read_text() and f'"PX" "{pause * 1000:g}"' in commands.read_text()
