"""The benchmark suite: every speed and memory figure of BENCHMARKS.md, in one command.

    python bench/run.py            # all sections, about 7 minutes on 2 cores
    python bench/run.py chat rpm   # some of them

The simulator runs in its own process (`maas-batch simulate`) with fixed latency, so that the tool is
measured, not the server. The tool and the baseline (bench/baseline.py) run as subprocesses; their CPU time
and peak RSS come from os.wait4, their throughput and event-loop lag from the run log's end line. Figures
are printed and written to bench/results.json.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
RESULTS: dict[str, Any] = {}


# -- plumbing ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Sim:
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/ai"

    def stats(self, records: bool = False) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/_sim/stats?records={int(records)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def set_max_inflight(self, value: int) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/_sim/limits",
            method="POST",
            data=json.dumps({"max_inflight": value}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).read()


@contextmanager
def simulator(*flags: str) -> Iterator[Sim]:
    port = free_port()
    process = subprocess.Popen(
        [PYTHON, "-m", "batch", "simulate", "--port", str(port), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening" in line, line
        yield Sim(port)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


@dataclass
class Measured:
    code: int
    wall: float
    cpu: float
    peak_mb: float
    stdout: str


def measure(
    command: list[str],
    env: dict[str, str] | None = None,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> Measured:
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.DEVNULL, cwd=ROOT, env={**os.environ, **(env or {})}
        )
        if on_start is not None:
            on_start(process)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode()
    return Measured(
        os.waitstatus_to_exitcode(status), wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, text
    )


def run_tool(
    manifest: Path,
    out: Path,
    sim: Sim,
    *args: str,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> tuple[Measured, dict[str, Any]]:
    env = {"MAAS_API_KEY": "bench", "MAAS_BASE_URL": sim.base_url, "MAAS_ENDPOINT": "ep"}
    measured = measure(
        [PYTHON, "-m", "batch", "run", str(manifest), "--out", str(out), "--quiet", *args], env, on_start
    )
    if measured.code not in (0, 75):
        raise SystemExit(f"maas-batch exited {measured.code}:\n{measured.stdout}")
    logs = sorted((out / "runs").glob("*.jsonl"))
    end = json.loads(logs[-1].read_text().splitlines()[-1]) if logs else {}
    return measured, end


def run_baseline(requests: Path, out: Path, sim: Sim, concurrency: int) -> Measured:
    return measure(
        [
            PYTHON,
            str(ROOT / "bench" / "baseline.py"),
            str(requests),
            str(out),
            "--base-url",
            sim.base_url,
            "--concurrency",
            str(concurrency),
        ]
    )


def chat_tasks(folder: Path, count: int, name: str = "chat") -> tuple[Path, Path]:
    """The same chat tasks as a maas-batch manifest and as the baseline's request list."""
    manifest, requests = folder / f"{name}.jsonl", folder / f"{name}-requests.jsonl"
    with manifest.open("w") as tasks, requests.open("w") as bodies:
        for i in range(count):
            prompt = f"Summarise item number {i} in one sentence."
            tasks.write(
                json.dumps(
                    {"kind": "chat", "id": f"{name}-{i}", "model": "gemini-2.5-flash", "prompt": prompt}
                )
                + "\n"
            )
            bodies.write(
                json.dumps(
                    {
                        "id": f"{name}-{i}",
                        "path": "google/chat/completions",
                        "body": {
                            "model": "gemini-2.5-flash",
                            "messages": [{"role": "user", "content": prompt}],
                        },
                    }
                )
                + "\n"
            )
    return manifest, requests


def image_tasks(folder: Path, count: int) -> tuple[Path, Path]:
    manifest, requests = folder / "images.jsonl", folder / "images-requests.jsonl"
    with manifest.open("w") as tasks, requests.open("w") as bodies:
        for i in range(count):
            body = {"model": "gpt-image-1", "prompt": f"A landscape study, number {i}", "size": "1024x1024"}
            tasks.write(json.dumps({"kind": "generate", "id": f"img-{i}", **body}) + "\n")
            bodies.write(json.dumps({"id": f"img-{i}", "path": "images/generations", "body": body}) + "\n")
    return manifest, requests


