"""maas-batch beside its peers (issue 16): the same chat prompts, the same simulator, alternating runs.

    python bench/peers.py                                # 5,000 tasks, C=64, L=0.2 s, 3 rounds
    python bench/peers.py --cookbook PATH/api_request_parallel_processor.py --json peers.json
    python bench/peers.py --ceiling                      # C=256, L=0.2 s: the rate each peer reaches
    python bench/peers.py --startup                      # --help, validate, and time to the first request
    python bench/peers.py --rss-scale                    # maas-batch's peak RSS at 10,000 and 100,000 tasks
    python bench/peers.py --uvloop                       # every peer on uvloop (bench/with_uvloop.py)

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
request's arrival) / (C/L), so that start-up is counted once, in `first req`, not in the rate. Each figure is
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
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ENDPOINT = "ep"
MODEL = "gemini-2.5-flash"
HANDWRITTEN = "hand-written"
# Set in some shells and CI: with it, an editable install compiles its modules from source at every start
# (0.3-0.7 s of CPU for maas-batch here), which no user's pip install does. The peers run without them.
NOT_PASSED_ON = ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every measured child: this one, less NOT_PASSED_ON, plus `extra`."""
    env = {name: value for name, value in os.environ.items() if name not in NOT_PASSED_ON}
    return {**env, **(extra or {})}


def compile_bytecode() -> None:
    """Write the .pyc files of the project and the bench once, as `pip install` would, before timing."""
    subprocess.run(
        [PYTHON, "-m", "compileall", "-q", str(ROOT / "batch"), str(ROOT / "jobs"), str(ROOT / "bench")],
        env=child_env(),
        check=True,
        stdout=subprocess.DEVNULL,
    )


class BenchFailed(SystemExit):
    """A peer or the simulator did not do what the comparison needs; the message says which and why."""


# -- the simulator -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Sim:
    port: int
    pid: int

    def cpu_seconds(self) -> float | None:
        """The simulator's CPU so far (user + sys, from /proc), to tell when the server is the bottleneck."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/ai"

    def records_since(self, since: float) -> list[dict[str, Any]]:
        """The simulator's records of requests that arrived at or after `since` (unix time)."""
        url = f"http://127.0.0.1:{self.port}/_sim/stats?records=1"
        with urllib.request.urlopen(url, timeout=60) as response:
            records: list[dict[str, Any]] = json.loads(response.read())["records"]
        return [r for r in records if r["time"] >= since]


