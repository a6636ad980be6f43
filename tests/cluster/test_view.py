"""One view of a sharded batch: report, export, gallery and retry-failed over every shard as over one run
directory; status with the queue's side (workers alive, shards queued and taken); submit --resume
rebuilding a lost queue from the outputs alone."""

from __future__ import annotations

import csv
import io
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from batch.cluster.plan import Shard, read_plan, shard_dir
from batch.cluster.queue import QueueState
from batch.cluster.view import SUMMED, queue_summary, shard_status
from batch.output.store import finished_results
from batch.simulator import RunningSimulator, SimConfig, simulator_in_thread
from tests.cluster.conftest import maas
from tests.conftest import KEY, Outcome
from tests.output.test_gallery import page_data

# five tasks in three shards of two; q-3 is refused by the simulator's safety system (it fails for good)
IDS = ["q-0", "img", "q-2", "q-3", "q-4"]


def manifest(write: Callable[..., Path]) -> Path:
    return write("""
        tasks:
          - {kind: chat, id: q-0, model: gemini-2.5-flash, prompt: question 0}
          - {kind: generate, id: img, prompt: a calm lake}
          - {kind: chat, id: q-2, model: gemini-2.5-flash, prompt: question 2}
          - {kind: chat, id: q-3, model: gemini-2.5-flash, prompt: something forbidden}
          - {kind: chat, id: q-4, model: gemini-2.5-flash, prompt: question 4}
    """)


def env(sim: RunningSimulator) -> dict[str, str]:
    return {"MAAS_API_KEY": KEY, "MAAS_BASE_URL": sim.base_url, "MAAS_ENDPOINT": "ep"}


def submitted(
    cli: Callable[..., Outcome], job: Path, out: Path, url: str, sim: RunningSimulator, *flags: str
) -> None:
    done = cli(
        "submit", job, "--out", out, "--redis", url, "--shard-size", "2", "--no-gallery", *flags, env=env(sim)
    )
    assert done.code == 0, done.err


def work(cli: Callable[..., Outcome], url: str, sim: RunningSimulator) -> None:
    """A burst worker in this process: every shard queued now is run."""
    done = cli("worker", "--redis", url, "--burst", "--quiet", env=env(sim))
    assert done.code == 0, done.err