def report(section: str, **figures: Any) -> None:
    RESULTS[section] = figures
    width = max(len(k) for k in figures)
    print(f"\n[{section}]")
    for name, value in figures.items():
        shown = f"{value:,.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else value
        print(f"  {name:<{width}}  {shown}")
    sys.stdout.flush()


# -- the sections ------------------------------------------------------------------------------------------

CONCURRENCY = 64


def bench_chat(folder: Path) -> None:
    """Chat at C=64, L=0.2 s: the share of C/L reached, and the tool's CPU and wall against the baseline."""
    latency, count = 0.2, 3000
    manifest, requests = chat_tasks(folder, count)
    with simulator("--latency", str(latency)) as sim:
        tool, end = run_tool(manifest, folder / "chat-out", sim, "--concurrency", str(CONCURRENCY))
        base = run_baseline(requests, folder / "chat-baseline", sim, CONCURRENCY)
    ceiling = CONCURRENCY / latency
    rate = count / end["seconds"]
    base_rate = count / json.loads(base.stdout.strip().splitlines()[-1])["seconds"]
    report(
        "chat",
        tasks=count,
        latency_s=latency,
        concurrency=CONCURRENCY,
        ceiling_per_s=ceiling,
        baseline_share_of_ceiling=f"{base_rate / ceiling:.1%}",
        tool_per_s=round(rate, 1),
        share_of_ceiling=f"{rate / ceiling:.1%}",
        target=">= 95%",
        tool_cpu_s_per_1000=round(tool.cpu / count * 1000, 3),
        baseline_cpu_s_per_1000=round(base.cpu / count * 1000, 3),
        cpu_ratio=f"{tool.cpu / base.cpu:.2f}x",
        cpu_target="<= 1.2x",
        tool_wall_s=round(tool.wall, 2),
        baseline_wall_s=round(base.wall, 2),
        wall_ratio=f"{tool.wall / base.wall:.2f}x",
        loop_lag_p99_ms=end.get("loop_lag_p99_ms"),
    )


def bench_images(folder: Path) -> None:
    """Images of a real model's size (about 2 MB of PNG, from the simulator's cache) at C=64, L=5 s: still a
    fraction of a real model's 10-60 s. (At L=2 s on 2 cores shared with the simulator, 64 answers of 2.7 MB
    arriving together cost the tool and the plain baseline alike some 15% of the ceiling.)"""
    latency, count = 5.0, 384
    manifest, requests = image_tasks(folder, count)
    with simulator("--latency", str(latency), "--image-mode", "realistic") as sim:
        tool, end = run_tool(manifest, folder / "img-out", sim, "--concurrency", str(CONCURRENCY))
        bare, _ = run_tool(
            manifest, folder / "img-bare", sim, "--concurrency", str(CONCURRENCY), "--no-gallery"
        )
        base = run_baseline(requests, folder / "img-baseline", sim, CONCURRENCY)
    sizes = [p.stat().st_size for p in (folder / "img-out" / "images").iterdir()]
    ceiling = CONCURRENCY / latency
    rate = count / end["seconds"]
    report(
        "images",
        tasks=count,
        latency_s=latency,
        concurrency=CONCURRENCY,
        ceiling_per_s=ceiling,
        image_mb=f"{min(sizes) / 2**20:.2f}-{max(sizes) / 2**20:.2f}",
        tool_per_s=round(rate, 1),
        share_of_ceiling=f"{rate / ceiling:.1%}",
        target=">= 90%",
        loop_lag_p99_ms=end.get("loop_lag_p99_ms"),
        lag_target="< 20 ms",
        tool_cpu_s_per_1000=round(tool.cpu / count * 1000, 2),
        baseline_cpu_s_per_1000=round(base.cpu / count * 1000, 2),
        cpu_ratio=f"{tool.cpu / base.cpu:.2f}x",
        # the gallery's thumbnails are work the baseline does not do: without them, like for like
        no_gallery_cpu_s_per_1000=round(bare.cpu / count * 1000, 2),
        no_gallery_cpu_ratio=f"{bare.cpu / base.cpu:.2f}x",
        tool_wall_s=round(tool.wall, 2),
        baseline_wall_s=round(base.wall, 2),
    )


