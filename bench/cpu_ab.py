"""maas-batch's own CPU, one version against another, in alternating runs on the same machine at the same
time: what a change to the per-task path bought, when the machine is too noisy for figures taken apart.

    python bench/cpu_ab.py 9f75b3b HEAD            # two commits: 5,000 chat tasks, C=64, L=0.2 s, 3 rounds
    python bench/cpu_ab.py 9f75b3b . --tasks 2000  # `.`: the working tree as it is now
    python bench/cpu_ab.py 9f75b3b HEAD --host 127.0.0.2  # a server not on this machine, to maas-batch
    python bench/cpu_ab.py b7f89a2 HEAD --no-http --rounds 7  # the engine alone (bench/stubbed_run.py)

Each version's `batch/` and `jobs/` are exported (`git archive`) into a temporary folder and compiled; each
run is `python -m batch run MANIFEST --out DIR -c C` with PYTHONPATH on that folder, with this Python and
its installed packages, against one `maas-batch simulate` (bench/peer_runs.py). CPU (user + sys) comes from
os.wait4 of each run.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from peer_runs import ENDPOINT, PYTHON, ROOT, free_port, measure, simulator, write_tasks

STUBBED_RUN = Path(__file__).with_name("stubbed_run.py")


def export(version: str, folder: Path) -> Path:
    """The source of `version` (a git revision, or `.` for the working tree) in a folder of its own."""
    if version == ".":
        return ROOT
    tree = folder / version.replace("/", "_")
    tree.mkdir()
    archive = subprocess.run(
        ["git", "archive", version, "batch", "jobs"], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    # the kinds as the install puts them (batch/jobs): else an editable install's finder maps batch.jobs to
    # this checkout's jobs/, whatever PYTHONPATH says, and the version runs with today's kinds
    (tree / "batch" / "jobs").symlink_to(Path("..") / "jobs", target_is_directory=True)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("versions", nargs="+", help="git revisions, or . for the working tree")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the simulator's address; 127.0.0.2 is not loopback to maas-batch, which then reads proxies "
        "from the environment as for the real API",
    )
    parser.add_argument(
        "--no-http",
        action="store_true",
        help="answer every request in the process (bench/stubbed_run.py), with no server running: the "
        "engine's own CPU, without aiohttp's and the server's, whose noise hides a change of a few percent",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="maas-cpu-ab-") as temporary:
        folder = Path(temporary)
        trees = {version: export(version, folder) for version in args.versions}
        for tree in trees.values():
            subprocess.run(
                [PYTHON, "-m", "compileall", "-q", str(tree / "batch"), str(tree / "jobs")],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        tasks = write_tasks(folder, args.tasks)
        cpu: dict[str, list[float]] = {version: [] for version in trees}
        with contextlib.ExitStack() as stack:
            if args.no_http:  # no server at all: a request that was not stubbed fails the run
                base_url = f"http://127.0.0.1:{free_port()}/v1/ai"
            else:
                base_url = stack.enter_context(simulator(args.latency, folder, args.host)).base_url
            for round_number in range(1, args.rounds + 1):
                for version, tree in trees.items():
                    where = folder / f"run-{round_number}-{list(trees).index(version)}"  # cwd, output
                    env = {
                        "MAAS_API_KEY": "bench",
                        "MAAS_BASE_URL": base_url,
                        "MAAS_ENDPOINT": ENDPOINT,
                        "PYTHONPATH": str(tree),
                    }
                    entry = [str(STUBBED_RUN)] if args.no_http else ["-m", "batch"]
                    command = [PYTHON, *entry, "run", str(tasks.manifest), "--out", str(where / "out")]
                    child = measure([*command, "-c", str(args.concurrency)], where, env)
                    if child.code != 0:
                        raise SystemExit(f"{version} exited {child.code}:\n{child.output}")
                    cpu[version].append(child.cpu)
                    shutil.rmtree(where)
                    print(
                        f"round {round_number} {version:>12}  cpu {child.cpu:6.2f} s  wall {child.wall:.1f} s"
                    )
        setting = "no HTTP" if args.no_http else f"L={args.latency} s"
        print(f"\n{args.tasks:,} chat tasks, C={args.concurrency}, {setting}; CPU s of each round")
        for version, figures in cpu.items():
            shown = ", ".join(f"{figure:.2f}" for figure in figures)
            print(f"{version:>12}: median {statistics.median(figures):.2f}  ({shown})")


if __name__ == "__main__":
    main()
