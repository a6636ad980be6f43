"""A resume of a big run, the engine alone: N chat tasks of which DONE have a result line (of the tool's
own kind: 550 bytes, as a real chat run writes them), the rest sent through bench/stubbed_run.py (no HTTP).

    python bench/resume_1m.py                          # 1,000,000 tasks, 999,000 done (about 3 minutes)
    python bench/resume_1m.py --tasks 100000 --done 99000
    PYTHONPATH=/path/to/other/tree python bench/resume_1m.py     # another version's engine

Two resumes of the same directory, each in a child of its own, measured by os.wait4:
- `checked`: the plan is checked in full first (the first run of this manifest on this directory);
- `remembered`: the plan comes from DIR/.cache (the same command again, with the same tasks left).
For each: peak RSS, CPU, wall, and the first request's time from the child's start (the run log's first
`sent` line).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peer_runs import MODEL, child_env, write_tasks  # noqa: E402


def result_line(i: int) -> str:
    """A chat task's result line as the tool writes it (the simulator's answer)."""
    prompt = f"Summarise item number {i} in one sentence."
    line = {
        "id": f"t{i}",
        "kind": "chat",
        "status": "succeeded",
        "model": MODEL,
        "prompt": prompt,
        "params": {"model": MODEL},
        "files": [],
        "text": f'Simulated answer {i + 1} from {MODEL}: you said "{prompt[:30]}" and sent 0 images.',
        "finish_reason": "stop",
        "request_id": f"req_sim{i:08d}",
        "usage": {"input_tokens": 10, "output_tokens": 26, "total_tokens": 36},
        "cost": 6.8e-05,
        "attempts": 1,
        "endpoint": "ep",
        "seconds": 0.299,
        "finished_at": "2026-11-29T21:14:11.443+00:00",
        "request_sha256": f"{i:016x}",  # not the task's: every line is joined, as when it is
    }
    return json.dumps(line, ensure_ascii=False) + "\n"


def resume(manifest: Path, out: Path, done: int, label: str) -> dict[str, float | str]:
    """One resume of `out` with only its first `done` result lines kept; its figures."""
    results = out / "results.jsonl"
    with results.open("rb") as lines:  # cut after the first `done` lines, without holding them: a child
        end = sum(len(line) for _, line in zip(range(done), lines, strict=False))  # starts at our peak
    os.truncate(results, end)
    env = child_env(
        {"MAAS_API_KEY": "bench", "MAAS_BASE_URL": "http://127.0.0.1:1/v1/ai", "MAAS_ENDPOINT": "ep"}
    )
    env.setdefault("PYTHONPATH", str(HERE.parent))  # this tree's engine, unless another is named
    command = [sys.executable, str(HERE / "stubbed_run.py"), "run", str(manifest), "--out", str(out)]
    began = time.time()
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, "-c", "64", "--no-gallery", "--quiet"], env=env, stdout=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the {label} resume exited {os.waitstatus_to_exitcode(status)}")
    log = max((out / "runs").glob("*.jsonl"), key=lambda path: path.stat().st_mtime_ns)
    first_sent = next(
        (json.loads(line)["t"] for line in log.open() if line.startswith('{"event": "sent"')), None
    )
    return {
        "resume": label,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "wall_s": round(wall, 2),
        "first_request_s": round(first_sent - began, 2) if first_sent is not None else "none sent",
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--done", type=int, default=999_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="maas-resume-") as folder:
        manifest = write_tasks(Path(folder), args.tasks).manifest
        out = Path(folder) / "out"
        out.mkdir()
        with (out / "results.jsonl").open("w") as results:
            results.writelines(result_line(i) for i in range(args.done))
        print(f"{args.tasks:,} chat tasks, {args.done:,} done; the engine alone (bench/stubbed_run.py)")
        for label in ("checked", "remembered"):
            print(json.dumps(resume(manifest, out, args.done, label)))


if __name__ == "__main__":
    main()