@contextmanager
def simulator(latency: float, folder: Path) -> Iterator[Sim]:
    """`maas-batch simulate` in its own process on a free port, stopped (SIGTERM) on the way out."""
    port = free_port()
    errors = (folder / f"simulator-{port}.err").open("w+")
    process = subprocess.Popen(
        [PYTHON, "-m", "batch", "simulate", "--port", str(port), "--latency", str(latency)],
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "listening" not in line:
            process.wait(10)
            errors.seek(0)
            raise BenchFailed(f"the simulator did not start (exit {process.returncode}):\n{errors.read()}")
        yield Sim(port, process.pid)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        errors.close()


# -- one measured child ------------------------------------------------------------------------------------


@dataclass
class Run:
    peer: str
    tasks: int
    cpu_s: float
    wall_s: float
    peak_rss_mb: float
    answered: int = 0  # requests the simulator answered 200 in this run
    first_request_s: float | None = None  # from the child's start to the simulator seeing its first request
    span_s: float | None = None  # from the first request's arrival to the last answer's end
    server_cpu_s: float | None = None  # the simulator's CPU during this run


@dataclass
class Child:
    code: int
    wall: float
    cpu: float
    peak_mb: float
    started: float  # unix time, just before the child was started
    output: str  # the tail of its stdout and stderr


def measure(command: list[str], folder: Path, env: dict[str, str] | None = None) -> Child:
    """Run `command` to its end; its CPU and peak RSS from os.wait4, its output kept in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "child.out").open("w+b") as out:
        started_unix = time.time()
        started = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=folder, env=child_env(env)
        )
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        wall = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode(errors="replace")
    tail = "\n".join(text.splitlines()[-15:])
    return Child(
        os.waitstatus_to_exitcode(status),
        wall,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        started_unix,
        tail,
    )


def maas_batch() -> list[str]:
    """The command a user types: the console script beside this Python, or `python -m batch`."""
    script = Path(PYTHON).parent / "maas-batch"
    return [str(script)] if script.exists() else [PYTHON, "-m", "batch"]


# -- the same tasks for every peer -------------------------------------------------------------------------


@dataclass(frozen=True)
class Tasks:
    count: int
    manifest: Path  # maas-batch's manifest, read by the hand-written script too
    requests: Path  # the cookbook's request bodies, the same prompts


def write_tasks(folder: Path, count: int) -> Tasks:
    manifest, requests = folder / f"chat-{count}.jsonl", folder / f"chat-{count}-requests.jsonl"
    with manifest.open("w") as tasks, requests.open("w") as bodies:
        for i in range(count):
            prompt = f"Summarise item number {i} in one sentence."
            tasks.write(json.dumps({"kind": "chat", "id": f"t{i}", "model": MODEL, "prompt": prompt}) + "\n")
            message = {"role": "user", "content": prompt}
            bodies.write(
                json.dumps({"model": MODEL, "messages": [message], "metadata": {"id": f"t{i}"}}) + "\n"
            )
    return Tasks(count, manifest, requests)


# -- the peers ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    concurrency: int
    latency: float
    uvloop: bool = False  # every peer's event loop is uvloop's (bench/with_uvloop.py)
    run_args: tuple[str, ...] = ()  # more flags for `maas-batch run`, e.g. --no-gallery


def python_running(setting: Setting, script: Path) -> list[str]:
    """The command that runs `script`, under uvloop when the setting says so."""
    if setting.uvloop:
        return [PYTHON, str(ROOT / "bench" / "with_uvloop.py"), str(script)]
    return [PYTHON, str(script)]


Peer = Callable[[Tasks, Sim, Setting, Path], Child]


def run_maas_batch(tasks: Tasks, sim: Sim, setting: Setting, folder: Path) -> Child:
    out = folder / "out"
    env = {"MAAS_API_KEY": "bench", "MAAS_BASE_URL": sim.base_url, "MAAS_ENDPOINT": ENDPOINT}
    launcher = (
        [PYTHON, str(ROOT / "bench" / "with_uvloop.py"), "-m", "batch"] if setting.uvloop else maas_batch()
    )
    command = [
        *launcher,
        "run",
        str(tasks.manifest),
        "--out",
        str(out),
        "-c",
        str(setting.concurrency),
        *setting.run_args,
    ]
    child = measure(command, folder, env)
    check(child, "maas-batch", count_lines(out / "results.jsonl", '"succeeded"'), tasks.count)
    return child


def run_handwritten(tasks: Tasks, sim: Sim, setting: Setting, folder: Path) -> Child:
    answers = folder / "answers.jsonl"
    command = [
        *python_running(setting, ROOT / "bench" / "handwritten.py"),
        str(tasks.manifest),
        str(answers),
        "--base-url",
        sim.base_url,
        "--endpoint",
        ENDPOINT,
        "--concurrency",
        str(setting.concurrency),
    ]
    child = measure(command, folder, {"MAAS_API_KEY": "bench"})
    check(child, HANDWRITTEN, count_lines(answers, '"text"'), tasks.count)
    return child


def cookbook_peer(path: Path) -> Peer:
    def run_cookbook(tasks: Tasks, sim: Sim, setting: Setting, folder: Path) -> Child:
        saved = folder / "saved.jsonl"
        # no concurrency limit of its own: its request rate is set to what C requests in flight reach
        rpm = round(setting.concurrency / max(setting.latency, 0.001) * 60)
        command = [
            *python_running(setting, ROOT / "bench" / "cookbook_shim.py"),
            str(path),
            "--requests_filepath",
            str(tasks.requests),
            "--save_filepath",
            str(saved),
            "--request_url",
            f"{sim.base_url}/{ENDPOINT}/google/chat/completions",
            "--api_key",
            "bench",
            "--max_requests_per_minute",
            str(rpm),
            "--max_tokens_per_minute",
            str(rpm * 1000),
            "--token_encoding_name",
            "cl100k_base",
            "--max_attempts",
            "3",
            "--logging_level",
            "20",
        ]
        child = measure(command, folder)
        check(child, "cookbook", count_lines(saved, '"choices"'), tasks.count)
        return child

    return run_cookbook


def count_lines(path: Path, marker: str) -> int:
    if not path.exists():
        return 0
    with path.open() as lines:
        return sum(1 for line in lines if marker in line)


def check(child: Child, peer: str, done: int, expected: int) -> None:
    if child.code != 0 or done != expected:
        raise BenchFailed(
            f"{peer} exited {child.code} with {done} of {expected} answers written; its last output:\n"
            f"{child.output}"
        )


def measured_run(peer: str, runner: Peer, tasks: Tasks, sim: Sim, setting: Setting, folder: Path) -> Run:
    server_before = sim.cpu_seconds()
    child = runner(tasks, sim, setting, folder)
    server_after = sim.cpu_seconds()
    records = sim.records_since(child.started)
    answered = [r for r in records if r["status"] == 200]
    run = Run(peer, tasks.count, child.cpu, child.wall, child.peak_mb, len(answered))
    if server_before is not None and server_after is not None:
        run.server_cpu_s = server_after - server_before
    if records:
        first = min(r["time"] for r in records)
        run.first_request_s = first - child.started
        run.span_s = max(r["time"] + r["elapsed"] for r in records) - first
    shutil.rmtree(folder, ignore_errors=True)  # a round's output is not needed once counted
    return run


# -- the comparison ----------------------------------------------------------------------------------------


def compare(
    peers: dict[str, Peer], tasks: Tasks, setting: Setting, rounds: int, folder: Path
) -> dict[str, list[Run]]:
    """Every peer once per round, in turn, against one simulator."""
    runs: dict[str, list[Run]] = {name: [] for name in peers}
    with simulator(setting.latency, folder) as sim:
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
