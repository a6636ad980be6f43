"""The command line's grammar: commands, flags, the values they take, and the help text that documents the
exit codes and the environment. Light to import: `maas-batch --help` and a refused second run start fast.

A flag's value is only read here (text to a number, a duration, a time): whether a run can use it is
checked once, by batch.Options, whose fields are the flags' `dest`s (see batch.cli.options).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from batch import __version__
from batch.cli.flags import (
    add_common,
    add_output_options,
    add_prices,
    add_scope,
    concurrency,
    count,
    number,
    output_location,
    path,
    port,
    read_with,
    redis_url,
    whole,
)
from batch.defaults import (
    DEFAULT_BACKOFF,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_BASE_URL,
    DEFAULT_CONCURRENCY,
    DEFAULT_GRACE,
    DEFAULT_MAX_ANSWER_MB,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_OUTAGE_LIMIT,
    DEFAULT_SYNC_INTERVAL,
    DEFAULT_TASK_DEADLINE,
    DEFAULT_TIMEOUT,
    MAX_IN_FLIGHT,
)
from batch.exitcodes import (
    EXIT_BUDGET,
    EXIT_CONFIG,
    EXIT_DATAERR,
    EXIT_DEADLINE,
    EXIT_FAILED,
    EXIT_IOERR,
    EXIT_NOPERM,
    EXIT_OK,
    EXIT_TEMPFAIL,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}   every task succeeded (or had already); with --retry-failed, every failed task retried
      succeeded (tasks never run are left alone, and the summary says how many)
  {EXIT_FAILED}   the run finished, but some tasks of the manifest failed, now or in an earlier run
      (see results.jsonl; retry them with `maas-batch retry-failed DIR`)
  {EXIT_BUDGET}   the budget (--max-cost / --max-tokens) was reached: run stopped, resumable with a higher one
  {EXIT_DEADLINE}   the deadline (--deadline / --max-duration) was reached: run stopped, resumable
  {EXIT_USAGE}  bad command-line usage
  {EXIT_DATAERR}  invalid manifest (nothing was sent), or it changed during the run
  {EXIT_UNAVAILABLE}  the service cannot go on: quota exhausted, or down (or answering nothing but 429)
      longer than --outage-limit (run stopped, resumable); or some tasks were left pending, rate
      limited or the service failing: still answered 429, or a 5xx that spent no attempt, at their
      --task-deadline, or their endpoint answered nothing but 429 for --outage-limit while another
      answered or was not sent to yet (the run went on without them: resumable)
  {EXIT_IOERR}  the output directory cannot be written or read, e.g. disk full or failing (run stopped,
      resumable), or a newer maas-batch started it (upgrade), or stdout cannot be written
  {EXIT_TEMPFAIL}  interrupted, or another run holds the output directory (or, here, the store) (resumable)
  {EXIT_NOPERM}  the API refused the key (run stopped, resumable)
  {EXIT_CONFIG}  configuration missing or wrong: no MAAS_API_KEY, no endpoint, no such endpoint, the API
      unreachable from the first request (a misspelt MAAS_BASE_URL), or no price for a model that
      --max-cost must count
"""

VALIDATE_EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}   the manifest is valid
  {EXIT_USAGE}  bad command-line usage
  {EXIT_DATAERR}  invalid manifest (every problem listed with its file, line, task and field), or a --set /
      --endpoint that would change nothing
  {EXIT_IOERR}  stdout cannot be written (a full disk)
  {EXIT_CONFIG}  configuration missing: no endpoint for some tasks (MAAS_ENDPOINT, --endpoint)
"""

READ_EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}   done
  {EXIT_USAGE}  bad command-line usage, or DIR is not a directory maas-batch has written
  {EXIT_DATAERR}  the --manifest given is invalid (report: or the --prices file)
  {EXIT_IOERR}  DIR's files cannot be read (or a newer maas-batch wrote them), or the output cannot be
      written (a failing or full disk, a folder that is a link)
"""

GALLERY_EXIT_CODES = READ_EXIT_CODES + f"  {EXIT_TEMPFAIL}  a run holds DIR now (it writes the page itself)\n"

SIMULATE_EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}   stopped with Ctrl-C or SIGTERM
  {EXIT_USAGE}  bad command-line usage, or the port cannot be listened on
  {EXIT_IOERR}  stdout cannot be written (a full disk): the URL line could not be printed