def bench_rpm(folder: Path) -> None:
    """--rpm against a simulator enforcing the same limit over a sliding minute."""
    rpm, count = 1200, 1500
    manifest, _ = chat_tasks(folder, count, "rpm")
    with simulator("--latency", "0.05", "--rpm", str(rpm)) as sim:
        _, end = run_tool(manifest, folder / "rpm-out", sim, "--concurrency", "32", "--rpm", str(rpm))
        stats = sim.stats()
    throttled = stats["status_counts"].get("429", 0)
    per_minute = count / end["seconds"] * 60
    report(
        "rpm",
        limit_per_minute=rpm,
        tasks=count,
        seconds=round(end["seconds"], 1),
        used_per_minute=round(per_minute),
        share_of_limit=f"{per_minute / rpm:.1%}",
        target=">= 95%",
        answered_429=throttled,
        share_429=f"{throttled / stats['requests_total']:.2%}",
        target_429="< 1%",
    )


def bench_auto(folder: Path) -> None:
    """--concurrency auto against a server that refuses (429) above K requests in flight."""
    k, latency, count = 24, 0.2, 2400
    figures: dict[str, Any] = {"hidden_limit_k": k, "latency_s": latency, "tasks": count}
    for mode in (str(k), "auto"):
        manifest, _ = chat_tasks(folder, count, f"auto-{mode}")
        with simulator("--latency", str(latency), "--max-inflight", str(k)) as sim:
            _, end = run_tool(
                manifest, folder / f"auto-{mode}-out", sim, "--concurrency", mode, "--backoff", "0.05"
            )
            stats = sim.stats()
        figures[f"{'fixed_k' if mode != 'auto' else 'auto'}_per_s"] = round(count / end["seconds"], 1)
        figures[f"{'fixed_k' if mode != 'auto' else 'auto'}_429"] = stats["status_counts"].get("429", 0)
        if mode == "auto":
            figures["auto_settled_on"] = end.get("concurrency")
            figures["share_429"] = f"{stats['status_counts'].get('429', 0) / stats['requests_total']:.2%}"
    figures["auto_vs_fixed"] = f"{figures['auto_per_s'] / figures['fixed_k_per_s']:.1%}"
    figures["targets"] = ">= 90% of fixed K, < 5% answered 429"
    report("auto", **figures)
    bench_auto_changes(folder)


def bench_auto_changes(folder: Path) -> None:
    """K changes mid-run (24, then 12, then 36): throughput in each phase against its ideal K/L."""
    latency, phases = 0.2, [(24, 8.0), (12, 8.0), (36, 8.0)]
    manifest, _ = chat_tasks(folder, 4000, "change")
    with simulator("--latency", str(latency), "--max-inflight", str(phases[0][0])) as sim:
        marks: list[float] = []

        def change_limits() -> None:
            import threading

            def steps() -> None:
                for k, seconds in phases:
                    sim.set_max_inflight(k)
                    marks.append(time.time())
                    time.sleep(seconds)
                sim.set_max_inflight(phases[-1][0])

            threading.Thread(target=steps, daemon=True).start()

        process_args = ("--concurrency", "auto", "--backoff", "0.05")
        env = {"MAAS_API_KEY": "bench", "MAAS_BASE_URL": sim.base_url, "MAAS_ENDPOINT": "ep"}
        command = [
            PYTHON,
            "-m",
            "batch",
            "run",
            str(manifest),
            "--out",
            str(folder / "change-out"),
            "--quiet",
            *process_args,
        ]
        with subprocess.Popen(
            command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
        ) as process:
            # wait for the run to start sending, then step K through the phases
            deadline = time.time() + 60
            while sim.stats()["requests_total"] == 0 and time.time() < deadline:
                time.sleep(0.05)
            change_limits()
            time.sleep(sum(seconds for _, seconds in phases))
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        records = sim.stats(records=True)["records"]
    figures: dict[str, Any] = {}
    for (k, seconds), start in zip(phases, marks, strict=True):
        window = [r for r in records if start + 1.0 <= r["time"] < start + seconds]  # 1 s to adapt
        ok = sum(1 for r in window if r["status"] == 200)
        refused = sum(1 for r in window if r["status"] == 429)
        rate = ok / (seconds - 1.0)
        figures[f"k={k}"] = (
            f"{rate:.1f}/s = {rate / (k / latency):.0%} of K/L; "
            f"{refused / max(1, len(window)):.1%} answered 429"
        )
    report("auto_changes", **figures)


