"""Faults at scale (issue 15): a batch in S3 (moto on loopback), three workers on a real Redis against a
simulator that fails some requests and takes N a second from the key. One worker is killed with SIGKILL,
another later; then Redis is flushed, and `submit --resume` rebuilds the queue from the store alone, for
two new workers.

Nothing lost (every task exactly one result), nothing paid twice beyond what the killed workers had not
saved, an exact ledger, and the shared rate limit held throughout."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from batch.output.remote import unmerged
from batch.simulator import RunningSimulator, SimConfig, simulator_in_thread
from tests.cluster.conftest import maas
from tests.cluster.test_shards import HEARTBEAT, billed, sim_env
from tests.conftest import KEY, Outcome
from tests.s3_server import S3

pytestmark = pytest.mark.timeout(120)

TASKS = 48
SHARD = 6
N = 10  # requests a second the simulator takes from the key; every worker runs with --rpm 60*N
# Requests in flight, shared by every worker through Redis: a killed worker's slots come back only when its
# leases lapse (15 s), so the others keep some to go on with meanwhile.
CONCURRENCY = 6


def segments(s3: S3, folder: str) -> list[bytes]:
    """The segment objects of every shard's `folder` (results, usage), without those a merged segment holds
    (the layout's rule: README, "Outputs on S3"); listed again if a merge removed one meanwhile. Before any
    shard has written, s3fs's find() names the prefix itself, which is no object: the filter passes it."""
    for _ in range(5):
        s3.fs.invalidate_cache()
        folders: dict[str, list[str]] = {}
        for name in s3.fs.find(f"{s3.bucket}/out/shards"):
            if f"/{folder}/" in name:
                parent, _, segment = name.rpartition("/")
                folders.setdefault(parent, []).append(segment)
        try:
            return [
                s3.fs.cat_file(f"{parent}/{segment}")
                for parent, names in folders.items()
                for segment in unmerged(sorted(names))
            ]
        except FileNotFoundError:
            continue
    raise AssertionError(f"the store's {folder} segments kept changing while read")


def store_results(s3: S3) -> Counter[str]:
    """Each task id with how many result lines the store holds for it, over every shard's segments."""
    found: Counter[str] = Counter()
    for data in segments(s3, "results"):
        found.update(json.loads(line)["id"] for line in data.decode().splitlines() if line.strip())
    return found


def store_ledger(s3: S3) -> int:
    return sum(len(data.splitlines()) for data in segments(s3, "usage"))


def start_worker(url: str, sim: RunningSimulator, log: Path, s3: S3) -> subprocess.Popen[bytes]:
    env = {**sim_env(sim), **s3.env}
    return maas("worker", "--redis", url, "--heartbeat-timeout", HEARTBEAT, "--burst", env_extra=env, log=log)


def wait_for(what: Callable[[], bool], logs: list[Path], seconds: float = 60) -> None:
    """Wait until `what()`. It reads every segment of the store: asked 20 times a second, it held the GIL
    this process shares with the simulator's thread so often that requests sent a tenth of a second
    apart were handled, and so counted, together (busiest_second 13 once, under a loaded CI)."""
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "\n".join(log.read_text() for log in logs if log.exists())
        time.sleep(0.5)


def busiest_second(sim: RunningSimulator) -> int:
    """The most requests that reached the simulator within any one second."""
    moments = sorted(record.time for record in sim.state.records if record.kind == "chat")
    most, first = 0, 0
    for last, moment in enumerate(moments):
        while moments[first] < moment - 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_three_workers_two_killed_redis_flushed_then_resumed_from_the_store(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], redis_url: str, s3: S3
) -> None:
    job = write(
        "tasks:\n"
        + "".join(
            f"  - {{kind: chat, id: q-{i}, model: gemini-2.5-flash, prompt: question {i}}}\n"
            for i in range(TASKS)
        )
    )
    config = SimConfig(api_key=KEY, latency=0.25, latency_jitter=0.5, error_rate=0.1, rps=N, seed=15)
    logs = [tmp_path / f"worker-{name}.log" for name in ("a", "b", "c", "d", "e")]
    with simulator_in_thread(config) as sim:
        env = {**sim_env(sim), **s3.env}
        flags = ("--shard-size", str(SHARD), "--concurrency", str(CONCURRENCY), "--rpm", str(60 * N))
        done = cli("submit", job, "--out", s3.url, "--redis", redis_url, *flags, env=env)
        assert done.code == 0, done.err
        a, b, c = (start_worker(redis_url, sim, log, s3) for log in logs[:3])
        wait_for(lambda: len(store_results(s3)) >= SHARD, logs)
        a.send_signal(signal.SIGKILL)  # mid-run: it holds a shard with requests in flight
        wait_for(lambda: len(store_results(s3)) >= 3 * SHARD, logs)
        b.send_signal(signal.SIGKILL)
        assert a.wait(10) == -signal.SIGKILL and b.wait(10) == -signal.SIGKILL
        redis.Redis.from_url(redis_url).flushall()  # the queue is lost: the killed workers' shards with it
        assert c.wait(60) == 0, logs[2].read_text()  # finishes its shard; then the queue is empty
        assert len(store_results(s3)) < TASKS, "the lost shards are still missing"

        resumed = cli("submit", "--resume", s3.url, "--redis", redis_url, env=env)
        assert resumed.code == 0, resumed.err
        assert "queued again" in resumed.out
        # two workers for the 4 shards left: one ran them one after another (each shard's run starts, pulls
        # and pushes on its own), the half of the test's time
        d, e = (start_worker(redis_url, sim, log, s3) for log in logs[3:])
        assert d.wait(60) == 0, logs[3].read_text()
        assert e.wait(60) == 0, logs[4].read_text()

        results = store_results(s3)
        assert sorted(results) == sorted(f"q-{i}" for i in range(TASKS))
        assert set(results.values()) == {1}, "exactly one result per task"
        status = cli("status", s3.url, "--json", env=s3.env)
        assert status.code == 0, status.err
        found = json.loads(status.out)
        assert (found["succeeded"] + found["failed"], found["pending"]) == (TASKS, 0)
        maybe_billed = found["maybe_billed"]  # the killed workers' requests with no answer in the store
        paid = billed(sim)
        duplicates = sum(paid.values()) - len(paid)
        assert duplicates <= maybe_billed
        ledger = store_ledger(s3)
        assert ledger <= sim.state.billed_requests
        assert sim.state.billed_requests - ledger <= maybe_billed  # only what the kills left unsaved
        assert found["billed_answers"] == ledger
        # the shared limit held, across five workers, two kills and a flushed Redis
        refused = sum(record.status == 429 for record in sim.state.records)
        assert busiest_second(sim) <= N + 2, f"{refused} answered 429"
        assert refused <= 2, refused
