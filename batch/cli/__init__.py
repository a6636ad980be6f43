"""The `maas-batch` command: a thin layer over the library. Flags and environment are read here (and in
cli_run.py, the run command) and passed down as frozen settings. The grammar is in options.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from batch.cli.grammar import build_parser, parse_endpoints, parse_overrides
from batch.config import Options, endpoint_for, env, price_table
from batch.defaults import DEFAULT_BASE_URL
from batch.errors import BatchError, ConfigError, DirLockedError, ManifestError, OutputError, UsageError
from batch.exitcodes import (
    EXIT_CONFIG,
    EXIT_DATAERR,
    EXIT_FAILED,
    EXIT_IOERR,
    EXIT_OK,
    EXIT_TEMPFAIL,
    EXIT_USAGE,
)

if TYPE_CHECKING:  # the HTTP stack is imported only by the commands that use it: a fast start
    from batch.running.job import CheckedManifest

log = logging.getLogger("batch.cli")


def main(argv: Sequence[str] | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        # Outside a run's dispatch (validating, opening DIR): nothing was sent, nothing half written.
        print("maas-batch: interrupted", file=sys.stderr)
        return EXIT_TEMPFAIL
    except BrokenPipeError:
        # stdout closed early (`maas-batch validate --show 100 | head`): not an error. Point stdout at
        # /dev/null so that Python's final flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {
        "validate": _validate,
        "status": _status,
        "report": _report,
        "export": _export,
        "gallery": _gallery,
        "retry-failed": _retry_failed,
        "simulate": _simulate,
    }
    try:
        configure_logging(args)
        if args.command == "run":
            from batch.cli.run import run

            return run(args, argv)
        return commands[args.command](args)
    except UsageError as exc:
        print(f"maas-batch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ManifestError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        if exc.more:
            print(f"... and {exc.more} more problems", file=sys.stderr)
        print("nothing was sent", file=sys.stderr)
        return EXIT_DATAERR
    except ConfigError as exc:
        print(f"maas-batch: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except DirLockedError as exc:
        print(f"maas-batch: {exc}", file=sys.stderr)
        return EXIT_TEMPFAIL
    except OutputError as exc:
        print(f"maas-batch: {exc}", file=sys.stderr)
        return EXIT_IOERR
    except BatchError as exc:  # pragma: no cover - every BatchError has its own branch above
        print(f"maas-batch: {exc}", file=sys.stderr)
        return EXIT_FAILED


def configure_logging(args: argparse.Namespace) -> None:
    """Log lines to stderr (and to --log-file): the library only gets loggers, the command sets them up."""
    level = logging.INFO
    if getattr(args, "quiet", False):
        level = logging.WARNING
    if getattr(args, "verbose", False):
        level = logging.DEBUG
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    log_file = getattr(args, "log_file", None)
    if log_file is not None:
        try:
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot open the log file {log_file}: {exc.strerror or exc}") from exc
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger("batch")
    for old in root.handlers:
        old.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    root.propagate = False


def check(
    args: argparse.Namespace, env_endpoint: str | None, cache: Path | None = None
) -> CheckedManifest | int:
    """The checked manifest, or (after printing every problem) the exit code that refuses it."""
    from batch.manifest.tasks import BuildSettings
    from batch.running.job import check as check_manifest
    from jobs import registry

    build = BuildSettings(
        overrides=parse_overrides(args.overrides),
        endpoints=parse_endpoints(args.endpoints),
        env_endpoint=env_endpoint,
    )
    checked = check_manifest(args.manifest, build, registry(), cache)
    plan = checked.plan
    if plan.ok:
        return checked
    for problem in plan.problems:
        print(plan.describe(problem), file=sys.stderr)
    if plan.dropped:
        print(f"... and {plan.dropped} more problems", file=sys.stderr)
    count = len(plan.problems) + plan.dropped
    print(f"{args.manifest}: {count} problem{'s' if count != 1 else ''}; nothing was sent", file=sys.stderr)
    return EXIT_CONFIG if plan.config_only else EXIT_DATAERR


def _validate(args: argparse.Namespace) -> int:
    from batch.output.report import format_plan

    checked = check(args, endpoint_for(Options(simulate=args.simulate)))
    if isinstance(checked, int):
        return checked
    prices = price_table(checked.manifest.prices, args.prices)
    print("\n".join(format_plan(str(args.manifest), checked.plan, prices)))
    if args.show > 0:
        base_url = (
            "http://127.0.0.1:<port>/v1/ai" if args.simulate else env("MAAS_BASE_URL") or DEFAULT_BASE_URL
        )
        _show(checked, args.show, base_url)
    return EXIT_OK


def _show(checked: CheckedManifest, count: int, base_url: str) -> None:
    from batch.manifest.inputs import read_file
    from batch.manifest.plan import iter_tasks
    from batch.manifest.preview import describe_request
    from jobs import registry

    kinds = registry()
    for spec in itertools.islice(iter_tasks(checked.manifest, checked.builder), count):
        print()
        print(describe_request(spec, kinds[spec.kind], base_url, read_file))


def _existing(root: Path) -> Path:
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory maas-batch has written")
    return root


def _status(args: argparse.Namespace) -> int:
    from batch.output.report import format_status, status

    found = status(_existing(args.out))
    print(json.dumps(found, indent=2) if args.json else format_status(found))
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from batch.output.report import format_report, report

    found = report(_existing(args.out), price_table({}, args.prices), reprice=args.prices is not None)
    print(json.dumps(found, indent=2) if args.json else format_report(found))
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from batch.output.report import export

    root = _existing(args.out)
    if args.output is None:
        export(root, args.format, sys.stdout)
        return EXIT_OK
    try:
        with args.output.open("w", encoding="utf-8", newline="") as stream:
            rows = export(root, args.format, stream)
    except OSError as exc:
        raise OutputError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    print(f"{rows:,} rows written to {args.output}", file=sys.stderr)
    return EXIT_OK


def _gallery(args: argparse.Namespace) -> int:
    from batch.output import gallery
    from batch.output.lock import acquire

    root = _existing(args.out)
    lock = acquire(root)  # not beside a run that is writing DIR
    try:
        started = time.monotonic()
        page = gallery.build(root)
    finally:
        os.close(lock)
    print(f"{page} written in {time.monotonic() - started:.1f} s")
    return EXIT_OK


def _retry_failed(args: argparse.Namespace) -> int:
    """The last recorded `run` into DIR, again, with --retry-failed (and any flags given after DIR)."""
    from batch.output.store import RUNS, read_lines

    recorded = None
    for path in sorted((_existing(args.out) / RUNS).glob("*.jsonl"), reverse=True):
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
    return _main(argv)


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


def _simulate(args: argparse.Namespace) -> int:
    from batch.simulator import config_from_args, serve

    serve(config_from_args(args), args.host, args.port)
    return EXIT_OK
