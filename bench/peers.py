"""maas-batch beside its peers (issue 16): the same chat prompts, the same simulator, alternating runs.

    python bench/peers.py                                # 5,000 tasks, C=64, L=0.2 s, 3 rounds
    python bench/peers.py --cookbook PATH/api_request_parallel_processor.py --json peers.json
    python bench/peers.py --ceiling                      # C=256, L=0.2 s: the rate each peer reaches
    python bench/peers.py --startup                      # --help, validate, and time to the first request
    python bench/peers.py --rss-scale                    # maas-batch's peak RSS at 10,000 and 100,000 tasks
    python bench/peers.py --uvloop                       # every peer on uvloop (bench/with_uvloop.py)
    python bench/peers.py --host 127.0.0.2               # a simulator maas-batch takes for a remote API

The peers, each a child of this process, run in turn (A B A B ...) against one `maas-batch simulate` with a
fixed latency, started and stopped here on a free port:
- maas-batch: `maas-batch run MANIFEST --out DIR -c C`, as a user runs it (checkpoint, ledger, run log on);
- hand-written: bench/handwritten.py, aiohttp + a semaphore, one JSON line appended per answer;
- cookbook: OpenAI's api_request_parallel_processor.py, when --cookbook gives its path (see
  bench/cookbook_shim.py), at its documented --logging_level 20. It has no concurrency limit: its
  --max_requests_per_minute is set to C/L, but its bucket starts full and only aiohttp's default 100
  connections bound what is in flight, so its share of C/L can pass 100%. It counts tokens with tiktoken,
  whose cl100k_base file is fetched from the internet on first use (or read from TIKTOKEN_CACHE_DIR).

CPU (user + sys) and peak RSS come from os.wait4 of each child, wall from its start to its exit. The share of
C/L and the first request come from the simulator's own records: tasks answered / (last answer's end - first
request's arrival) / (C/L), so that start-up is counted once, in `first req`, not in the rate; `tail` runs
from the last answer's end to the child's exit (a page, a last sync, the interpreter's exit). Each figure is
the median of the rounds; the ratios are to the hand-written script's medians. CPU/wall is the share of one
core a peer used; server CPU/wall the simulator's (from /proc) during that peer's run: near 1.0, the server
is what limits the rate, not the peer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from peer_runs import (
    ENDPOINT,
    HANDWRITTEN,
    PYTHON,
    BenchFailed,
    Peer,
    Run,
    Setting,
    Tasks,
    check,
    compile_bytecode,
    cookbook_peer,
    maas_batch,
    measure,
    measured_run,
    run_handwritten,
    run_maas_batch,
    simulator,
    write_tasks,
)

# -- the comparison ----------------------------------------------------------------------------------------


def compare(
    peers: dict[str, Peer], tasks: Tasks, setting: Setting, rounds: int, folder: Path
) -> dict[str, list[Run]]:
    """Every peer once per round, in turn, against one simulator."""
    runs: dict[str, list[Run]] = {name: [] for name in peers}
    with simulator(setting.latency, folder, setting.host) as sim:
        for round_ in range(rounds):
            for name, runner in peers.items():
                run = measured_run(name, runner, tasks, sim, setting, folder / f"{name}-{round_}")
                runs[name].append(run)
                print(
                    f"  round {round_ + 1}/{rounds} {name:<13} cpu {run.cpu_s:6.2f} s  "
                    f"wall {run.wall_s:6.2f} s  rss {run.peak_rss_mb:5.1f} MB",
                    file=sys.stderr,
                    flush=True,
                )
    return runs


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summarise(runs: dict[str, list[Run]], setting: Setting) -> dict[str, dict[str, Any]]:
    """Medians of every figure per peer, and the ratios to the hand-written script's."""
    ideal = setting.concurrency / setting.latency if setting.latency > 0 else None
    rows: dict[str, dict[str, Any]] = {}
    for name, measured in runs.items():
        tasks = measured[0].tasks
        cpu = median([r.cpu_s for r in measured])
        wall = median([r.wall_s for r in measured])
        span = median([r.span_s for r in measured])
        rate = tasks / span if span else None
        rows[name] = {
            "cpu_s": cpu,
            "cpu_ms_per_task": cpu / tasks * 1000 if cpu is not None else None,
            "wall_s": wall,
            "requests_per_s": rate,
            "share_of_c_over_l": rate / ideal if rate is not None and ideal else None,
            "cpu_per_wall": cpu / wall if cpu is not None and wall else None,
            "server_cpu_per_wall": median(
                [r.server_cpu_s / r.wall_s if r.server_cpu_s is not None else None for r in measured]
            ),
            "first_request_s": median([r.first_request_s for r in measured]),
            "tail_s": median([r.tail_s for r in measured]),
            "peak_rss_mb": median([r.peak_rss_mb for r in measured]),
            "cpu_s_each_round": [round(r.cpu_s, 3) for r in measured],
            "wall_s_each_round": [round(r.wall_s, 3) for r in measured],
        }
    base = rows.get(HANDWRITTEN)
    for row in rows.values():
        for figure in ("cpu_s", "wall_s", "peak_rss_mb"):
            row[f"{figure}_ratio"] = row[figure] / base[figure] if base and base[figure] else None
        row["peak_rss_mb_diff"] = row["peak_rss_mb"] - base["peak_rss_mb"] if base else None
    return rows