@pytest.mark.timeout(60)
def test_report_export_and_gallery_read_every_shard_in_manifest_order(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], redis_url: str
) -> None:
    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        submitted(cli, manifest(write), out, redis_url, sim)
        before = list(csv.DictReader(io.StringIO(cli("export", out).out)))
        assert [(r["id"], r["status"]) for r in before] == [(i, "pending") for i in IDS]
        assert before[3]["prompt"] == "something forbidden"  # pending tasks come with their prompts
        work(cli, redis_url, sim)
    rows = list(csv.DictReader(io.StringIO(cli("export", out).out)))
    assert [r["id"] for r in rows] == IDS
    assert [r["status"] for r in rows] == ["succeeded"] * 3 + ["failed", "succeeded"]
    [image] = rows[1]["files"].split(";")
    assert image.startswith("shards/0/images/") and (out / image).is_file()  # named from DIR
    failed = cli("export", out, "--status", "failed", "--format", "jsonl")
    assert [json.loads(line)["id"] for line in failed.out.splitlines()] == ["q-3"]
    chats = list(csv.DictReader(io.StringIO(cli("export", out, "--kind", "chat").out)))
    assert [r["id"] for r in chats] == ["q-0", "q-2", "q-3", "q-4"]
    openai = [json.loads(line) for line in cli("export", out, "--format", "openai").out.splitlines()]
    assert [line["custom_id"] for line in openai] == IDS
    assert openai[1]["response"]["body"]["data"][0]["b64_json"]  # the image read back from its shard
    database = tmp_path / "batch.sqlite"
    assert cli("export", out, "--format", "sqlite", "--output", database).code == 0
    with sqlite3.connect(database) as db:
        assert [r[0] for r in db.execute("SELECT id FROM results ORDER BY position")] == IDS
        assert db.execute("SELECT count(*) FROM usage").fetchone() == (4,)  # every shard's ledger
        assert db.execute("SELECT count(*) FROM attempts").fetchone() == (5,)

    found = json.loads(cli("report", out, "--json").out)
    assert (found["tasks"], found["succeeded"], found["failed"], found["pending"]) == (5, 4, 1, 0)
    assert found["by_kind"]["chat"]["answers"] == 3 and found["by_kind"]["generate"]["answers"] == 1
    assert found["failures"]["moderation_blocked"]["count"] == 1 and found["runs"] == 3
    assert [(s["succeeded"], s["failed"]) for s in found["per_shard"]] == [(2, 0), (1, 1), (1, 0)]
    assert found["cost"] == pytest.approx(sum(s["cost"] for s in found["per_shard"]))
    assert "shard 1: 1 succeeded, 1 failed" in cli("report", out).out

    made = shard_dir(out, 0) / "thumbs" / (Path(image).name + ".webp")  # as its shard's run makes them
    made.parent.mkdir()
    made.write_bytes(b"made by the shard's run")
    page = cli("gallery", out)
    assert page.code == 0, page.err
    data = page_data(out / "index.html")
    assert data["total"] == 5
    cards = {item["id"]: item for item in data["items"]}
    assert any(name.startswith("shards/0/images/") for card in cards.values() for name in card["files"])
    assert any(thumb and thumb.startswith("thumbs/") for card in cards.values() for thumb in card["thumbs"])
    assert (out / "thumbs" / made.name).read_bytes() == made.read_bytes()  # copied, not made again

    with (shard_dir(out, 0) / "results.jsonl").open("a") as results:  # a task no longer in the manifest
        results.write(
            json.dumps({"id": "gone", "kind": "chat", "status": "succeeded", "files": ["x.png"]}) + "\n"
        )
    assert [r["id"] for r in csv.DictReader(io.StringIO(cli("export", out).out))] == IDS
    (out / "cluster" / "order.ids").unlink()  # a batch an older submit wrote: the manifest is walked
    walked = cli("export", out, "--format", "jsonl").out.splitlines()
    assert [json.loads(line)["id"] for line in walked] == IDS
    every = [
        json.loads(line)
        for line in cli("export", out, "--format", "jsonl", "--include-orphaned").out.splitlines()
    ]
    assert [r["id"] for r in every] == [*IDS, "gone"] and every[-1]["files"] == ["shards/0/x.png"]
    (shard_dir(out, 2) / "results.jsonl").unlink()  # the last shard not run yet: its task is pending
    rows = list(csv.DictReader(io.StringIO(cli("export", out).out)))
    assert [(r["id"], r["status"]) for r in rows][2:] == [
        ("q-2", "succeeded"),
        ("q-3", "failed"),
        ("q-4", "pending"),
    ]
    assert rows[4]["prompt"] == "question 4"


