"""`maas-batch retry-failed DIR`: the last recorded `run` into DIR, again, with --retry-failed."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from batch.cli.inspect import existing
from batch.errors import UsageError
from batch.output.store import RUNS, read_lines


def recorded_run(args: argparse.Namespace) -> list[str]:
    """The command line of DIR's last run, with --retry-failed and any flags given after DIR; the working
    folder becomes that run's, so that its relative paths mean what they meant."""
    recorded = None
    for path in sorted((existing(args.out) / RUNS).glob("*.jsonl"), reverse=True):
        start = next(iter(read_lines(path)), {})
        if isinstance(start.get("argv"), list) and start["argv"][:1] == ["run"]:
            recorded = start
            break
    if recorded is None:
        raise UsageError(
            f"no run of maas-batch is recorded in {args.out}; use `maas-batch run ... --retry-failed`"
        )
    # DIR as given now, wherever the recorded run wrote: a later --out wins in argparse
    argv = _without_out([str(a) for a in recorded["argv"] if a != "--retry-failed"])
    argv += ["--out", str(args.out.resolve()), "--retry-failed", *args.extra]
    print(f"maas-batch: in {recorded['cwd']}: maas-batch {shlex.join(argv)}", file=sys.stderr)
    try:
        os.chdir(recorded["cwd"])
    except OSError as exc:
        raise UsageError(
            f"the recorded run's folder {recorded['cwd']} is gone ({exc.strerror or exc}); "
            "use `maas-batch run ... --retry-failed`"
        ) from exc
    return argv


def _without_out(argv: list[str]) -> list[str]:
    """A recorded command line without its --out DIR (retry-failed names DIR anew; printed once)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--out", "-o"):
            skip = True
        elif not (arg.startswith("--out=") or (arg.startswith("-o") and not arg.startswith("--"))):
            kept.append(arg)
    return kept