def bench_memory(folder: Path) -> None:
    """Peak RSS for 10,000 and 100,000 chat tasks against a zero-latency simulator."""
    figures: dict[str, Any] = {}
    with simulator("--latency", "0") as sim:
        for count in (10_000, 100_000):
            manifest, _ = chat_tasks(folder, count, f"mem{count}")
            measured, _ = run_tool(manifest, folder / f"mem{count}-out", sim, "--concurrency", "64")
            figures[f"peak_rss_mb_{count}"] = round(measured.peak_mb, 1)
            figures[f"seconds_{count}"] = round(measured.wall, 1)
    figures["difference_mb"] = round(figures["peak_rss_mb_100000"] - figures["peak_rss_mb_10000"], 1)
    figures["target"] = "< 20 MB"
    report("memory", **figures)


def bench_resume(folder: Path) -> None:
    """Resuming a run in which 1,000,000 tasks are done: time from start to the first new request."""
    side, extra = 1000, 1
    manifest = folder / "resume.yaml"
    manifest.write_text(
        "tasks:\n  - kind: chat\n    model: gemini-2.5-flash\n    id: 't-{a}-{b}'\n"
        "    prompt: 'Item {a}, variant {b}'\n"
        f"    matrix: {{a: {list(range(side))}, b: {list(range(side + extra))}}}\n"
    )
    out = folder / "resume-out"
    out.mkdir()
    with (out / "results.jsonl").open("w") as results:  # a million tasks already done
        for a in range(side):
            for b in range(side):
                results.write(f'{{"id": "t-{a}-{b}", "kind": "chat", "status": "succeeded"}}\n')
    with simulator("--latency", "0.2") as sim:
        # a first run validates the whole manifest (and remembers the plan); stop it once it sends
        first, _ = run_tool(
            manifest,
            out,
            sim,
            "--concurrency",
            "4",
            "--grace",
            "0",
            on_start=lambda process: wait_then_stop(sim, 1, process),
        )
        before = sim.stats()["requests_total"]
        started = time.perf_counter()
        seen: list[float] = []
        second, _ = run_tool(
            manifest,
            out,
            sim,
            "--concurrency",
            "4",
            "--grace",
            "0",
            on_start=lambda process: seen.append(wait_then_stop(sim, before + 1, process) - started),
        )
    report(
        "resume",
        tasks=side * (side + extra),
        done_before=side * side,
        first_run_validation_s=round(first.wall, 1),
        resumed_first_request_s=round(seen[0], 2),
        target="< 10 s",
        resumed_peak_rss_mb=round(second.peak_mb, 1),
    )


def wait_then_stop(sim: Sim, requests: int, process: subprocess.Popen[bytes]) -> float:
    """Wait until the simulator has seen `requests` requests (in flight or done), then SIGTERM the run.
    Returns the moment the request was seen."""
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        stats = sim.stats()
        if stats["requests_total"] + stats["inflight"] >= requests:
            seen = time.perf_counter()
            process.send_signal(signal.SIGTERM)
            return seen
        time.sleep(0.01)
    raise SystemExit("the run sent nothing within 300 s")


SECTIONS = {
    "chat": bench_chat,
    "images": bench_images,
    "rpm": bench_rpm,
    "auto": bench_auto,
    "memory": bench_memory,
    "resume": bench_resume,
}


def main() -> None:
    chosen = sys.argv[1:] or list(SECTIONS)
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="maas-bench-"))
    try:
        for name in chosen:
            SECTIONS[name](folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    RESULTS["machine"] = {"cores": os.cpu_count(), "python": platform.python_version()}
    path = ROOT / "bench" / "results.json"
    try:  # the sections not run this time keep their last figures
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = {}
    if set(chosen) == set(SECTIONS):
        RESULTS["total_seconds"] = round(time.perf_counter() - started, 1)
    path.write_text(json.dumps({**kept, **RESULTS}, indent=2) + "\n")
    print(f"\nall figures in {time.perf_counter() - started:.0f} s; written to bench/results.json")


if __name__ == "__main__":
    main()