def test_merged_reports_sum_the_shards_failures_and_keep_the_slowest_of_all() -> None:
    from batch.cluster.view import merge_reports

    def one(failed: int, slowest: list[float], pending: int | None) -> dict[str, Any]:
        counts = dict.fromkeys(SUMMED, 1)
        return {
            **counts,
            "pending": pending,
            "include_orphaned": False,
            "cost": 0.5,
            "orphaned_cost": 0.0,
            "run_seconds": 2.0,
            "unpriced_answers": {"m": 1},
            "by_kind": {"chat": {"answers": 1, "tokens": 10, "cost": 0.5}},
            "by_model": {},
            "failures": {"boom": {"count": failed, "status": 500, "example": "x", "example_task": "t"}},
            "slowest": [{"id": f"t{s}", "kind": "chat", "seconds": s} for s in slowest],
        }

    merged = merge_reports([one(2, [1.0, 9.0], 3), one(3, [5.0], 0)])
    assert merged["tasks"] == 2 and merged["pending"] == 3 and merged["cost"] == 1.0
    assert merged["failures"]["boom"]["count"] == 5 and merged["unpriced_answers"] == {"m": 2}
    assert merged["by_kind"]["chat"] == {"answers": 2, "tokens": 20, "cost": 1.0}
    assert [s["seconds"] for s in merged["slowest"]] == [9.0, 5.0, 1.0]
    assert merge_reports([one(1, [], None), one(1, [], 2)])["pending"] is None  # not known for a part


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["folder", "s3"])
def test_retry_failed_queues_the_shards_that_hold_failures(
    where: str,
    write: Callable[..., Path],
    tmp_path: Path,
    cli: Callable[..., Outcome],
    redis_url: str,
    request: pytest.FixtureRequest,
) -> None:
    s3 = request.getfixturevalue("s3") if where == "s3" else None  # its AWS_* settings in the environment
    out: Any = tmp_path / "out" if s3 is None else s3.url
    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        submitted(cli, manifest(write), out, redis_url, sim)
        work(cli, redis_url, sim)
        sent = sim.state.requests_total
        no_redis = cli("retry-failed", out, env=env(sim))
        assert no_redis.code == 64 and "is a sharded batch" in no_redis.err
        assert "--redis URL (or MAAS_REDIS_URL)" in no_redis.err
        assert cli("retry-failed", out, "--redis", redis_url, "--rpm", "5").code == 64
        queued = cli("retry-failed", out, "--redis", redis_url)
        assert queued.code == 0, queued.err
        assert "1 shard(s) holding 1 failed task(s)" in queued.out
        again = cli("retry-failed", out, "--redis", redis_url)  # queued once, not twice
        assert "no shard to queue" in again.out
        status = json.loads(cli("status", out, "--json", "--redis", redis_url).out)
        assert [s["queue"] for s in status["per_shard"]] == ["absent", "queued", "absent"]
        work(cli, redis_url, sim)
        assert sim.state.requests_total == sent + 1  # q-3 alone, sent again
    if s3 is None:
        retried = (shard_dir(out, 1) / "results.retried.jsonl").read_text().splitlines()
    else:  # the failed line moved aside is an object of shard 1's in the store
        retried = [
            line
            for name, data in s3.objects("shards/1/retried").items()
            for line in data.decode().splitlines()
        ]
    assert [json.loads(line)["id"] for line in retried] == ["q-3"]
    # the view of the batch: q-3's new line (refused again) counts, its first one is in the record
    failed = json.loads(cli("status", out, "--json", "--redis", redis_url).out)
    assert (failed["succeeded"], failed["failed"], failed["pending"]) == (4, 1, 0)
    if s3 is not None:  # the batch's gallery, into the store: the image of shard 0 has its thumbnail
        built = cli("gallery", out)
        assert built.code == 0, built.err
        objects = s3.objects()
        [image] = [name for name in objects if name.startswith("shards/0/images/")]
        assert [name for name in objects if name.startswith("thumbs/")] == [f"thumbs/{Path(image).name}.webp"]
        assert b'"shards/0/images/' in objects["index.html"]


@pytest.mark.timeout(60)
def test_a_retry_shard_delivered_twice_sends_its_failures_once(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], redis_url: str
) -> None:
    """A retry message delivered again (its worker paused and taken for dead, then acking a message
    already requeued): the second delivery found the failures of the first, and bought them again. It
    sends only the failures finished up to the moment retry-failed queued it."""
    from batch.cluster.queue import QueueSettings, ShardQueue

    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        submitted(cli, manifest(write), out, redis_url, sim)
        work(cli, redis_url, sim)
        sent = sim.state.requests_total
        assert cli("retry-failed", out, "--redis", redis_url).code == 0
        queue = ShardQueue(QueueSettings(redis_url))
        try:
            [shard] = queue.look(read_plan(out).queue).queued
            assert shard.retry_failed and shard.retry_upto == results_of(out, 1)["q-3"]["finished_at"]
            queue.put(read_plan(out).queue, [shard])  # the same message, once more
        finally:
            queue.close()
        work(cli, redis_url, sim)
        assert sim.state.requests_total == sent + 1  # q-3 (refused again) sent once, not twice
    assert results_of(out, 1)["q-3"]["status"] == "failed"


