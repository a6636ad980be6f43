"""How long `maas-batch validate` takes on a manifest of 1,000,000 tasks, and its peak memory.

    python bench/validate_1m.py [--tasks 1000000]

Two shapes of manifest, both streamed (never held in memory):
  prompts  one entry with prompts_file: a text file of N distinct prompts
  matrix   one entry with a 1000 x (N/1000) matrix
Each is validated in a fresh subprocess; its peak RSS is the child's own ru_maxrss (os.wait4).
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

# fmt: off
WORDS = (
    "fox", "owl", "whale", "heron", "lynx", "otter", "crane", "bison", "moth", "wren", "hare", "ibex", "newt",
    "swan", "vole", "yak", "red", "amber", "teal", "violet", "ochre", "slate", "ivory", "coral", "misty",
    "sunlit", "frozen", "ancient", "quiet",
)
# fmt: on


def make_prompts(folder: Path, count: int) -> Path:
    with (folder / "prompts.txt").open("w", encoding="utf-8") as handle:
        for i in range(count):
            a, b, c = WORDS[i % 29], WORDS[(i // 29) % 29], WORDS[(i // 841) % 29]
            handle.write(f"A {a} {b} beside a {c} lake, study number {i}\n")
    manifest = folder / "prompts.yaml"
    manifest.write_text(
        "defaults: {model: gpt-image-1, size: 1024x1024, quality: low}\n"
        "tasks:\n  - {kind: generate, prompts_file: prompts.txt}\n"
    )
    return manifest


def make_matrix(folder: Path, count: int) -> Path:
    rows = 1000
    cols = max(1, count // rows)
    manifest = folder / "matrix.yaml"
    manifest.write_text(
        "tasks:\n  - kind: chat\n    model: gemini-2.5-flash\n"
        f"    matrix: {{a: {list(range(rows))}, b: {list(range(cols))}}}\n"
        '    prompt: "Describe combination {a} x {b} in one line"\n'
    )
    return manifest


def measure(manifest: Path) -> tuple[float, float, str]:
    env = {**os.environ, "MAAS_ENDPOINT": "bench"}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "batch", "validate", str(manifest)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    out = process.stdout.read().decode() if process.stdout else ""
    err = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"validate failed:\n{out}{err}")
    return seconds, usage.ru_maxrss / 1024, out.splitlines()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, make in (("prompts", make_prompts), ("matrix", make_matrix)):
            manifest = make(folder, args.tasks)
            seconds, peak_mb, first = measure(manifest)
            rate = args.tasks / seconds
            print(
                f"{name:8} {first.split(': ', 1)[1]:>24}  {seconds:7.1f} s  {rate:9,.0f} tasks/s  "
                f"peak RSS {peak_mb:6.1f} MB"
            )


if __name__ == "__main__":
    main()