COLUMNS = [
    ("CPU s", "cpu_s", "{:.2f}"),
    ("CPU/task ms", "cpu_ms_per_task", "{:.3f}"),
    ("wall s", "wall_s", "{:.2f}"),
    ("req/s", "requests_per_s", "{:.0f}"),
    ("share C/L", "share_of_c_over_l", "{:.1%}"),
    ("CPU/wall", "cpu_per_wall", "{:.2f}"),
    ("server CPU/wall", "server_cpu_per_wall", "{:.2f}"),
    ("1st req s", "first_request_s", "{:.2f}"),
    ("tail s", "tail_s", "{:.2f}"),
    ("peak RSS MB", "peak_rss_mb", "{:.1f}"),
    ("CPU x", "cpu_s_ratio", "{:.2f}x"),
    ("wall x", "wall_s_ratio", "{:.3f}x"),
    ("RSS x", "peak_rss_mb_ratio", "{:.2f}x"),
]


def table(rows: dict[str, dict[str, Any]]) -> str:
    def cell(value: Any, form: str) -> str:
        return "-" if value is None else form.format(value)

    header = ["peer", *(title for title, _, _ in COLUMNS)]
    body = [[name, *(cell(row[key], form) for _, key, form in COLUMNS)] for name, row in rows.items()]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [header, ["-" * w for w in widths], *body]
    return "\n".join(
        "| "
        + " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        + " |"
        for line in lines
    )


def peers_of(args: argparse.Namespace) -> dict[str, Peer]:
    peers: dict[str, Peer] = {"maas-batch": run_maas_batch, HANDWRITTEN: run_handwritten}
    if args.cookbook is None:
        print("cookbook: skipped (no --cookbook PATH to api_request_parallel_processor.py)", file=sys.stderr)
    elif not args.cookbook.is_file():
        raise BenchFailed(f"--cookbook {args.cookbook}: no such file")
    else:
        try:
            import tiktoken  # noqa: F401
        except ImportError:
            print("cookbook: skipped (it needs tiktoken: pip install tiktoken)", file=sys.stderr)
        else:
            peers["cookbook"] = cookbook_peer(args.cookbook.resolve())
    return peers


def section_compare(args: argparse.Namespace, folder: Path, ceiling: bool) -> dict[str, Any]:
    setting = Setting(
        256 if ceiling else args.concurrency,
        0.2 if ceiling else args.latency,
        args.uvloop,
        tuple(args.run_arg),
        args.host,
    )
    tasks = write_tasks(folder, args.tasks)
    title = "ceiling" if ceiling else "peers"
    print(
        f"\n[{title}] {tasks.count:,} chat tasks, C={setting.concurrency}, L={setting.latency} s, "
        f"{args.rounds} round(s), alternating; medians{'; uvloop' if setting.uvloop else ''}"
        + (f"; C/L = {setting.concurrency / setting.latency:.0f}/s" if setting.latency > 0 else ""),
        flush=True,
    )
    runs = compare(peers_of(args), tasks, setting, args.rounds, folder)
    rows = summarise(runs, setting)
    print(table(rows), flush=True)
    return {
        "tasks": tasks.count,
        "concurrency": setting.concurrency,
        "latency_s": setting.latency,
        "rounds": args.rounds,
        "uvloop": setting.uvloop,
        "peers": rows,
        "runs": {name: [asdict(r) for r in measured] for name, measured in runs.items()},
    }


# -- start-up ----------------------------------------------------------------------------------------------


