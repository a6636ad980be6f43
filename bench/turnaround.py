"""Where a request's cycle goes beyond L (issue 16's "at least 97% of C/L"): maas-batch against the simulator,
each of its requests timed at the edge of the engine (`ApiClient.send`), beside the simulator's own records.

    python bench/turnaround.py                       # 5,000 chat tasks, C=64, L=0.2 s
    python bench/turnaround.py --tasks 2000 --latency 0.5

With C requests in flight and a latency L, a worker's cycle is L plus what is added on the way; the share of
C/L a run reaches is about L / (its mean cycle). The cycle is split into:
- the engine's turn: from a worker's answer (send returned) to its next request (send entered): the
  bookkeeping of the answer (ledger, result line, events) and the next task's request;
- the request: from send entered to the answer read, of which the simulator's handling (from the handler's
  start to its end: its sleep of L and its work) is in its records; the rest is aiohttp on both ends, the
  two event loops' queues and the loopback between them.
maas-batch runs in this process (the figures are times between events, not CPU); the simulator runs in its
own, as in bench/peers.py.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from peer_runs import ENDPOINT, simulator, write_tasks


def _mean_p90(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"mean {statistics.mean(ordered) * 1000:6.2f} ms, p90 {p90 * 1000:6.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()

    from batch.cli import main as cli
    from batch.running import client

    calls: dict[int, list[tuple[float, float]]] = defaultdict(list)  # worker -> (entered, returned)
    send = client.ApiClient.send

    async def timed(self: Any, *given: Any, **named: Any) -> Any:
        entered = time.monotonic()
        reply = await send(self, *given, **named)
        calls[id(asyncio.current_task())].append((entered, time.monotonic()))
        return reply

    client.ApiClient.send = timed  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(prefix="maas-turnaround-") as scratch:
        folder = Path(scratch)
        tasks = write_tasks(folder, args.tasks)
        with simulator(args.latency, folder) as sim:
            os.environ.update(MAAS_API_KEY="bench", MAAS_BASE_URL=sim.base_url, MAAS_ENDPOINT=ENDPOINT)
            started = time.time()
            run = ["run", str(tasks.manifest), "--out", str(folder / "out"), "-c", str(args.concurrency)]
            code = cli([*run, "--quiet"])
            url = f"http://{sim.host}:{sim.port}/_sim/stats?records=1"
            with urllib.request.urlopen(url, timeout=30) as response:
                records = [r for r in json.loads(response.read())["records"] if r["time"] >= started]
    if code != 0:
        print(f"the run exited {code}", file=sys.stderr)
        return 1
    turns = [b[0] - a[1] for worker in calls.values() for a, b in itertools.pairwise(worker)]
    requests = [returned - entered for worker in calls.values() for entered, returned in worker]
    handled = [r["elapsed"] for r in records if r["status"] == 200]
    cycle = statistics.mean(turns) + statistics.mean(requests)
    print(
        f"[turnaround] {args.tasks:,} chat tasks, C={args.concurrency}, L={args.latency} s, "
        f"load average {os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan'):.1f}"
    )
    print(f"  the engine's turn (answer -> next request): {_mean_p90(turns)}")
    print(f"  the request (send entered -> answer read):  {_mean_p90(requests)}")
    print(f"    of it, the simulator's handling:          {_mean_p90(handled)}")
    rest = statistics.mean(requests) - statistics.mean(handled)
    print(f"    the rest (aiohttp both ends, the loops, the loopback): mean {rest * 1000:6.2f} ms")
    print(
        f"  a worker's cycle: mean {cycle * 1000:.2f} ms for L = {args.latency * 1000:.0f} ms: "
        f"{args.latency / cycle:.1%} of C/L at most; the engine's turn alone would allow "
        f"{args.latency / (args.latency + statistics.mean(turns)):.1%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
