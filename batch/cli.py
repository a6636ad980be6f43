"""The `maas-batch` command: a thin layer over the library. Flags and environment are read here and only
here, and passed down as frozen settings.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import secrets
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from batch import __version__
from batch.defaults import (
    DEFAULT_BACKOFF,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_BASE_URL,
    DEFAULT_CONCURRENCY,
    DEFAULT_GRACE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_BODY,
    DEFAULT_OUTAGE_LIMIT,
    DEFAULT_TASK_DEADLINE,
    DEFAULT_TIMEOUT,
)
from batch.errors import BatchError, ConfigError, DirLockedError, ManifestError, OutputError, UsageError
from batch.lock import probe as probe_lock

if TYPE_CHECKING:  # the HTTP stack is imported only by the commands that use it: a fast start
    from anyio.abc import TaskStatus

    from batch.events import Observer
    from batch.job import CheckedManifest, Job
    from batch.progress import ProgressBar
    from batch.runner import RunSummary

log = logging.getLogger("batch.cli")

EXIT_OK, EXIT_FAILED = 0, 1
EXIT_USAGE, EXIT_DATAERR, EXIT_UNAVAILABLE, EXIT_IOERR = 64, 65, 69, 74
EXIT_TEMPFAIL, EXIT_NOPERM, EXIT_CONFIG = 75, 77, 78
SIMULATED_ENDPOINT = "simulator"

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}   every task succeeded (or had already)
  {EXIT_FAILED}   the run finished, but some tasks of the manifest failed, now or in an earlier run
      (see results.jsonl)
  {EXIT_USAGE}  bad command-line usage
  {EXIT_DATAERR}  invalid manifest: nothing was sent
  {EXIT_UNAVAILABLE}  the service cannot go on: quota exhausted, or down longer than --outage-limit
      (run stopped, resumable)
  {EXIT_IOERR}  the output directory cannot be written, e.g. disk full (run stopped, resumable)
  {EXIT_TEMPFAIL}  interrupted, or another run holds the output directory (resumable)
  {EXIT_NOPERM}  the API refused the key (run stopped, resumable)
  {EXIT_CONFIG}  configuration missing: no MAAS_API_KEY, no endpoint, or no such endpoint
"""

