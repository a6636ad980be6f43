"""The plumbing of bench/peers.py: the simulator in its own process, one measured child (os.wait4), the same
chat tasks for every peer, and how each peer is started and checked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
    host: str = "127.0.0.1"

    def cpu_seconds(self) -> float | None:
        """The simulator's CPU so far (user + sys, from /proc), to tell when the server is the bottleneck."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1/ai"

    def records_since(self, since: float) -> list[dict[str, Any]]:
        """The simulator's records of requests that arrived at or after `since` (unix time)."""
        url = f"http://{self.host}:{self.port}/_sim/stats?records=1"
        with urllib.request.urlopen(url, timeout=60) as response:
            records: list[dict[str, Any]] = json.loads(response.read())["records"]
        return [r for r in records if r["time"] >= since]


@contextmanager
def simulator(latency: float, folder: Path, host: str = "127.0.0.1") -> Iterator[Sim]:
    """`maas-batch simulate` in its own process on a free port, stopped (SIGTERM) on the way out. A `host`
    other than 127.0.0.1 (say 127.0.0.2) makes maas-batch treat it as a remote server (proxies from the
    environment, as for the real API)."""
    port = free_port()
    errors = (folder / f"simulator-{port}.err").open("w+")
    process = subprocess.Popen(
        [PYTHON, "-m", "batch", "simulate", "--host", host, "--port", str(port), "--latency", str(latency)],
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
        yield Sim(port, process.pid, host)
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
    tail_s: float | None = None  # from the last answer's end to the child's exit (its page, last sync, exit)
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
    host: str = "127.0.0.1"  # the simulator's address (127.0.0.2: not this machine, to maas-batch)


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
        last = max(r["time"] + r["elapsed"] for r in records)
        run.span_s = last - first
        run.tail_s = child.started + child.wall - last
    shutil.rmtree(folder, ignore_errors=True)  # a round's output is not needed once counted
    return run
