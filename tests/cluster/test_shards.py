"""Shards on a real Dramatiq/Redis queue, run by worker processes against the simulator: nothing lost,
nothing run twice by live workers, and a killed worker's shard finished by another with no more paid
duplicates than it had in flight."""

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

from batch.cluster.plan import read_plan, shard_dir
from batch.output.runlog import account
from batch.output.store import RUNS, finished_results
from batch.simulator import RunningSimulator, SimConfig, simulator_in_thread
from tests.cluster.conftest import maas
from tests.conftest import KEY, Outcome, ledger

TASKS = 12
SHARD = 4
HEARTBEAT = "1"  # seconds: a killed worker's shard is taken over this fast


def manifest(write: Callable[..., Path], tasks: int = TASKS) -> Path:
    return write(
        "tasks:\n"
        + "".join(
            f"  - {{kind: chat, id: q-{i}, model: gemini-2.5-flash, prompt: question {i}}}\n"
            for i in range(tasks)
        )
    )


def sim_env(sim: RunningSimulator) -> dict[str, str]:
    return {"MAAS_BASE_URL": sim.base_url, "MAAS_ENDPOINT": "ep"}


def all_results(out: Path) -> Counter[str]:
    """Each task id with how many result lines it has, across the shards."""
    found: Counter[str] = Counter()
    for index in range(len(read_plan(out).shards)):
        found.update(task_id for task_id, _ in finished_results(shard_dir(out, index) / "results.jsonl"))
    return found


def billed(sim: RunningSimulator) -> Counter[str]:
    """Each task id with the requests the simulator billed for it."""
    return Counter(r.task_id for r in sim.state.records if r.billed_tokens > 0 and r.task_id)


def everything_in(client: redis.Redis) -> bytes:
    """Every key and value Redis holds."""
    found = []
    for key in client.keys("*"):
        found.append(key)
        kind = client.type(key)
        if kind == b"hash":
            found += [b"%s=%s" % item for item in client.hgetall(key).items()]
        elif kind == b"list":
            found += client.lrange(key, 0, -1)
        elif kind == b"set":
            found += client.smembers(key)
        elif kind == b"zset":
            found += client.zrange(key, 0, -1)
        elif kind == b"string":
            found.append(client.get(key) or b"")
    return b"\n".join(found)


def submit(
    cli: Callable[..., Outcome], job: Path, out: Path, url: str, sim: RunningSimulator, *flags: str
) -> None:
    done = cli(
        "submit",
        job,
        "--out",
        out,
        "--redis",
        url,
        "--shard-size",
        SHARD,
        *flags,
        env={"MAAS_API_KEY": KEY, **sim_env(sim)},
    )
    assert done.code == 0, done.err


def worker(url: str, sim: RunningSimulator, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    return maas(
        "worker", "--redis", url, "--heartbeat-timeout", HEARTBEAT, *flags, env_extra=sim_env(sim), log=log
    )


def test_submit_refuses_an_invalid_manifest_and_queues_nothing(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], redis_url: str
) -> None:
    bad = write("tasks:\n  - {kind: chat, id: a, model: gemini-2.5-flash, prompt: x, temprature: 3}\n")
    out = tmp_path / "out"
    done = cli("submit", bad, "--out", out, "--redis", redis_url, env={"MAAS_ENDPOINT": "ep"})
    assert done.code == 65, done.err
    assert "temprature" in done.err
    assert redis.Redis.from_url(redis_url).keys("*") == []
    assert not (out / "cluster" / "plan.json").exists()


def test_submit_refuses_an_unreachable_redis(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome]
) -> None:
    from tests.redis_server import free_port

    url = f"redis://:secret-pw@127.0.0.1:{free_port()}/0"
    done = cli(
        "submit", manifest(write), "--out", tmp_path / "out", "--redis", url, env={"MAAS_ENDPOINT": "ep"}
    )
    assert done.code == 78, done.err
    assert "secret-pw" not in done.err
    assert not (tmp_path / "out" / "cluster" / "plan.json").exists()