"""

ENVIRONMENT = f"""\
environment:
  MAAS_API_KEY    the API key (required unless --simulate); never printed or written
  MAAS_BASE_URL   the API's base URL (default {DEFAULT_BASE_URL})
  MAAS_ENDPOINT   the endpoint (deployment id) for tasks the manifest gives none
  MAAS_REDIS_URL  the Redis that runs share the key's limits through (run --redis), and the queue of
                  submit and worker
  AWS_*           an s3:// output's credentials and region, read by s3fs (as by the aws command);
                  AWS_ENDPOINT_URL for a store that is not AWS's (MinIO, Ceph...)
  AZURE_STORAGE_* an az:// output's account and credentials, read by adlfs
                  (AZURE_STORAGE_CONNECTION_STRING, or _ACCOUNT_NAME with _ACCOUNT_KEY or _SAS_TOKEN)
  A variable that looks like one of the MAAS_ ones misspelt (MAAS_BASEURL) is warned of, by name.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but bad usage exits 64 (EX_USAGE) rather than 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class _Parsers(dict[str, argparse.ArgumentParser]):
    """The commands' parsers by name, each built when first looked up: `maas-batch --help` needs only the
    names (and each one-line help, kept apart), `maas-batch run` only run's parser."""

    def __init__(self) -> None:
        super().__init__()
        self.builders: dict[str, Callable[[], argparse.ArgumentParser]] = {}

    def __getitem__(self, name: str) -> argparse.ArgumentParser:
        build = self.builders.pop(name, None)
        if build is not None:
            super().__setitem__(name, build())  # the same key: the order of the names is kept
        return super().__getitem__(name)

    def values(self) -> Any:
        return [self[name] for name in self]

    def items(self) -> Any:
        return [(name, self[name]) for name in self]


