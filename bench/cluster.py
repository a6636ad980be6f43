"""Sharded batches on a task queue: how fast `submit` queues a large manifest and how much memory it needs,
and how many tasks a second 1, 2 and 4 `worker` processes finish on this machine.

    python bench/cluster.py                          # submit 100,000 and 1,000,000 tasks; workers 1, 2, 4
    python bench/cluster.py --submit 1000000 --workers 1 2 4 --tasks 4000 --shard-tasks 500 \
        --latency 0.2 --concurrency 32

Needs Debian's redis-server (apt-get install redis-server). Every command is `maas-batch` in a child
process, as an operator would start it; peak RSS is the child's own (os.wait4's ru_maxrss). The manifest is
a JSONL file of distinct chat prompts, one task a line. The simulator runs in this process (it counts what
it answers) with --latency seconds per answer; each worker has --concurrency requests in flight, and the
batch is submitted with --concurrency C x workers: a batch's --concurrency is one budget for all its
workers, shared through Redis (--shared-cap submits without it, to show that cap).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from shared_limits import start_redis  # noqa: E402

from batch.simulator import SimConfig, simulator_in_thread  # noqa: E402

KEY = "bench-key-not-secret"


def make_manifest(folder: Path, count: int) -> Path:
    path = folder / f"chat-{count}.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            line = f'{{"kind": "chat", "model": "gemini-2.5-flash", "prompt": "Question number {i}?"}}\n'
            handle.write(line)
    return path


def environment(base_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env.update(MAAS_API_KEY=KEY, MAAS_ENDPOINT="bench", PYTHONPATH=str(ROOT))
    if base_url is not None:
        env["MAAS_BASE_URL"] = base_url
    return env


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of one child process, which must exit 0."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    output = process.stdout.read().decode() if process.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[2:4])} failed:\n{output}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def flush(redis_url: str) -> None:
    import redis

    redis.Redis.from_url(redis_url).flushall()


def bench_submit(folder: Path, counts: list[int], redis_url: str, shard_size: int) -> None:
    print(f"submit: JSONL manifest of chat tasks, --shard-size {shard_size}")
    print(f"{'tasks':>10} {'wall s':>8} {'CPU s':>7} {'tasks/s':>9} {'peak RSS MB':>12}")
    for count in counts:
        manifest = make_manifest(folder, count)
        out = folder / f"submitted-{count}"
        command = [sys.executable, "-m", "batch", "submit", str(manifest), "--out", str(out)]
        command += ["--redis", redis_url, "--shard-size", str(shard_size)]
        wall, cpu, rss = timed(command, environment())
        print(f"{count:>10,} {wall:8.2f} {cpu:7.2f} {count / wall:9,.0f} {rss:12.1f}")
        manifest.unlink()
        flush(redis_url)


def bench_workers(folder: Path, args: argparse.Namespace, redis_url: str) -> None:
    print(
        f"workers: {args.tasks:,} chat tasks in shards of {args.shard_tasks}, simulator latency "
        f"{args.latency:g} s, --concurrency {args.concurrency} per worker; C/L per worker = "
        f"{args.concurrency / args.latency:,.0f} tasks/s"
    )
    heading = [("workers", 8), ("wall s", 8), ("tasks/s", 9), ("per worker", 11)]
    heading += [("CPU s (all)", 12), ("answers", 8)]
    print(" ".join(f"{name:>{width}}" for name, width in heading))
    manifest = make_manifest(folder, args.tasks)
    for count in args.workers:
        config = SimConfig(api_key=KEY, latency=args.latency)
        with simulator_in_thread(config) as sim:
            out = folder / f"workers-{count}"
            env = environment(sim.base_url)
            submit = [sys.executable, "-m", "batch", "submit", str(manifest), "--out", str(out)]
            submit += ["--redis", redis_url, "--shard-size", str(args.shard_tasks)]
            # the batch's --concurrency is one budget for all its workers (shared through Redis): C each
            if not args.shared_cap:
                submit += ["--concurrency", str(args.concurrency * count)]
            timed(submit, env)
            worker = [sys.executable, "-m", "batch", "worker", "--redis", redis_url, "--burst", "--quiet"]
            started = time.perf_counter()
            processes = [subprocess.Popen(worker, env=env, stdout=subprocess.DEVNULL) for _ in range(count)]
            cpu = 0.0
            for process in processes:
                _, status, usage = os.wait4(process.pid, 0)
                cpu += usage.ru_utime + usage.ru_stime
                if os.waitstatus_to_exitcode(status) != 0:
                    raise SystemExit(f"a worker exited with {os.waitstatus_to_exitcode(status)}")
            wall = time.perf_counter() - started
            answers = sum(record.kind == "chat" and record.status == 200 for record in sim.state.records)
        rate = args.tasks / wall
        print(f"{count:>8} {wall:8.2f} {rate:9,.0f} {rate / count:11,.0f} {cpu:12.2f} {answers:8,}")
        flush(redis_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--submit", type=int, nargs="*", default=[100_000, 1_000_000], help="manifest sizes")
    parser.add_argument("--shard-size", type=int, default=10_000, help="submit's shard size (default 10000)")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4], help="worker counts (1 2 4)")
    parser.add_argument("--tasks", type=int, default=4000, help="tasks of the worker runs (default 4000)")
    parser.add_argument("--shard-tasks", type=int, default=500, help="their shard size (default 500)")
    parser.add_argument("--latency", type=float, default=0.2, help="simulator's latency, s (default 0.2)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight per worker (32)")
    parser.add_argument(
        "--shared-cap",
        action="store_true",
        help="submit with the default --concurrency: one cap for all the workers together, as the key's",
    )
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        redis, url = start_redis(folder)
        try:
            if args.submit:
                bench_submit(folder, args.submit, url, args.shard_size)
            if args.workers:
                bench_workers(folder, args, url)
        finally:
            redis.kill()
            redis.wait()


if __name__ == "__main__":
    main()