def section_startup(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """`maas-batch --help`, `validate` of 5 tasks, and a 5-task run's time to its first request."""
    tasks = write_tasks(folder, 5)
    env = {"MAAS_ENDPOINT": ENDPOINT}
    samples: dict[str, list[float]] = {
        "python -c pass": [],
        "maas-batch --help": [],
        "maas-batch validate (5 tasks)": [],
        "maas-batch run: first request": [],
        "hand-written: first request": [],
        "maas-batch run: CPU of 5 tasks": [],
        "hand-written: CPU of 5 tasks": [],
    }
    setting = Setting(4, 0.0)
    with simulator(0.0, folder) as sim:
        for i in range(args.startup_runs):
            where = folder / f"startup-{i}"
            samples["python -c pass"].append(measure([PYTHON, "-c", "pass"], where).wall)
            child = measure([*maas_batch(), "--help"], where)
            check(child, "maas-batch --help", 1, 1)
            samples["maas-batch --help"].append(child.wall)
            child = measure([*maas_batch(), "validate", str(tasks.manifest)], where, env)
            check(child, "maas-batch validate", 1, 1)
            samples["maas-batch validate (5 tasks)"].append(child.wall)
            for name, runner in (("maas-batch run", run_maas_batch), ("hand-written", run_handwritten)):
                run = measured_run(name, runner, tasks, sim, setting, where / name)
                if run.first_request_s is None:
                    raise BenchFailed(f"{name}: the simulator saw no request")
                samples[f"{name}: first request"].append(run.first_request_s)
                samples[f"{name}: CPU of 5 tasks"].append(run.cpu_s)
            shutil.rmtree(where, ignore_errors=True)
    print(
        f"\n[startup] median of {args.startup_runs} runs: seconds from the process's start, or CPU",
        flush=True,
    )
    figures = {name: statistics.median(values) for name, values in samples.items()}
    width = max(len(name) for name in figures)
    for name, value in figures.items():
        spread = f"{min(samples[name]):.3f}-{max(samples[name]):.3f}"
        print(f"  {name:<{width}}  {value:.3f} s   ({spread})", flush=True)
    return {"median_s": figures, "samples_s": samples}


# -- memory against the number of tasks --------------------------------------------------------------------


def section_rss_scale(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """maas-batch's peak RSS as the task count grows, against a fast simulator."""
    setting = Setting(args.concurrency, args.rss_latency, run_args=tuple(args.run_arg))
    figures: dict[str, Any] = {}
    print(
        f"\n[rss-scale] maas-batch {' '.join(setting.run_args)}, "
        f"C={setting.concurrency}, L={setting.latency} s",
        flush=True,
    )
    with simulator(setting.latency, folder) as sim:
        for count in args.rss_counts:
            tasks = write_tasks(folder, count)
            where = folder / f"rss-{count}"
            child = run_maas_batch(tasks, sim, setting, where)
            shutil.rmtree(where, ignore_errors=True)
            tasks.manifest.unlink()
            tasks.requests.unlink()
            figures[str(count)] = {
                "peak_rss_mb": child.peak_mb,
                "wall_s": child.wall,
                "cpu_ms_per_task": child.cpu / count * 1000,
            }
            print(
                f"  {count:>9,} tasks: peak RSS {child.peak_mb:6.1f} MB   wall {child.wall:7.1f} s   "
                f"CPU {child.cpu / count * 1000:.3f} ms a task",
                flush=True,
            )
    return figures


# -- the command -------------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=5000, help="chat tasks per run (default 5000)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight, C (default 64)")
    parser.add_argument(
        "--latency", type=float, default=0.2, help="the simulator's latency, L (default 0.2 s)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument(
        "--cookbook", type=Path, help="path of the cookbook's api_request_parallel_processor.py"
    )
    parser.add_argument("--ceiling", action="store_true", help="C=256, L=0.2 s: the rate each peer reaches")
    parser.add_argument("--startup", action="store_true", help="start-up times, median of --startup-runs")
    parser.add_argument("--startup-runs", type=int, default=7)
    parser.add_argument("--rss-scale", action="store_true", help="maas-batch's peak RSS by task count")
    parser.add_argument(
        "--rss-counts",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[10_000, 100_000],
        help="task counts of --rss-scale (default 10000,100000; add 1000000 for the long one)",
    )
    parser.add_argument("--rss-latency", type=float, default=0.0, help="latency of --rss-scale (default 0)")
    parser.add_argument("--uvloop", action="store_true", help="run every peer with uvloop as its event loop")
    parser.add_argument(
        "--run-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="pass FLAG to `maas-batch run` (repeatable), e.g. --run-arg=--no-gallery",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the simulator's address; 127.0.0.2 is not this machine to maas-batch, which then reads proxies "
        "from the environment as for the real API",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.concurrency < 1 or args.rounds < 1 or args.latency < 0:
        parser.error("--tasks, --concurrency and --rounds must be positive, --latency at least 0")
    if args.uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            parser.error("--uvloop needs uvloop: pip install uvloop")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    machine = (
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(f"machine: {machine}", flush=True)
    compile_bytecode()
    results: dict[str, Any] = {"machine": machine}
    chosen = [name for name in ("ceiling", "startup", "rss_scale") if getattr(args, name)] or ["peers"]
    with tempfile.TemporaryDirectory(prefix="maas-peers-") as folder:
        for name in chosen:
            where = Path(folder) / name
            where.mkdir()
            if name in ("peers", "ceiling"):
                results[name] = section_compare(args, where, ceiling=name == "ceiling")
            elif name == "startup":
                results[name] = section_startup(args, where)
            else:
                results[name] = section_rss_scale(args, where)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
