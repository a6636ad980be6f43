"""The CPU of `ApiClient.send` alone, one version against another (and against aiohttp used as a naive script
uses it), in alternating rounds: what a change to the client bought, when whole runs are too noisy to show it.

    python bench/send_ab.py 36c8b5b .     # two versions: 3,000 chat requests, C=64, L=0.2 s, 5 rounds
    python bench/send_ab.py 36c8b5b . script --loop asyncio --requests 2000 --rounds 7

A version is a git revision, `.` (the working tree) or `script` (one aiohttp session, `post(json=...)`,
`raise_for_status()`, `await response.json()`: bench/handwritten.py's request). Each round runs every version
in a child process of its own, one after the other, against one `maas-batch simulate`: 64 workers send
`--warm-up` requests (connections opened, code warmed), then `--requests` more under `time.process_time`.
The figure is the child's CPU per timed request, in microseconds. The simulator runs in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cpu_ab import export
from peer_runs import ENDPOINT, MODEL, PYTHON, child_env, simulator

SCRIPT = "script"
PATH = "google/chat/completions"


def body(i: int) -> dict[str, Any]:
    prompt = f"Summarise item number {i} in one sentence."
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}


async def through_client(base_url: str, requests: int, warm_up: int, concurrency: int) -> float:
    from batch.kind import ApiRequest
    from batch.running.client import ApiClient, ClientConfig

    async with ApiClient(ClientConfig(base_url=base_url, api_key="bench")) as client:

        async def worker(numbers: range) -> None:
            for i in numbers:
                reply = await client.send(ENDPOINT, ApiRequest(PATH, json=body(i)), f"r{i}")
                assert reply.status == 200

        return await timed(worker, requests, warm_up, concurrency)


async def through_script(base_url: str, requests: int, warm_up: int, concurrency: int) -> float:
    import aiohttp

    url = f"{base_url}/{ENDPOINT}/{PATH}"
    headers = {"Authorization": "Bearer bench"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker(numbers: range) -> None:
            for i in numbers:
                async with session.post(url, json=body(i), headers=headers) as response:
                    response.raise_for_status()
                    answer = await response.json()
                assert answer["choices"]

        return await timed(worker, requests, warm_up, concurrency)


async def timed(worker: Any, requests: int, warm_up: int, concurrency: int) -> float:
    """CPU seconds of `requests` requests sent by `concurrency` workers, after `warm_up` untimed ones."""
    for count in (warm_up, None):
        total = requests if count is None else count
        shares = [range(w, total, concurrency) for w in range(concurrency)]
        started = time.process_time()
        await asyncio.gather(*(worker(share) for share in shares))
        spent = time.process_time() - started
    return spent


def child(args: argparse.Namespace) -> None:
    send = through_script if args.child == SCRIPT else through_client
    run = send(args.base_url, args.requests, args.warm_up, args.concurrency)
    if args.loop == "uvloop":
        import uvloop

        spent = uvloop.run(run)
    else:
        spent = asyncio.run(run)
    if args.child != SCRIPT:
        import batch

        print(f"batch from {batch.__file__}", file=sys.stderr)
    print(f"{spent / args.requests * 1e6:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("versions", nargs="+", help="git revisions, . for the working tree, or script")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warm-up", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the simulator's address; 127.0.0.2 is not loopback to maas-batch, which then reads proxies "
        "from the environment as for the real API",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="maas-send-ab-") as temporary:
        folder = Path(temporary)
        trees = {v: None if v == SCRIPT else export(v, folder) for v in args.versions}
        figures: dict[str, list[float]] = {version: [] for version in trees}
        with simulator(args.latency, folder, args.host) as sim:
            for round_number in range(1, args.rounds + 1):
                for version, tree in trees.items():
                    command = [PYTHON, __file__, version, "--child", version, "--base-url", sim.base_url]
                    for flag in ("requests", "warm_up", "concurrency", "loop"):
                        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
                    env = child_env({"PYTHONPATH": str(tree)} if tree is not None else None)
                    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=folder)
                    if done.returncode != 0:
                        raise SystemExit(f"{version} exited {done.returncode}:\n{done.stderr[-3000:]}")
                    figures[version].append(float(done.stdout.split()[-1]))
                    print(f"round {round_number} {version:>12}  {figures[version][-1]:7.1f} us a request")
    print(
        f"\n{args.requests:,} chat requests after {args.warm_up} untimed, C={args.concurrency}, "
        f"L={args.latency} s, {args.loop}, server {args.host}, load average {os.getloadavg()[0]:.1f}; "
        "CPU us a request"
    )
    for version, values in figures.items():
        shown = ", ".join(f"{value:.0f}" for value in values)
        print(
            f"{version:>12}: median {statistics.median(values):.1f}  "
            f"spread {min(values):.0f}-{max(values):.0f}  ({shown})"
        )


if __name__ == "__main__":
    main()