class Commands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """argparse's subcommands, each parser built on first use (see _Parsers)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._name_parser_map = self.choices = _Parsers()

    def add_command(self, name: str, help: str, build: Callable[[Commands], argparse.ArgumentParser]) -> None:
        """`name` in the list of commands with its one-line `help`; `build(commands)` makes its parser
        with `commands.add_parser(name, ...)` when the command is chosen (or its parser looked up)."""
        self._choices_actions.append(self._ChoicesPseudoAction(name, (), help))
        parsers: _Parsers = self._name_parser_map  # type: ignore[assignment]
        dict.__setitem__(parsers, name, None)  # type: ignore[misc]
        parsers.builders[name] = lambda: build(self)

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """Only makes the parser: add_command lists it."""
        kwargs.setdefault("prog", f"{self._prog_prefix} {name}")
        parser: argparse.ArgumentParser = self._parser_class(**kwargs)
        return parser


READ_DIR = "a run's DIR, or its store's URL (s3://bucket/prefix, az://container/prefix)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="maas-batch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run large, resumable batches of image generate/edit and Gemini chat "
        "requests against the MaaS API.",
        epilog=ENVIRONMENT + "\n" + EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"maas-batch {__version__}")
    parser.register("action", "parsers", Commands)
    commands: Commands = parser.add_subparsers(  # type: ignore[assignment]
        dest="command", required=True, metavar="COMMAND"
    )
    for name, (help, build) in _COMMANDS.items():
        commands.add_command(name, help, build)
    return parser


def _add_validate(commands: Commands) -> argparse.ArgumentParser:
    validate = commands.add_parser(
        "validate",
        description="Check MANIFEST whole, as `run` would, and print its tasks per kind, model and "
        "endpoint with their estimated tokens and cost. Sends nothing; needs no key.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ENVIRONMENT + "\n" + VALIDATE_EXIT_CODES,
    )
    validate.add_argument("manifest", type=path, metavar="MANIFEST")
    validate.add_argument(
        "--simulate",
        action="store_true",
        help="check as `run --simulate` would (endpoints default to the simulator)",
    )
    validate.add_argument(
        "--show",
        type=count,
        default=0,
        metavar="N",
        help="print the first N requests exactly as they would be sent (files shown as size and hash)",
    )
    add_common(validate)
    add_prices(validate)
    validate.set_defaults(command_parser=validate)  # reports a value Options refuses
    return validate


def _add_status(commands: Commands) -> argparse.ArgumentParser:
    status = commands.add_parser(
        "status",
        description="Count the succeeded, failed and pending tasks of the manifest the last run used (or "
        "--manifest), the orphaned result lines of tasks no longer in it apart, the finished tasks whose "
        "request it has changed since, and the requests that may have been billed without a saved "
        "result; say whether a run holds DIR now and how the last one ended (a store has no lock: there, "
        "whether a run on this machine holds it, else that it cannot tell, and when a last run that has no "
        "end last wrote to it). On a sharded DIR "
        "(submit): per shard and in total (succeeded, failed, pending, billed), and with the queue's Redis "
        "the workers alive and the shards queued and taken.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=READ_EXIT_CODES,
    )
    status.add_argument("out", type=output_location, metavar="DIR", help=READ_DIR)
    status.add_argument("--json", action="store_true", help="as JSON")
    add_scope(status)
    status.add_argument(
        "--redis",
        default=None,
        type=redis_url,
        metavar="URL",
        help="a sharded DIR (submit): the queue's Redis, to show the workers alive and the shards queued "
        "and taken (default: MAAS_REDIS_URL, else the URL submit recorded, without its password)",
    )
    return status


def _add_report(commands: Commands) -> argparse.ArgumentParser:
    report = commands.add_parser(
        "report",
        description="Tokens and cost by kind and by model, attempts and retries (the sends of tasks "
        "whose request changed, --rerun-changed, counted apart), failures by type, the "
        "slowest tasks and the runs' wall time, of the tasks of the manifest the last run used (or "
        "--manifest); what orphaned result lines (tasks no longer in it) hold is summed apart. On a "
        "sharded DIR (submit): every shard's, summed, and a line per shard.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=READ_EXIT_CODES,
    )
    report.add_argument("out", type=output_location, metavar="DIR", help=READ_DIR)
    report.add_argument("--json", action="store_true", help="as JSON")
    add_scope(report)
    add_prices(
        report,
        "price every answer anew with these prices (and the built-in ones) instead of the cost its run "
        "recorded",
    )
    return report


def _add_export(commands: Commands) -> argparse.ArgumentParser:
    export = commands.add_parser(
        "export",
        description="One row (line) per task of the manifest, in manifest order, pending tasks included "
        "(orphaned lines of tasks no longer in it only with --include-orphaned), for another program. On "
        "a sharded DIR (submit): every shard's tasks, in manifest order, files named from DIR "
        "(shards/<k>/images/...).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=READ_EXIT_CODES,
    )
    export.add_argument("out", type=output_location, metavar="DIR", help=READ_DIR)
    export.add_argument(
        "--format",
        choices=("csv", "jsonl", "openai", "sqlite"),
        default="csv",
        help="csv (default): flat columns (prompt included; cost: the result line's, what the run that "
        "wrote it paid; billed_cost: all the ledger billed for the task, in every run) and a meta.<key> "
        "column per meta key, LF line "
        "ends, plain decimals, text that a spreadsheet would run as a formula (= + - @ tab CR first) "
        "behind a ' (CSV injection); jsonl: every field of each result line (text, texts, finish_reason(s), "
        "tool_calls, reasoning, images_missing, request_id, usage, error, meta, ...) plus the csv columns; "
        'openai: the OpenAI Batch output format ({"id", "custom_id", "response": {"status_code", '
        '"request_id", "body"}, "error"}), each answer rebuilt as a chat.completion or an images response '
        "with b64_json read back from DIR (finished tasks only); sqlite: one table per kind of line "
        "(results, usage, attempts), typed columns and the raw line as json (needs --output)",
    )
    export.add_argument("--output", type=path, metavar="FILE", help="write here instead of to stdout")
    export.add_argument(
        "--status",
        dest="statuses",
        action="append",
        choices=("succeeded", "failed", "pending"),
        default=[],
        help="only the tasks of this status (repeatable); e.g. --status failed --status pending",
    )
    export.add_argument(
        "--kind",
        dest="kinds",
        action="append",
        default=[],
        metavar="KIND",
        help="only the tasks of this kind: generate, edit, chat, ... (repeatable)",
    )
    add_scope(export)
    return export


def _add_gallery(commands: Commands) -> argparse.ArgumentParser:
    gallery = commands.add_parser(
        "gallery",
        description="Write DIR/index.html, the page to review a run: counts, cost, tokens, the manifest's "
        "tasks in manifest order (pending ones too), sorting and filters kept in the URL, a larger view of "
        "each task. Runs write it themselves, and rebuild it every minute or so while they go. On a "
        "sharded DIR (submit): one page of every shard's tasks. On s3://bucket/prefix: the page and its "
        "thumbnails go into the store (PREFIX/index.html, PREFIX/thumbs/).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=GALLERY_EXIT_CODES,
    )
    gallery.add_argument("out", type=output_location, metavar="DIR", help=READ_DIR)
    add_scope(gallery)
    return gallery


def _add_retry_failed(commands: Commands) -> argparse.ArgumentParser:
    retry = commands.add_parser(
        "retry-failed",
        description="Repeat the last `run` that wrote DIR (same manifest and flags, from the same folder) "
        "with --retry-failed: the failed tasks, and only they, are sent again; tasks never run are left "
        "alone. More run flags may follow. On a sharded DIR (submit): each shard holding failures is "
        "queued once more for the workers, who send its failed tasks again; give the queue's Redis "
        "(--redis URL after DIR, or MAAS_REDIS_URL); no other flag.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_CODES.replace(
            "bad command-line usage", "bad command-line usage, or DIR has no run to repeat"
        ),
    )
    retry.add_argument("out", type=output_location, metavar="DIR", help=READ_DIR)
    retry.add_argument("extra", nargs=argparse.REMAINDER, metavar="RUN-FLAGS", help="added to the command")
    return retry


def _add_simulate(commands: Commands) -> argparse.ArgumentParser:
    from batch.simulator.flags import add_arguments as add_simulator_arguments

    simulate = commands.add_parser(
        "simulate",
        description="Serve a local simulator of the MaaS API: the three endpoints, auth, validation, "
        "real images, SSE streaming, latency, rate limits and faults.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=SIMULATE_EXIT_CODES,
    )
    simulate.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    simulate.add_argument("--port", type=port, default=8000, help="port (default 8000; 0 picks a free one)")
    add_simulator_arguments(simulate)
    return simulate


def _add_run(commands: Commands) -> argparse.ArgumentParser:
    from batch.values import parse_deadline, parse_duration

    run = commands.add_parser(
        "run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ENVIRONMENT + "\n" + EXIT_CODES,
        description="Run every task of MANIFEST that DIR does not hold yet. Running the same command again "
        "sends nothing for finished tasks and completes the rest.",
    )
    run.set_defaults(command_parser=run)  # reports a value Options refuses
    run.add_argument("manifest", type=path, metavar="MANIFEST", help="a YAML or JSONL job manifest")
    run.add_argument(
        "--out",
        "-o",
        type=output_location,
        required=True,
        metavar="DIR",
        help="output directory (or file:///path): results.jsonl, usage.jsonl, images/, index.html; or "
        "s3://bucket/prefix (pip install 'maas-batch[cloud]') or az://container/prefix "
        "('maas-batch[azure]'): the run works in a local staging folder, see --stage, and saves into the "
        "store as it goes",
    )
    run.add_argument(
        "--stage",
        type=path,
        metavar="DIR",
        help="with --out s3://...: the local folder the run works in (new or empty; default a temporary "
        "folder, removed at the end); or the staging folder a run stopped by its store kept: what it holds "
        "and the store lacks goes up first, not bought again",
    )
    run.add_argument(
        "--simulate",
        action="store_true",
        help="run against the built-in simulator on a free loopback port; no key needed",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check the manifest and estimate the tokens and cost of what is left to do; send nothing",
    )
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="send the manifest's failed tasks again, and only them (their old lines move to "
        "results.retried.jsonl; tasks never run are left alone)",
    )
    run.add_argument(
        "--rerun-changed",
        action="store_true",
        help="send again the finished tasks whose request changed since they ran (a prompt, a setting, the "
        "endpoint or an input file of a task with its own id); their old lines move to "
        "results.retried.jsonl. Without it they keep their results, and the run says how many there are",
    )

    speed = run.add_argument_group("speed and limits")
    speed.add_argument(
        "--concurrency",
        "-c",
        type=concurrency,
        default=DEFAULT_CONCURRENCY,
        metavar="N|auto",
        help=f"requests in flight at once (default {DEFAULT_CONCURRENCY}, at most {MAX_IN_FLIGHT:,}); "
        "'auto' finds, per endpoint, how many the service takes, from the 429s it answers",
    )
    speed.add_argument(
        "--max-concurrency",
        type=whole,
        default=DEFAULT_MAX_CONCURRENCY,
        metavar="N",
        help="the most requests in flight that --concurrency auto may reach "
        f"(default {DEFAULT_MAX_CONCURRENCY}, at most {MAX_IN_FLIGHT:,})",
    )
    speed.add_argument(
        "--rpm",
        type=number,
        default=None,
        metavar="N",
        help="at most N requests per minute to each endpoint, spaced evenly",
    )
    speed.add_argument(
        "--tpm",
        type=number,
        default=None,
        metavar="N",
        help="at most N tokens per minute to each endpoint, from each request's estimate, "
        "corrected by the usage that comes back",
    )
    speed.add_argument(
        "--redis",
        default=None,
        type=redis_url,
        metavar="URL",
        help="share --rpm, --tpm, --concurrency and 429 cool-downs with every run on the same key "
        "and endpoint through this Redis (redis://host:6379/0); default: MAAS_REDIS_URL. Its key is "
        "known there by a hash only",
    )

    money = run.add_argument_group("money and time")
    add_prices(money)
    money.add_argument(
        "--max-cost",
        type=number,
        default=None,
        metavar="USD",
        help="stop dispatching before DIR's spending (all runs) plus what is in flight would "
        f"pass this many dollars; exit {EXIT_BUDGET}, resumable with a higher budget",
    )
    money.add_argument("--max-tokens", type=whole, default=None, metavar="N", help="the same, in tokens")
    money.add_argument(
        "--deadline",
        type=read_with(parse_deadline),
        default=None,
        metavar="TIME",
        help="stop dispatching so that the run ends by then (e.g. 07:00, the next one; or "
        f"2026-12-01T07:00); what is in flight at TIME is cancelled; exit {EXIT_DEADLINE}",
    )
    money.add_argument(
        "--max-duration",
        type=read_with(parse_duration),
        default=None,
        metavar="DURATION",
        help="the same, as a duration from now: 90s, 45m, 6h, 1d",
    )

    retries = run.add_argument_group("retries and faults")
    retries.add_argument(
        "--timeout",
        type=number,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up on one attempt after this long (default {DEFAULT_TIMEOUT:g})",
    )
    retries.add_argument(
        "--max-attempts",
        type=whole,
        default=DEFAULT_MAX_ATTEMPTS,
        metavar="N",
        help=f"attempts per task, first included (default {DEFAULT_MAX_ATTEMPTS}); a 429 (rate limited) "
        "spends none, nor does a failure during an outage, nor a 5xx that bought nothing while the service "
        "fails more than it answers; the image links of one answer are each tried once and share the N - 1 "
        "retries",
    )
    retries.add_argument(
        "--task-deadline",
        type=number,
        default=DEFAULT_TASK_DEADLINE,
        metavar="SECONDS",
        help="no retry of a task starts this long after its first attempt, nor a retry of an "
        f"answer's image links this long after its first download (default {DEFAULT_TASK_DEADLINE:g}); "
        f"a task still answered 429 then, or a 5xx that spent no attempt, is left pending (exit "
        f"{EXIT_UNAVAILABLE}), not failed",
    )
    retries.add_argument(
        "--backoff",
        type=number,
        default=DEFAULT_BACKOFF,
        metavar="SECONDS",
        help="first retry waits up to this long, doubling each time, with full jitter "
        f"(default {DEFAULT_BACKOFF:g}; a server's Retry-After takes precedence)",
    )
    retries.add_argument(
        "--backoff-max",
        type=number,
        default=DEFAULT_BACKOFF_MAX,
        metavar="SECONDS",
        help=f"longest wait between two attempts (default {DEFAULT_BACKOFF_MAX:g})",
    )
    retries.add_argument(
        "--grace",
        type=number,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help="after SIGINT/SIGTERM/SIGHUP, requests in flight get this long to finish and be saved; "
        f"a second signal cancels them at once (default {DEFAULT_GRACE:g})",
    )
    retries.add_argument(
        "--outage-limit",
        type=number,
        default=DEFAULT_OUTAGE_LIMIT,
        metavar="SECONDS",
        help="when the service keeps failing, tasks wait (one probe at a time, a probe's Retry-After "
        "obeyed) instead of spending their attempts (a service that still answers some requests is not "
        f"down: the run goes on); after this long the run stops with exit {EXIT_UNAVAILABLE}, as it does "
        f"after this long of nothing but 429 (default {DEFAULT_OUTAGE_LIMIT:g}); one endpoint that "
        "answers nothing but 429 this long while another answers (or has not been sent to yet) is left "
        "alone, its tasks pending",
    )
    retries.add_argument(
        "--max-answer-mb",
        type=number,
        default=DEFAULT_MAX_ANSWER_MB,
        metavar="MB",
        help="refuse an answer larger than this: its task fails, not bought again "
        f"(default {DEFAULT_MAX_ANSWER_MB:g})",
    )

    disk = run.add_argument_group("output")
    disk.add_argument(
        "--sync-interval",
        type=number,
        default=DEFAULT_SYNC_INTERVAL,
        metavar="SECONDS",
        help="journal lines reach the kernel at once (a killed run loses none) and are fsync'd "
        "this often (a power cut may lose the last SECONDS); 0 fsyncs each line "
        f"(default {DEFAULT_SYNC_INTERVAL:g})",
    )
    disk.add_argument(
        "--no-fsync",
        dest="fsync",
        action="store_false",
        help="skip fsync (faster on slow disks; a power cut may then lose recent results)",
    )
    disk.add_argument(
        "--no-gallery", dest="gallery", action="store_false", help="do not make thumbnails and DIR/index.html"
    )
    add_common(run)
    add_output_options(run)
    return run


def run_flags_in_full(argv: list[str]) -> list[str]:
    """`argv`, a `run` command line or run flags, with each long flag given in part written in full, as
    argparse read it: `--dead` is `--deadline`, a beginning of that flag alone (`--backoff`, a flag of its
    own, stays). What reads a recorded command line back (retry-failed) then finds its flags by name.
    Values, and all after a `--`, stay as they are."""
    parser = _add_run(Commands(option_strings=[], prog="maas-batch", parser_class=_Parser))
    # argparse's table of the flags it knows: it has no public one
    flags = [flag for flag in parser._option_string_actions if flag.startswith("--")]
    full: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":
            return [*full, *argv[index:]]
        flag, equals, value = arg.partition("=")
        found = [name for name in flags if name.startswith(flag)] if flag.startswith("--") else []
        full.append(f"{found[0]}{equals}{value}" if len(found) == 1 and flag not in flags else arg)
    return full


def _add_submit(commands: Commands) -> argparse.ArgumentParser:
    from batch.cli.cluster import add_submit

    return add_submit(commands)


def _add_worker(commands: Commands) -> argparse.ArgumentParser:
    from batch.cli.cluster import add_worker

    return add_worker(commands)


# Each command: its line in `maas-batch --help`, and what builds its parser when it is chosen.
_COMMANDS: dict[str, tuple[str, Callable[[Commands], argparse.ArgumentParser]]] = {
    "run": (
        "run a manifest into an output directory (resumes where a previous run stopped)",
        _add_run,
    ),
    "validate": (
        "check a manifest, count its tasks, estimate their tokens and cost; sends nothing",
        _add_validate,
    ),
    "status": (
        "what a DIR holds: done, failed, pending, and whether a run is on",
        _add_status,
    ),
    "report": (
        "tokens and cost by kind and model, retries, failures by type, the slowest tasks, wall time",
        _add_report,
    ),
    "export": (
        "one row per task (id, status, prompt, files or answer, usage, cost, meta), for a pipeline to join",
        _add_export,
    ),
    "gallery": (
        "write DIR/index.html again (runs do it themselves), making any missing thumbnail",
        _add_gallery,
    ),
    "retry-failed": (
        "run DIR's last command again for its failed tasks only",
        _add_retry_failed,
    ),
    "simulate": (
        "serve the MaaS API simulator (for demos, tests and rehearsals)",
        _add_simulate,
    ),
    "submit": (
        "validate a manifest, then queue it in shards for `maas-batch worker`s on several machines",
        _add_submit,
    ),
    "worker": (
        "run queued shards with today's engine, one at a time, until stopped (or none is left)",
        _add_worker,
    ),
}