def test_two_workers_run_every_task_once_and_keep_no_key(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], redis_url: str
) -> None:
    out = tmp_path / "out"
    # each shard takes longer than the heartbeat timeout: a live worker's shard must not be taken over
    with simulator_in_thread(SimConfig(api_key=KEY, latency=0.35)) as sim:
        submit(cli, manifest(write), out, redis_url, sim, "--concurrency", "1", "--no-gallery")
        workers = [worker(redis_url, sim, tmp_path / f"w{i}.log", "--burst") for i in range(2)]
        codes = [w.wait(60) for w in workers]
        logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
        assert codes == [0, 0], logs
        results = all_results(out)
        assert sorted(results) == sorted(f"q-{i}" for i in range(TASKS))
        assert set(results.values()) == {1}
        lines = sum(len(ledger(shard_dir(out, k))) for k in range(len(read_plan(out).shards)))
        assert lines == sim.state.billed_requests == TASKS
        for k in range(len(read_plan(out).shards)):  # each shard run once: never handed to a second worker
            assert len(list((shard_dir(out, k) / RUNS).iterdir())) == 1, logs
    status = cli("status", out, "--json")
    found = json.loads(status.out)
    assert (found["succeeded"], found["pending"], found["shards"]["done"]) == (TASKS, 0, 3)
    # the key is in no message, no plan, no log
    stored = everything_in(redis.Redis.from_url(redis_url))
    assert KEY.encode() not in stored
    assert KEY not in (out / "cluster" / "plan.json").read_text()
    assert all(KEY not in text for text in logs)


@pytest.mark.timeout(90)
def test_a_killed_workers_shard_is_finished_by_another(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], redis_url: str
) -> None:
    out = tmp_path / "out"
    concurrency = 2
    with simulator_in_thread(SimConfig(api_key=KEY, latency=0.3)) as sim:
        submit(cli, manifest(write), out, redis_url, sim, "--concurrency", str(concurrency), "--no-gallery")
        doomed = worker(redis_url, sim, tmp_path / "doomed.log")
        deadline = time.monotonic() + 30
        while not any(finished_results(shard_dir(out, 0) / "results.jsonl")):  # mid-shard
            assert time.monotonic() < deadline and doomed.poll() is None, (
                tmp_path / "doomed.log"
            ).read_text()
            time.sleep(0.02)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        # The requests the killed worker had in flight keep their slots of the key's shared budget until
        # their leases lapse (15 s; tests/running/test_shared.py holds that they do): the survivor runs
        # with slots of its own beside them rather than wait, which is not what this test is about.
        survivor = worker(
            redis_url, sim, tmp_path / "survivor.log", "--burst", "--concurrency", str(2 * concurrency)
        )
        assert survivor.wait(60) == 0, (tmp_path / "survivor.log").read_text()
        results = all_results(out)
        assert sorted(results) == sorted(f"q-{i}" for i in range(TASKS))
        assert set(results.values()) == {1}, "exactly one result per task"
        paid = billed(sim)
        duplicates = sum(paid.values()) - len(paid)
        # what the killed worker had not saved: requests of its run in flight, or answered and not yet
        # written as a result (its attempt log's `done` line follows the result line)
        in_flight = account(shard_dir(out, 0) / RUNS).maybe_billed
        assert duplicates <= in_flight
        lines = sum(len(ledger(shard_dir(out, k))) for k in range(len(read_plan(out).shards)))
        # every billed answer is in the ledger, or among those (a kill between the ledger line and the
        # result line leaves one in both)
        assert lines <= sim.state.billed_requests
        assert sim.state.billed_requests - lines <= in_flight
        assert "shard 0 of" in (tmp_path / "survivor.log").read_text()  # taken over, not left behind
    found = json.loads(cli("status", out, "--json").out)
    assert (found["succeeded"], found["pending"], found["maybe_billed"]) == (TASKS, 0, in_flight)
    assert found["shards"] == {"total": 3, "pending": 0, "running": 0, "done": 3}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_requeues_the_shard_after_its_requests_in_flight(
    signum: int, write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], redis_url: str
) -> None:
    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY, latency=0.3)) as sim:
        submit(cli, manifest(write, SHARD), out, redis_url, sim, "--concurrency", "1", "--no-gallery")
        first = worker(redis_url, sim, tmp_path / "first.log")
        deadline = time.monotonic() + 30
        while sim.state.requests_total == 0:
            assert time.monotonic() < deadline and first.poll() is None, (tmp_path / "first.log").read_text()
            time.sleep(0.02)
        first.send_signal(signum)
        assert first.wait(30) == 75, (tmp_path / "first.log").read_text()
        done_first = sum(1 for _ in finished_results(shard_dir(out, 0) / "results.jsonl"))
        assert 1 <= done_first < SHARD  # the request in flight finished and was saved; no more were sent
        # requeued at once (no heartbeat timeout to wait for): a burst worker finds it queued
        assert redis.Redis.from_url(redis_url).llen(f"maas-batch:{read_plan(out).queue}") == 1
        second = worker(redis_url, sim, tmp_path / "second.log", "--burst")
        assert second.wait(60) == 0, (tmp_path / "second.log").read_text()
        assert sorted(all_results(out).values()) == [1] * SHARD
        assert sim.state.billed_requests == SHARD  # nothing paid twice
