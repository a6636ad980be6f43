"""`maas-batch retry-failed DIR`: the last recorded `run` into DIR, again, with --retry-failed; on a
sharded batch, its shards that hold failures queued again for the workers (batch.cli.cluster). DIR may be
an s3:// output: the runs recorded there, read through a local view of the store."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from batch.cli.grammar import run_flags_in_full
from batch.cli.inspect import existing
from batch.cluster.plan import is_sharded
from batch.errors import UsageError
from batch.output.store import RUNS, read_lines
from batch.values import StoreUrl


def retry_failed(args: argparse.Namespace, main: Callable[[list[str]], int]) -> int:
    """`retry-failed DIR`; `main` runs the command line it rebuilds."""
    if not isinstance(args.out, StoreUrl):
        return _queue_failed(args) if is_sharded(args.out) else main(recorded_run(args))
    from batch.output.remote import view

    with view(args.out) as folder:
        if is_sharded(folder):
            return _queue_failed(argparse.Namespace(**{**vars(args), "out": folder, "url": str(args.out)}))
        argv = recorded_run(args, folder)
    return main(argv)


def _queue_failed(args: argparse.Namespace) -> int:
    """A batch in shards: its failures are sent again by the workers."""
    from batch.cli.cluster import retry_failed as queue_failed

    return queue_failed(args)


def recorded_run(args: argparse.Namespace, runs_in: Path | None = None) -> list[str]:
    """The command line of DIR's last run (as recorded in `runs_in`, DIR by default: a store's view), with
    --retry-failed and any flags given after DIR; the working folder becomes that run's, so that its
    relative paths mean what they meant."""
    recorded = None
    for path in sorted(((runs_in or existing(args.out)) / RUNS).glob("*.jsonl"), reverse=True):
        start = next(iter(read_lines(path)), {})
        if isinstance(start.get("argv"), list) and start["argv"][:1] == ["run"]:
            recorded = start
            break
    if recorded is None:
        raise UsageError(
            f"no run of maas-batch is recorded in {args.out}; use `maas-batch run ... --retry-failed`"
        )
    # each flag under its full name, as argparse read it: a run recorded before they were kept so (its
    # `--dead TIME`), and the flags given now (`retry-failed DIR --dead 09:00`), are found by name
    extra = run_flags_in_full([str(a) for a in args.extra])
    moved = [a for a in extra if a == "--out" or a.startswith("--out=") or _short_out(a)]
    if moved:  # the run went on in another DIR, sent none of DIR's failures, and exited 0
        raise UsageError(
            f"retry-failed sends the failed tasks of {args.out} again into {args.out}: {moved[0]} is not "
            "taken after DIR (to begin afresh elsewhere, `maas-batch run MANIFEST --out OTHER`)"
        )
    recorded_argv = run_flags_in_full([str(a) for a in recorded["argv"]])
    # DIR as given now, wherever the recorded run wrote: a later --out wins in argparse
    argv = _without_out([a for a in recorded_argv if a != "--retry-failed"])
    argv = _without_past_deadline(argv, extra)
    out = args.out if isinstance(args.out, StoreUrl) else args.out.resolve()
    argv += ["--out", str(out), "--retry-failed", *extra]
    print(f"maas-batch: in {recorded['cwd']}: maas-batch {shlex.join(argv)}", file=sys.stderr)
    if recorded.get("passwords_left_out") and not _flag_values(extra, "--redis"):
        print(
            "maas-batch: the recorded command's URL passwords are not kept: give them again after DIR "
            "(`--redis redis://:PASSWORD@host`)",
            file=sys.stderr,
        )
    try:
        os.chdir(recorded["cwd"])
    except OSError as exc:
        raise UsageError(
            f"the recorded run's folder {recorded['cwd']} is gone ({exc.strerror or exc}); "
            "use `maas-batch run ... --retry-failed`"
        ) from exc
    return argv


def _short_out(arg: str) -> bool:
    """Whether `arg` gives -o: alone, with its value (`-oDIR`), or after other short switches (`-vo`,
    `-qvoDIR`: argparse reads -q, -v, then -o)."""
    if not arg.startswith("-") or arg.startswith("--"):
        return False
    switches = arg[1:]
    for index, letter in enumerate(switches):
        if letter == "o":
            return True
        if letter not in "qv" or index == len(switches) - 1:
            return False  # a short flag with a value (-c 8, -c8): what follows is its value
    return False


def _flag_values(argv: list[str], flag: str) -> list[tuple[int, int, str]]:
    """Where `flag` is in `argv`: (first index, count of items, value), for `--flag V` and `--flag=V`."""
    found = []
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            found.append((index, 2, argv[index + 1]))
        elif arg.startswith(flag + "="):
            found.append((index, 1, arg.partition("=")[2]))
    return found


def _without_past_deadline(argv: list[str], extra: list[str]) -> list[str]:
    """The recorded --deadline left out where it cannot apply again: the retry gives its own --deadline
    (argparse reads the recorded value first, and refused it when past), or it names a moment already
    past (`2026-12-01T07:00`; a time of day, `07:00`, is the next one, as when it was given). Otherwise a
    retry of a run with a past deadline was refused for good (64). A --max-duration given to the retry
    keeps a recorded deadline still ahead: the run ends at the earlier of the two."""
    from batch.values import parse_deadline

    given = bool(_flag_values(extra, "--deadline"))
    for index, count, value in reversed(_flag_values(argv, "--deadline")):
        try:
            parse_deadline(value)
            past = False
        except ValueError:
            past = True
        if given or past:
            if past and not given:
                print(
                    f"maas-batch: the recorded --deadline {value} is past: retried without it",
                    file=sys.stderr,
                )
            del argv[index : index + count]
    return argv


def _without_out(argv: list[str]) -> list[str]:
    """A recorded command line without its --out DIR (retry-failed names DIR anew; printed once) and its
    --stage DIR (a run on a store leaves that folder behind, and a new run wants a new or empty one)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--out", "-o", "--stage"):
            skip = True
        elif not (
            arg.startswith(("--out=", "--stage=")) or (arg.startswith("-o") and not arg.startswith("--"))
        ):
            kept.append(arg)
    return kept