def results_of(out: Path, index: int) -> dict[str, dict[str, Any]]:
    lines = (shard_dir(out, index) / "results.jsonl").read_text().splitlines()
    return {line["id"]: line for line in map(json.loads, lines)}


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()
        time.sleep(0.02)


@pytest.mark.timeout(90)
def test_status_shows_workers_alive_and_resume_rebuilds_a_lost_queue(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], redis_url: str
) -> None:
    out = tmp_path / "out"
    job = manifest(write)
    client = redis.Redis.from_url(redis_url)
    # a worker on a slow service holds shard 0 for as long as the test looks at it
    with simulator_in_thread(SimConfig(api_key=KEY, latency=3)) as slow:
        # a stopped worker cancels its request in flight at once: shard 0 keeps no result
        submitted(cli, job, out, redis_url, slow, "--concurrency", "1", "--grace", "0.05")
        plan = read_plan(out)
        assert plan.redis == redis_url  # no password in it: see test_the_plan_keeps_no_password
        log = tmp_path / "worker.log"
        worker = maas("worker", "--redis", redis_url, env_extra={"MAAS_BASE_URL": slow.base_url}, log=log)
        try:
            wait_for(lambda: slow.state.requests_total > 0, worker, log)
            found = json.loads(cli("status", out, "--json").out)  # the plan's Redis: no --redis needed
            queue = found["on_queue"]
            assert queue["workers_alive"] == 1 and queue["workers"][0]["pid"] == worker.pid
            assert (queue["queued"], queue["taken"]) == (2, 1)
            assert [s["queue"] for s in found["per_shard"]][1:] == ["queued", "queued"]
            assert found["per_shard"][0]["queue"].endswith(f":{worker.pid}")
            # nothing is lost from the queue: a resume queues nothing (shard 0 is held, 1 and 2 queued)
            resumed = cli("submit", "--resume", out, "--redis", redis_url, env=env(slow))
            assert resumed.code == 0 and "0 of 3 shards queued again" in resumed.out, resumed.err
            assert client.llen(f"maas-batch:{plan.queue}") == 2
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 75, log.read_text()
    assert json.loads(cli("status", out, "--json").out)["on_queue"]["workers_alive"] == 0
    client.flushall()  # Redis lost the queue
    text = cli("status", out).out
    assert "not on the queue (`maas-batch submit --resume DIR` queues it)" in text
    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        resumed = cli("submit", "--resume", out, "--redis", redis_url, env=env(sim))
        assert f"3 of 3 shards queued again on {plan.queue} (0, 1, 2)" in resumed.out, resumed.err
        work(cli, redis_url, sim)
    done = [task_id for k in range(3) for task_id, _ in finished_results(shard_dir(out, k) / "results.jsonl")]
    assert sorted(done) == sorted(IDS)
    client.flushall()
    assert "0 of 3 shards queued again" in cli("submit", "--resume", out, "--redis", redis_url).out
    job.write_text(job.read_text().replace("id: q-4", "id: q-5"))
    changed = cli("submit", "--resume", out, "--redis", redis_url, env={"MAAS_ENDPOINT": "ep"})
    assert changed.code == 65 and "changed since it was submitted" in changed.err
    client.close()


