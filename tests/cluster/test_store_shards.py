"""A sharded batch in a store (`submit --out s3://...`): the plan is an object created once, each worker runs
a shard in a local staging folder mirrored into PREFIX/shards/<k>/, and `status URL` adds the shards up.
Against a real Redis, moto's S3 on loopback and the simulator."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.simulator import SimConfig, simulator_in_thread
from tests.cluster.test_shards import SHARD, TASKS, billed, manifest, submit, worker
from tests.conftest import KEY, Outcome
from tests.s3_server import S3

pytestmark = pytest.mark.timeout(90)


def test_a_worker_runs_a_batch_into_the_store(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], redis_url: str, store: S3
) -> None:
    s3 = store  # S3 (moto), then Azure Blob (Azurite)
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


def test_a_worker_taken_for_dead_stops_the_shard_its_successor_runs(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], redis_url: str, s3: S3
) -> None:
    """A worker silent past its heartbeat timeout (SIGSTOP here: a machine suspended, a long pause) has
    its shard given to another. On a store no lock keeps the two apart: the first, once it wakes, learns
    at its next beat that the shard is no longer its own and stops it, rather than pay beside its
    successor for every task left. What both paid: its requests in flight, a beat's worth at most."""
    # 24 tasks: about 19 left to the successor, near 3 s of its run for the first to wake in and learn
    # (within a beat, 0.25 s) that the shard is no longer its own; and as many it would pay for again if not
    tasks, concurrency = 24, 2
    with simulator_in_thread(SimConfig(api_key=KEY, latency=0.3)) as sim:
        flags = ("--shard-size", str(tasks), "--concurrency", str(concurrency))
        submit(cli, manifest(write, tasks), s3.url, redis_url, sim, *flags)  # type: ignore[arg-type]
        first = worker(redis_url, sim, tmp_path / "first.log", "--burst")
        sim.state.wait_for_sync(lambda state: state.requests_total >= 4, within=60)
        os.kill(first.pid, signal.SIGSTOP)
        try:
            second = worker(redis_url, sim, tmp_path / "second.log", "--burst")
            deadline = time.monotonic() + 30
            while "shard 0 of" not in (tmp_path / "second.log").read_text():  # taken over
                assert time.monotonic() < deadline and second.poll() is None, (
                    tmp_path / "second.log"
                ).read_text()
                time.sleep(0.02)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert second.wait(60) == 0, (tmp_path / "second.log").read_text()
        assert first.wait(60) == 0, (tmp_path / "first.log").read_text()
        paid = billed(sim)
    assert len(paid) == tasks
    duplicates = sum(paid.values()) - len(paid)
    assert duplicates <= 3 * concurrency, (duplicates, (tmp_path / "first.log").read_text())
    assert "was given to another worker" in (tmp_path / "first.log").read_text()
    status = cli("status", s3.url, "--json", env=s3.env)
    found = json.loads(status.out)
    assert (found["succeeded"], found["pending"]) == (tasks, 0), status.err


@pytest.mark.parametrize(
    ("ending", "kept"),
    [
        ("done", False),
        ("store failed", True),
        ("stopped, store failed", True),
        ("crashed", True),
        ("crashed before sending", False),
        ("refused", False),
        ("refused by the store's own files", False),
    ],
)
def test_a_shard_keeps_its_staging_folder_only_when_it_may_hold_what_the_store_lacks(
    ending: str, kept: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's shard on a store runs in a temporary folder: removed when the shard ran to its end or
    was refused (or crashed) before its mirror started; kept (and its path logged) when, after that, the
    store or the disk stopped it or it crashed, since it may hold paid answers not uploaded yet."""
    from batch.cluster import shard as shard_module
    from batch.cluster.plan import Shard
    from batch.errors import ManifestError, OutputError
    from batch.output import remote
    from batch.running.summary import RunSummary

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # mkdtemp reads TMPDIR again
    monkeypatch.setattr(remote, "open_store", lambda url: remote.Store(url, None, "bucket/out"))
    monkeypatch.setattr(remote, "pull", lambda store, folder: None)
    monkeypatch.setattr(shard_module, "read_plan_from_store", lambda store: None)

    def run_into(plan: object, shard: object, folder: Path, url: str) -> RunSummary:
        if ending == "crashed before sending":
            raise RuntimeError("a fault of ours, before the mirror started")
        if ending == "refused":
            raise ManifestError([])
        if ending == "refused by the store's own files":  # a .format of a newer version, say: exit 74
            raise OutputError("the ids of s3://bucket/out are made by scheme 99")
        remote.mark_started(folder)  # the mirror started (Mirror.start): from now on it may send
        if ending == "store failed":  # its last push failed: no mark of a complete mirror
            return RunSummary(stop_code=74, stop_reason="cannot write s3://bucket/out/results/...")
        if ending == "stopped, store failed":  # another stop came first: the exit code is not 74
            return RunSummary(stop_code=75, stop_reason="the worker was told to stop")
        if ending == "crashed":
            raise RuntimeError("a fault of ours")
        (folder / remote.MIRRORED).touch()  # the last push left nothing behind (Job._last_push)
        return RunSummary()

    runner = shard_module.ShardRunner(lambda plan: None)  # type: ignore[arg-type, return-value]
    monkeypatch.setattr(runner, "_run_into", run_into)
    with contextlib.suppress(RuntimeError, ManifestError, OutputError):
        runner.run(Shard("s3://bucket/out", 3, 0, 6))
    left = list(tmp_path.glob("maas-batch-shard-3-*"))
    assert (len(left) == 1) is kept, left