ENVIRONMENT = f"""\
environment:
  MAAS_API_KEY    the API key (required unless --simulate); never printed or written
  MAAS_BASE_URL   the API's base URL (default {DEFAULT_BASE_URL})
  MAAS_ENDPOINT   the endpoint (deployment id) for tasks the manifest gives none
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but bad usage exits 64 (EX_USAGE) rather than 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from batch.simulator import add_arguments as add_simulator_arguments

    parser = _Parser(
        prog="maas-batch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run large, resumable batches of image generate/edit and Gemini chat "
        "requests against the MaaS API.",
        epilog=ENVIRONMENT + "\n" + EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"maas-batch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a manifest into an output directory (resumes where a previous run stopped)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ENVIRONMENT + "\n" + EXIT_CODES,
        description="Run every task of MANIFEST that DIR does not hold yet. Running the same command again "
        "sends nothing for finished tasks and completes the rest.",
    )
    run.add_argument("manifest", type=Path, metavar="MANIFEST", help="a YAML or JSONL job manifest")
    run.add_argument(
        "--out",
        "-o",
        type=Path,
        required=True,
        metavar="DIR",
        help="output directory: results.jsonl, usage.jsonl, images/",
    )
    run.add_argument(
        "--concurrency",
        "-c",
        type=_concurrency,
        default=DEFAULT_CONCURRENCY,
        metavar="N|auto",
        help=f"requests in flight at once (default {DEFAULT_CONCURRENCY}); 'auto' finds, per endpoint, how "
        "many the service takes, growing until it answers 429 and backing off (AIMD)",
    )
    run.add_argument(
        "--max-concurrency",
        type=_positive_int,
        default=256,
        metavar="N",
        help="the most requests in flight that --concurrency auto may reach (default 256)",
    )
    run.add_argument(
        "--rpm",
        type=_positive_float,
        default=None,
        metavar="N",
        help="at most N requests per minute to each endpoint, spaced evenly (no limit by default)",
    )
    run.add_argument(
        "--tpm",
        type=_positive_float,
        default=None,
        metavar="N",
        help="at most N tokens per minute to each endpoint, from each request's estimate, corrected by the "
        "usage that comes back (no limit by default)",
    )
    run.add_argument(
        "--simulate",
        action="store_true",
        help="run against the built-in simulator on a free loopback port; no key needed",
    )
    run.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up on one attempt after this long (default {DEFAULT_TIMEOUT:g})",
    )
    run.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=DEFAULT_MAX_ATTEMPTS,
        metavar="N",
        help=f"attempts per task, first included (default {DEFAULT_MAX_ATTEMPTS})",
    )
    run.add_argument(
        "--task-deadline",
        type=_positive_float,
        default=DEFAULT_TASK_DEADLINE,
        metavar="SECONDS",
        help="no retry of a task starts this long after its first attempt "
        f"(default {DEFAULT_TASK_DEADLINE:g})",
    )
    run.add_argument(
        "--backoff",
        type=_non_negative_float,
        default=DEFAULT_BACKOFF,
        metavar="SECONDS",
        help="first retry waits up to this long, doubling each time, with full jitter "
        f"(default {DEFAULT_BACKOFF:g}; a server's Retry-After takes precedence)",
    )
    run.add_argument(
        "--backoff-max",
        type=_non_negative_float,
        default=DEFAULT_BACKOFF_MAX,
        metavar="SECONDS",
        help=f"longest wait between two attempts (default {DEFAULT_BACKOFF_MAX:g})",
    )
    run.add_argument(
        "--grace",
        type=_non_negative_float,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help="after SIGINT/SIGTERM, requests in flight get this long to finish and be saved; a second "
        f"signal cancels them at once (default {DEFAULT_GRACE:g})",
    )
    run.add_argument(
        "--outage-limit",
        type=_non_negative_float,
        default=DEFAULT_OUTAGE_LIMIT,
        metavar="SECONDS",
        help="when the service keeps failing, tasks wait (one probe at a time) instead of spending their "
        f"attempts; after this long the run stops with exit 69 (default {DEFAULT_OUTAGE_LIMIT:g})",
    )
    run.add_argument(
        "--max-answer-mb",
        type=_positive_float,
        default=DEFAULT_MAX_BODY / 2**20,
        metavar="MB",
        help=f"refuse (and retry) an answer larger than this (default {DEFAULT_MAX_BODY // 2**20})",
    )
    run.add_argument(
        "--sync-interval",
        type=_non_negative_float,
        default=0.1,
        metavar="SECONDS",
        help="journal lines reach the kernel at once (a killed run loses none) and are fsync'd this often "
        "(a power cut may lose the last SECONDS); 0 fsyncs each line before going on (default 0.1)",
    )
    run.add_argument(
        "--no-fsync",
        dest="fsync",
        action="store_false",
        help="skip fsync (faster on slow disks; a power cut may then lose recent results)",
    )
    _add_common(run)
    _add_output_options(run)

    validate = commands.add_parser(
        "validate",
        help="check a manifest and count its tasks; sends nothing",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ENVIRONMENT + "\n" + EXIT_CODES,
    )
    validate.add_argument("manifest", type=Path, metavar="MANIFEST")
    validate.add_argument(
        "--simulate",
        action="store_true",
        help="check as `run --simulate` would (endpoints default to the simulator)",
    )
    validate.add_argument(
        "--show",
        type=int,
        default=0,
        metavar="N",
        help="print the first N requests exactly as they would be sent (files shown as size and hash)",
    )
    _add_common(validate)

    simulate = commands.add_parser(
        "simulate",
        help="serve the MaaS API simulator (for demos, tests and rehearsals)",
        description="Serve a local simulator of the MaaS API: the three endpoints, auth, validation, "
        "real images, SSE streaming, latency, rate limits and faults.",
    )
    simulate.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    simulate.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    add_simulator_arguments(simulate)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="[KIND.]FIELD=VALUE",
        help="set a request field for every task (that knows it), over the manifest; "
        "e.g. --set quality=low --set chat.temperature=0. Repeatable",
    )
    parser.add_argument(
        "--endpoint",
        dest="endpoints",
        action="append",
        default=[],
        metavar="[KIND|MODEL=]ENDPOINT",
        help="send tasks of a kind or model (or, without a '=', all tasks) to this endpoint, over the "
        "manifest; e.g. --endpoint chat=my-gemini --endpoint generate=my-images. Repeatable",
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="show a progress bar (default when stderr is a terminal)",
    )
    group.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="log a line per task instead of a progress bar",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="only warnings and the summary")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _concurrency(text: str) -> int | None:
    """A whole number of requests in flight, or `auto` (None)."""
    return None if text.strip().lower() == "auto" else _positive_int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def parse_endpoints(items: Sequence[str]) -> dict[str, str]:
    """`--endpoint` items into {kind or model or "*": endpoint}."""
    chosen: dict[str, str] = {}
    for item in items:
        key, sep, endpoint = item.rpartition("=")
        endpoint = endpoint.strip()
        if not endpoint:
            raise UsageError(f"--endpoint needs an endpoint id, not {item!r}")
        chosen[key.strip() if sep else "*"] = endpoint
    return chosen


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`--set` items into {field: value} and {kind: {field: value}}; values read as YAML scalars."""
    import yaml

    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set needs FIELD=VALUE, not {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        kind, dot, name = key.partition(".")
        if dot:
            overrides.setdefault(kind, {})[name] = value
        else:
            overrides[key] = value
    return overrides


# -- commands -------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _main(argv)
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


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "validate":
            return _validate(args)
        return _simulate(args)
    except UsageError as exc:
        print(f"maas-batch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ManifestError as exc:
        _print_problems(exc.problems, exc.more)
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


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.INFO
    if getattr(args, "quiet", False):
        level = logging.WARNING
    if getattr(args, "verbose", False):
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger("batch")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _check(
    args: argparse.Namespace, env_endpoint: str | None, cache: Path | None = None
) -> CheckedManifest | int:
    """The checked manifest, or (after printing every problem) the exit code that refuses it."""
    from batch.job import check
    from batch.tasks import BuildSettings
    from jobs import registry

    build = BuildSettings(
        overrides=parse_overrides(args.overrides),
        endpoints=parse_endpoints(args.endpoints),
        env_endpoint=env_endpoint,
    )
    checked = check(args.manifest, build, registry(), cache)
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


def _print_problems(problems: Sequence[Any], more: int) -> None:
    for problem in problems:
        print(problem, file=sys.stderr)
    if more:
        print(f"... and {more} more problems", file=sys.stderr)
    print("nothing was sent", file=sys.stderr)


def _validate(args: argparse.Namespace) -> int:
    env_endpoint = _env("MAAS_ENDPOINT") or (SIMULATED_ENDPOINT if args.simulate else None)
    checked = _check(args, env_endpoint)
    if isinstance(checked, int):
        return checked
    plan = checked.plan
    print(f"{args.manifest}: {plan.total:,} task{'s' if plan.total != 1 else ''}, valid")
    width = max((len(model) for _, model, _ in plan.counts), default=5)
    for (kind, model, endpoint), count in sorted(plan.counts.items()):
        print(f"  {kind:<9} {model:<{width}}  {count:>8,}   endpoint {endpoint}")
    if args.show > 0:
        _show(
            checked,
            args.show,
            "http://127.0.0.1:<port>/v1/ai" if args.simulate else _env("MAAS_BASE_URL") or DEFAULT_BASE_URL,
        )
    return EXIT_OK


def _show(checked: CheckedManifest, count: int, base_url: str) -> None:
    from batch.inputs import read_file
    from batch.plan import iter_tasks
    from batch.preview import describe_request
    from jobs import registry

    kinds = registry()
    for spec in itertools.islice(iter_tasks(checked.manifest, checked.builder), count):
        print()
        print(describe_request(spec, kinds[spec.kind], base_url, read_file))


@dataclass(frozen=True)
class _Connection:
    base_url: str
    api_key: str = field(repr=False)
    env_endpoint: str | None


def _env(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None


@contextlib.contextmanager
def _connection(simulate: bool) -> Iterator[_Connection]:
    """Where requests go, from the environment; or the built-in simulator, with a throwaway key."""
    if not simulate:
        api_key = _env("MAAS_API_KEY")
        if api_key is None:
            raise ConfigError("MAAS_API_KEY is not set: export your API key (or try --simulate)")
        yield _Connection(_env("MAAS_BASE_URL") or DEFAULT_BASE_URL, api_key, _env("MAAS_ENDPOINT"))
        return
    from batch.simulator import SimConfig, simulator_in_thread

    key = "sim-" + secrets.token_hex(8)
    with simulator_in_thread(SimConfig(api_key=key, latency=0.2, latency_jitter=0.5)) as sim:
        log.info("simulator listening on %s", sim.base_url)
        yield _Connection(sim.base_url, key, _env("MAAS_ENDPOINT") or SIMULATED_ENDPOINT)


def _run(args: argparse.Namespace) -> int:
    probe_lock(args.out)  # a second run on DIR gives up now, before any slow import or manifest check
    import anyio

    from batch import plancache
    from batch.client import ClientConfig
    from batch.job import Job, JobConfig
    from batch.limits import Limits
    from batch.retry import RetryPolicy
    from batch.runner import RunSettings
    from jobs import registry

    with _connection(args.simulate) as connection:
        checked = _check(args, connection.env_endpoint, args.out / plancache.FOLDER)
        if isinstance(checked, int):
            return checked
        config = JobConfig(
            manifest=args.manifest,
            out=args.out,
            client=ClientConfig(
                base_url=connection.base_url,
                api_key=connection.api_key,
                timeout=args.timeout,
                connections=max(args.concurrency or args.max_concurrency, 10),
                max_body_bytes=int(args.max_answer_mb * 2**20),
            ),
            run=RunSettings(
                limits=Limits(
                    rpm=args.rpm,
                    tpm=args.tpm,
                    concurrency=args.concurrency,
                    max_concurrency=args.max_concurrency,
                ),
                retry=RetryPolicy(
                    max_attempts=args.max_attempts,
                    deadline=args.task_deadline,
                    backoff_base=args.backoff,
                    backoff_max=args.backoff_max,
                ),
                outage_limit=args.outage_limit,
            ),
            fsync=args.fsync,
            sync_interval=args.sync_interval,
        )
        observers, bar = _observers(args)
        try:
            with Job(config, checked, registry(), observers) as job:
                summary = anyio.run(_run_with_signals, job, args.grace)
        finally:
            if bar is not None:
                bar.close()
    try:
        _print_summary(summary, args.out)
    except BrokenPipeError:  # the run's own exit code matters more than a closed stdout
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return summary.exit_code


def _observers(args: argparse.Namespace) -> tuple[list[Observer], ProgressBar | None]:
    from batch.progress import LogLines, ProgressBar

    show_bar = args.progress if args.progress is not None else sys.stderr.isatty()
    if args.quiet:
        return [], None
    if show_bar:
        bar = ProgressBar(sys.stderr)
        return [bar], bar
    return [LogLines()], None


async def _run_with_signals(job: Job, grace: float) -> RunSummary:
    import anyio

    async with anyio.create_task_group() as group:
        await group.start(_watch_signals, job, grace)
        summary = await job.run()
        group.cancel_scope.cancel()
    return summary


async def _watch_signals(job: Job, grace: float, *, task_status: TaskStatus[None]) -> None:
    """First SIGINT/SIGTERM: stop dispatching, give requests in flight `grace` seconds, exit 75.
    Another one: cancel what is still in flight (the run stays resumable)."""
    import anyio

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async with anyio.create_task_group() as timers:
            async for signum in signals:
                name = signal.Signals(signum).name
                if job.stopping:
                    log.warning("%s again: cancelling the requests still in flight", name)
                    job.cancel_in_flight()
                else:
                    job.stop(
                        f"{name}: stopped dispatching; requests in flight had {grace:g} s to finish",
                        EXIT_TEMPFAIL,
                    )
                    timers.start_soon(_cancel_after, job, grace)


async def _cancel_after(job: Job, grace: float) -> None:
    import anyio

    await anyio.sleep(grace)
    log.warning("grace period of %g s over: cancelling the requests still in flight", grace)
    job.cancel_in_flight()


def _print_summary(summary: RunSummary, out: Path) -> None:
    lines = [
        f"maas-batch: {summary.succeeded} succeeded, {summary.failed} failed, "
        f"{summary.finished_before} already done"
        + (f" ({summary.failed_before} of them failed)" if summary.failed_before else "")
        + f", {summary.not_run} not run "
        f"({summary.total} tasks, {summary.seconds:.1f} s)",
        f"tokens: {summary.total_tokens:,} "
        f"(input {summary.input_tokens:,}, output {summary.output_tokens:,}) "
        f"in {summary.billed_answers} billed answer{'s' if summary.billed_answers != 1 else ''}"
        + (f"; {summary.retries} retries" if summary.retries else ""),
    ]
    if summary.interrupted:
        lines.append(
            f"{summary.interrupted} request(s) of an earlier run that was killed may have been billed "
            "without a result; they are counted in maybe_billed of their tasks"
        )
    if summary.maybe_billed:
        lines.append(
            f"{summary.maybe_billed} request(s) may have been billed without a saved result "
            "(the connection broke after they were sent)"
        )
    if summary.stop_reason:
        lines.append(f"stopped: {summary.stop_reason}")
        lines.append("run the same command again to resume")
    elif summary.failed or summary.failed_before:
        lines.append(f"failures are in {out / 'results.jsonl'}")
    lines.append(f"output: {out}")
    print("\n".join(lines))


def _simulate(args: argparse.Namespace) -> int:
    from batch.simulator import config_from_args, serve

    serve(config_from_args(args), args.host, args.port)
    return EXIT_OK
