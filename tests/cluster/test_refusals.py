"""What submit and worker refuse, and what they leave behind then: nothing queued, or the shard requeued."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import redis

from batch.cluster.plan import read_plan
from tests.conftest import KEY, Outcome
from tests.redis_server import free_port

JOB = "tasks:\n" + "".join(
    f"  - {{kind: chat, id: q-{i}, model: gemini-2.5-flash, prompt: question {i}}}\n" for i in range(4)
)


def test_flags_that_count_a_whole_run_are_refused(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], redis_url: str
) -> None:
    out = tmp_path / "out"
    done = cli(
        "submit",
        write(JOB),
        "--out",
        out,
        "--redis",
        redis_url,
        "--max-cost",
        "5",
        env={"MAAS_ENDPOINT": "ep"},
    )
    assert done.code == 64, done.err
    assert "--max-cost" in done.err
    assert redis.Redis.from_url(redis_url).keys("*") == []
    assert not out.exists()


def test_rerun_changed_is_refused_for_a_sharded_batch(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], redis_url: str
) -> None:
    out = tmp_path / "out"
    flags = ("--out", out, "--redis", redis_url, "--rerun-changed")
    done = cli("submit", write(JOB), *flags, env={"MAAS_ENDPOINT": "ep"})
    assert done.code == 64, done.err
    assert "--rerun-changed: not for a sharded batch yet" in done.err and "count alone" not in done.err
    assert redis.Redis.from_url(redis_url).keys("*") == []
    assert not out.exists()


def test_a_worker_without_redis_exits_78(cli: Callable[..., Outcome]) -> None:
    done = cli(
        "worker", "--redis", f"redis://127.0.0.1:{free_port()}/0", "--burst", env={"MAAS_API_KEY": KEY}
    )
    assert done.code == 78, done.err
    assert "Redis" in done.err


def test_a_manifest_changed_since_submit_stops_the_worker_and_keeps_the_shard(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], redis_url: str
) -> None:
    job = write(JOB)
    out = tmp_path / "out"
    assert cli("submit", job, "--out", out, "--redis", redis_url, env={"MAAS_ENDPOINT": "ep"}).code == 0
    job.write_text(JOB.replace("id: q-3", "id: q-3b"), encoding="utf-8")  # same count, another task
    done = cli(
        "worker",
        "--redis",
        redis_url,
        "--burst",
        env={"MAAS_API_KEY": KEY, "MAAS_BASE_URL": "http://127.0.0.1:9"},
    )
    assert done.code == 65, done.err
    assert "changed since it was submitted" in done.err
    client = redis.Redis.from_url(redis_url)
    assert client.llen(f"maas-batch:{read_plan(out).queue}") == 1  # requeued, for a fixed manifest


def test_a_run_into_a_submitted_batch_is_refused_before_it_sends(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], redis_url: str
) -> None:
    """Its results are in shards/: `run` read none of them, bought every task again, and status and
    report, which read the shards, never counted what it spent."""
    job = write(JOB)
    out = tmp_path / "out"
    assert cli("submit", job, "--out", out, "--redis", redis_url, env={"MAAS_ENDPOINT": "ep"}).code == 0
    env = {"MAAS_API_KEY": KEY, "MAAS_ENDPOINT": "ep", "MAAS_BASE_URL": "http://127.0.0.1:9/v1/ai"}
    for flags in ((), ("--dry-run",)):
        done = cli("run", job, "--out", out, *flags, env=env)
        assert done.code == 64 and "holds a batch submitted in shards" in done.err, done.err
        assert f"maas-batch retry-failed {out} --redis URL" in done.err
    assert not (out / "results.jsonl").exists() and not (out / "runs").exists()