def test_the_plan_keeps_no_password(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome], redis_url: str
) -> None:
    from batch.cluster.queue import without_password

    assert without_password("redis://:pw@host:6379/0") == "redis://host:6379/0"
    assert without_password("redis://user:pw@host/1?password=pw") == "redis://user@host/1"
    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        url = redis_url.replace("redis://", "redis://default:s3cret-pw@")  # any password opens a nopass user
        submitted(cli, manifest(write), out, url, sim)
    assert read_plan(out).redis == redis_url.replace("redis://", "redis://default@")
    assert "s3cret-pw" not in (out / "cluster" / "plan.json").read_text()


def test_a_worker_whose_heartbeat_is_old_is_not_alive_and_its_shard_is_said_so(redis_url: str) -> None:
    from batch.cluster.plan import Shard
    from batch.cluster.queue import HEARTBEATS, WORKERS, QueueSettings, ShardQueue

    client = redis.Redis.from_url(redis_url)
    long_gone = {"host": "gone", "pid": 2, "heartbeat_timeout": 5, "since": time.time() - 51}
    client.hset(WORKERS, "long-gone", json.dumps(long_gone))  # killed, silent for over 10 timeouts
    queue = ShardQueue(QueueSettings(redis_url, heartbeat_timeout=5, maintenance=True))  # as a worker
    try:
        queue.put("q", [Shard("/b", 0, 0, 2), Shard("/b", 1, 2, 4)])
        taken = queue.take("q")  # registered as a worker, and beating; the long gone one forgotten
        assert taken is not None and taken.shard.index == 0
        assert sorted(client.hkeys(WORKERS)) == [queue.broker.broker_id.encode()]
        info = json.dumps({"host": "gone", "pid": 1, "heartbeat_timeout": 5})
        client.hset(WORKERS, "dead-one", info)
        client.zadd(HEARTBEATS, {"dead-one": time.time() * 1000 - 6000})  # silent for 6 s
        client.sadd("maas-batch:__acks__.dead-one.q", taken.message.options["redis_message_id"])
        state = queue.look("q")
        assert list(state.alive) == [queue.broker.broker_id]
        assert [s.index for s in state.queued] == [1] and [s.index for s in state.held()] == [0]
        assert [s.index for s in state.orphaned()] == [0]
    finally:
        queue.close()
    assert client.hkeys(WORKERS) == [b"dead-one"]  # a worker that ends says so
    client.close()


def test_resume_and_retry_never_take_a_live_worker_with_a_longer_heartbeat_timeout_for_dead(
    redis_url: str,
) -> None:
    """A worker started with --heartbeat-timeout 300 beats every 75 s. `submit --resume` and
    `retry-failed` queue with the default 60 s: were they to run Dramatiq's clean-up of dead workers, as
    every worker does on each command, that worker's shard would go back on the queue while it runs, and
    a second worker would pay for its tasks again."""
    from batch.cluster.plan import Shard
    from batch.cluster.queue import HEARTBEATS, QueueSettings, ShardQueue

    client = redis.Redis.from_url(redis_url)
    worker = ShardQueue(QueueSettings(redis_url, heartbeat_timeout=300, maintenance=True))
    resuming = ShardQueue(QueueSettings(redis_url))  # as `submit --resume` makes it
    try:
        worker.put("q", [Shard("/b", 0, 0, 2)])
        taken = worker.take("q")
        assert taken is not None
        client.zadd(HEARTBEATS, {worker.broker.broker_id: time.time() * 1000 - 70_000})  # beat 70 s ago
        for _ in range(20):  # Dramatiq's clean-up runs on a share of commands: give it every chance
            resuming.put("q", [Shard("/b", 1, 2, 4)])
        state = resuming.look("q")
        assert [s.index for s in state.taken.get(worker.broker.broker_id, [])] == [0]
        assert 0 not in [s.index for s in state.queued]
    finally:
        worker.close()
        resuming.close()


