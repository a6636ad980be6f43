"""A sharded batch in a store (`submit --out s3://...`): the plan is an object created once, each worker runs
a shard in a local staging folder mirrored into PREFIX/shards/<k>/, and `status URL` adds the shards up.
Against a real Redis, moto's S3 on loopback and the simulator."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.simulator import SimConfig, simulator_in_thread
from tests.cluster.test_shards import SHARD, TASKS, manifest, submit, worker
from tests.conftest import KEY, Outcome
from tests.s3_server import S3

pytestmark = pytest.mark.timeout(90)


def test_a_worker_runs_a_batch_into_the_store(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], redis_url: str, s3: S3
) -> None:
    with simulator_in_thread(SimConfig(api_key=KEY, latency=0.05)) as sim:
        submit(cli, manifest(write), s3.url, redis_url, sim, "--concurrency", "2")  # type: ignore[arg-type]
        again = cli(
            "submit", manifest(write), "--out", s3.url, "--redis", redis_url, env={"MAAS_ENDPOINT": "ep"}
        )
        assert again.code == 64 and "already holds a submitted batch" in again.err
        # one worker: sharing shards between workers is the queue's, tested on a folder (test_shards)
        code = worker(redis_url, sim, tmp_path / "w.log", "--burst").wait(60)
        assert code == 0, (tmp_path / "w.log").read_text()
        objects = s3.objects()
        results = Counter(
            json.loads(line)["id"]
            for name, data in objects.items()
            if name.startswith("shards/") and "/results/" in name
            for line in data.decode().splitlines()
        )
        assert sorted(results) == sorted(f"q-{i}" for i in range(TASKS)) and set(results.values()) == {1}
        ledger = [name for name in objects if name.startswith("shards/") and "/usage/" in name]
        assert sum(len(objects[name].splitlines()) for name in ledger) == sim.state.billed_requests == TASKS
        assert "cluster/plan.json" in objects
        assert all(KEY.encode() not in data for data in objects.values())
    status = cli("status", s3.url, "--json", env=s3.env)
    assert status.code == 0, status.err
    found = json.loads(status.out)
    assert (found["succeeded"], found["pending"], found["shards"]["done"]) == (TASKS, 0, TASKS // SHARD)
    assert found["directory"] == s3.url
