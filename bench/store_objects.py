"""A run on S3 and what it leaves there: the objects under each folder after `run --out s3://...`, and the
time `status s3://...` then takes to assemble its view. Against moto's S3 server on loopback and the
simulator, both in this process.

    python bench/store_objects.py                      # 3,000 chat tasks, C=32, L=0.2 s
    python bench/store_objects.py --tasks 10000 --kill 20   # SIGKILL the run after 20 s, then count

Needs the [cloud] and [test] extras (s3fs, moto[server]).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batch.simulator import SimConfig, simulator_in_thread  # noqa: E402

KEY = "bench-key-not-secret"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--kill", type=float, default=None, help="SIGKILL the run after this many seconds")
    args = parser.parse_args()

    import logging

    import fsspec
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    aws = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    fs = fsspec.filesystem("s3", endpoint_url=endpoint, key="bench", secret="bench")
    fs.mkdir("bench")
    url = "s3://bench/out"
    try:
        with (
            tempfile.TemporaryDirectory() as folder,
            simulator_in_thread(SimConfig(api_key=KEY, latency=args.latency)) as sim,
        ):
            manifest = Path(folder) / "chat.jsonl"
            manifest.write_text(
                "".join(
                    f'{{"kind": "chat", "id": "q-{i}", "model": "gemini-2.5-flash", "prompt": "q {i}"}}\n'
                    for i in range(args.tasks)
                )
            )
            env = {
                **os.environ,
                **aws,
                "TMPDIR": folder,
                "MAAS_API_KEY": KEY,
                "MAAS_BASE_URL": sim.base_url,
                "MAAS_ENDPOINT": "ep",
            }
            command = [
                sys.executable,
                "-m",
                "batch",
                "run",
                str(manifest),
                "--out",
                url,
                "-c",
                str(args.concurrency),
            ]
            started = time.monotonic()
            run = subprocess.Popen([*command, "--quiet"], env=env, stdout=subprocess.DEVNULL)
            try:
                run.wait(timeout=args.kill)
            except subprocess.TimeoutExpired:
                run.send_signal(signal.SIGKILL)
                run.wait()
            print(
                f"run: {args.tasks:,} chat tasks, C={args.concurrency}, L={args.latency} s: "
                f"{time.monotonic() - started:.1f} s, exit {run.returncode}"
            )
            fs.invalidate_cache()
            counts = Counter(name[len("bench/out/") :].split("/")[0] for name in fs.find("bench/out"))
            print(
                "objects:",
                ", ".join(f"{folder} {n:,}" for folder, n in sorted(counts.items())),
                f"(total {sum(counts.values()):,})",
            )
            started = time.monotonic()
            status = subprocess.run(
                [sys.executable, "-m", "batch", "status", url], env=env, capture_output=True, text=True
            )
            print(f"status {url}: {time.monotonic() - started:.2f} s, exit {status.returncode}")
            print("\n".join("  " + line for line in status.stdout.splitlines()[:3]))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
