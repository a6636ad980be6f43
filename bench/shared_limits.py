"""Three runs on one key against a service that takes N requests a second from it: the combined rate
against N and the share answered 429, with their limits shared through Redis (--redis) and without.

    python bench/shared_limits.py                  # N=50, three runs of 200 chat tasks, --rpm 60*N each
    python bench/shared_limits.py --n 20 --tasks 100

Needs Debian's redis-server (apt-get install redis-server). The simulator runs in this process (it counts
what it answers); each run is `maas-batch run` in a subprocess, as cron would start it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batch.simulator import RunningSimulator, SimConfig, simulator_in_thread  # noqa: E402

KEY = "bench-key-not-secret"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit("redis-server did not answer PING")
        time.sleep(0.01)


def scenario(folder: Path, n: int, runs: int, tasks: int, redis_url: str | None) -> dict[str, float]:
    config = SimConfig(api_key=KEY, rps=n, latency=0.02)
    with simulator_in_thread(config) as sim:
        started = time.monotonic()
        processes = [start_run(folder, sim, i, n, tasks, redis_url) for i in range(runs)]
        codes = [process.wait() for process in processes]
        wall = time.monotonic() - started
        records = [record for record in sim.state.records if record.kind == "chat"]
    answered = sorted(record.time for record in records if record.status == 200)
    refused = sum(record.status == 429 for record in records)
    return {
        "rate": (len(answered) - 1) / (answered[-1] - answered[0]),
        "share_429": refused / len(records),
        "requests": len(records),
        "answered": len(answered),
        "wall": wall,
        "exit_codes": float(max(codes)),
    }


def start_run(
    folder: Path, sim: RunningSimulator, index: int, n: int, tasks: int, redis_url: str | None
) -> subprocess.Popen[bytes]:
    manifest = folder / f"run{index}.yaml"
    manifest.write_text(
        "tasks:\n"
        + "".join(
            f"  - {{kind: chat, id: r{index}-{i}, model: gemini-2.5-flash, prompt: question {i}}}\n"
            for i in range(tasks)
        )
    )
    out = folder / f"out-{'redis' if redis_url else 'alone'}-{index}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env.update(MAAS_API_KEY=KEY, MAAS_BASE_URL=sim.base_url, MAAS_ENDPOINT="ep", PYTHONPATH=str(ROOT))
    args = ["--rpm", str(60 * n), "--concurrency", "32", "--no-progress", "--quiet"]
    if redis_url:
        args += ["--redis", redis_url]
    command = [sys.executable, "-m", "batch", "run", str(manifest), "--out", str(out), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="requests a second the service takes (default 50)")
    parser.add_argument("--runs", type=int, default=3, help="runs on the key at once (default 3)")
    parser.add_argument("--tasks", type=int, default=200, help="chat tasks per run (default 200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        redis, url = start_redis(folder)
        try:
            n = args.n
            print(f"{args.runs} runs x {args.tasks} chat tasks, each --rpm {60 * n}, service N={n}/s")
            widths = {"": 14, "rate/s": 7, "of N": 6, "429s": 6, "requests": 9, "wall s": 7, "worst exit": 10}
            print(" ".join(f"{name:>{width}}" for name, width in widths.items()))
            for name, redis_url in (("with --redis", url), ("without", None)):
                got = scenario(folder, args.n, args.runs, args.tasks, redis_url)
                print(
                    f"{name:14} {got['rate']:7.1f} {got['rate'] / args.n:6.1%} {got['share_429']:6.1%} "
                    f"{got['requests']:9.0f} {got['wall']:7.1f} {got['exit_codes']:10.0f}"
                )
        finally:
            redis.kill()
            redis.wait()


if __name__ == "__main__":
    main()