def test_a_shard_a_live_worker_has_taken_is_running_its_requests_in_flight(tmp_path: Path) -> None:
    """On a store no lock says a run holds a shard: the queue does. A shard a live worker has taken is
    running, and its requests without an answer yet are in flight, not maybe billed; a dead worker's
    shard is not running."""
    runs = shard_dir(tmp_path, 0) / "runs"
    runs.mkdir(parents=True)
    (runs / "20260101T000000Z-aaaaaa.jsonl").write_text(
        json.dumps({"event": "start", "at": "2026-01-01T00:00:00+00:00"})
        + "\n"
        + json.dumps({"event": "sent", "request_id": "q-0/aaaaaa.1", "task_id": "q-0"})
        + "\n"
    )
    taken = shard_status(tmp_path, 0, 2, taken=True)
    assert (taken["state"], taken["in_flight"], taken["maybe_billed"]) == ("running", 1, 0)
    left = shard_status(tmp_path, 0, 2)  # its worker died: the request may have been billed
    assert (left["state"], left["in_flight"], left["maybe_billed"]) == ("pending", 0, 1)

    shard = [Shard("s3://b/out", k, 2 * k, 2 * k + 2) for k in range(3)]
    state = QueueState(
        queued=[shard[2]],
        taken={"live": [shard[0]], "dead": [shard[1]]},
        alive={"live": {"host": "h", "pid": 7}},
    )
    shards = [{"shard": k} for k in range(3)]
    summary = queue_summary(state, shards)
    assert [s["queue"] for s in shards] == ["taken by h:7", "taken by a dead worker", "queued"]
    assert (summary["taken"], summary["taken_by_dead_workers"]) == (1, 1)
    assert [s.index for s in state.held()] == [0]  # what cluster_status passes on as taken


def test_a_worker_that_sent_a_shard_back_takes_one_again(redis_url: str) -> None:
    """A shard sent back (its folder locked by a run taken for dead): the worker went on taking nothing,
    the batch's shards all queued, and a --burst worker never ended."""
    from batch.cluster.plan import Shard
    from batch.cluster.queue import QueueSettings, ShardQueue

    queue = ShardQueue(QueueSettings(redis_url, poll=0.2))
    try:
        queue.put("q", [Shard("/b", 0, 0, 2), Shard("/b", 1, 2, 4)])
        first = queue.take("q")
        assert first is not None
        queue.requeue(first)
        found = []
        for _ in range(2):  # one at a time, as a worker runs them
            taken = queue.take("q")
            assert taken is not None, f"nothing taken after {found}"
            found.append(taken.shard.index)
            queue.ack(taken)
        assert sorted(found) == [0, 1] and queue.take("q") is None and queue.size("q") == 0
    finally:
        queue.close()


def test_a_shard_is_lost_to_its_worker_only_when_another_can_have_it(redis_url: str) -> None:
    """A worker taken for dead has its shard given to another (it stops it: test_store_shards); but a
    Redis that came back empty gave it to no one, and the worker finishes it, as README promises."""
    from batch.cluster.plan import Shard
    from batch.cluster.queue import HEARTBEATS, QueueSettings, ShardQueue

    client = redis.Redis.from_url(redis_url)
    first = ShardQueue(QueueSettings(redis_url, heartbeat_timeout=5, maintenance=True, poll=0.2))
    second = ShardQueue(QueueSettings(redis_url, heartbeat_timeout=5, maintenance=True, poll=0.2))
    try:
        first.put("q", [Shard("/b", 0, 0, 2)])
        mine = first.take("q")
        assert mine is not None and not first.lost(mine)
        client.zadd(HEARTBEATS, {first.broker.broker_id: 0})  # silent for ages: taken for dead
        theirs = second.take("q")  # its poll gives the shard back to the queue, and takes it
        assert theirs is not None and theirs.shard == mine.shard
        assert first.lost(mine) and not second.lost(theirs)
        client.flushall()  # Redis restarted without its data: the shard is no one else's
        assert not first.lost(mine) and not second.lost(theirs)
    finally:
        first.close()
        second.close()
        client.close()
