"""`maas-batch submit` and `maas-batch worker`: a batch in shards on a task queue (Dramatiq on Redis), run by
workers on any number of machines into one output directory on a shared folder (batch.cluster)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.cli.flags import output_location, path, redis_url, seconds, whole
from batch.config import checked_env, env
from batch.errors import UsageError
from batch.exitcodes import (
    EXIT_CONFIG,
    EXIT_DATAERR,
    EXIT_IOERR,
    EXIT_NOPERM,
    EXIT_OK,
    EXIT_TEMPFAIL,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from batch.values import StoreUrl, check_redis_url

if TYPE_CHECKING:
    from batch.cli.grammar import Commands
    from batch.cluster.plan import BatchPlan
    from batch.config import Options
    from batch.output.scope import Scope

log = logging.getLogger("batch.cli")

REDIS_ENVIRONMENT = """\
environment:
  MAAS_REDIS_URL  the Redis of the queue, when --redis is not given
  MAAS_API_KEY    the API key, read by each worker from its own environment; never queued or written
  MAAS_BASE_URL   the API's base URL, per worker
  MAAS_ENDPOINT   the endpoint for tasks the manifest gives none (submit records the one it validated with)
"""

SUBMIT_EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}   the plan is written and every shard is queued (--resume: each shard lacking results and
      not on the queue is queued again)
  {EXIT_USAGE}  bad command-line usage, a run flag that is not for shards, or DIR already holds a batch
      (--resume: DIR holds none)
  {EXIT_DATAERR}  invalid manifest: nothing was written or queued (--resume: it changed since it was
      submitted; nothing was queued)
  {EXIT_IOERR}  DIR/cluster/plan.json cannot be written
  {EXIT_CONFIG}  configuration missing (no endpoint for some tasks), or Redis cannot be reached
"""

WORKER_EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}   --burst: no shard is left, queued or taken
  {EXIT_USAGE}  bad command-line usage (a --redis that is no Redis URL, a --heartbeat-timeout of 0)
  {EXIT_DATAERR}  a shard's manifest changed since it was submitted (the shard is requeued)
  {EXIT_UNAVAILABLE}  the service cannot go on (the shard is requeued)
  {EXIT_IOERR}  a shard's directory cannot be written, or a newer maas-batch submitted the batch
      (upgrade this worker; the shard is requeued)
  {EXIT_TEMPFAIL}  stopped by SIGTERM, SIGINT or SIGHUP: the shard in hand finished its requests in
      flight and was requeued
  {EXIT_NOPERM}  the API refused the key (the shard is requeued)
  {EXIT_CONFIG}  configuration missing (no MAAS_API_KEY...), or Redis cannot be reached
"""


def add_submit(commands: Commands) -> argparse.ArgumentParser:
    """The `submit` parser (its line in `maas-batch --help` is in grammar.py's list of commands)."""
    from batch.defaults import DEFAULT_SHARD_SIZE

    submit = commands.add_parser(
        "submit",
        description="Check MANIFEST whole (nothing is queued if it is invalid), write the plan to "
        "DIR/cluster/plan.json and queue one message per shard of --shard-size tasks on Redis. Any flag "
        "of `run` may follow (--set, --endpoint, --concurrency, --rpm...): every shard runs with them. "
        "--resume DIR rebuilds a lost queue from DIR's outputs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=REDIS_ENVIRONMENT + "\n" + SUBMIT_EXIT_CODES,
        usage="maas-batch submit MANIFEST --out DIR [--redis URL] [--shard-size N] [RUN-FLAGS...]\n"
        "       maas-batch submit --resume DIR [--redis URL]",
    )
    submit.add_argument("manifest", type=path, metavar="MANIFEST", nargs="?")
    submit.add_argument(
        "--out",
        "-o",
        type=output_location,
        metavar="DIR",
        help="the batch's directory, on a folder every worker mounts at the same path; or s3://bucket/prefix "
        "or az://container/prefix (each worker then runs a shard in a local temporary folder, mirrored into "
        "the store)",
    )
    submit.add_argument(
        "--resume",
        type=output_location,
        metavar="DIR",
        help="rebuild the queue of DIR's batch (or s3://bucket/prefix's) from its outputs alone (after Redis "
        "lost it): queue again each shard whose outputs lack results and that is not queued or taken; the "
        "plan and its flags are DIR's, and its manifest must be the one submitted",
    )
    _add_redis(submit)
    submit.add_argument(
        "--shard-size",
        type=whole,
        default=DEFAULT_SHARD_SIZE,
        metavar="N",
        help=f"tasks per shard (default {DEFAULT_SHARD_SIZE})",
    )
    submit.set_defaults(takes_run_flags=True)
    return submit


def add_worker(commands: Commands) -> argparse.ArgumentParser:
    """The `worker` parser (its line in `maas-batch --help` is in grammar.py's list of commands)."""
    from batch.defaults import DEFAULT_HEARTBEAT_TIMEOUT

    worker = commands.add_parser(
        "worker",
        description="Take shards of submitted batches off Redis and run each into DIR/shards/<k>/ (a run "
        "directory: a shard delivered again sends only what it lacks). SIGTERM, SIGINT or SIGHUP: the "
        "requests in flight finish and the shard goes back on the queue; a second one cancels them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=REDIS_ENVIRONMENT + "\n" + WORKER_EXIT_CODES,
    )
    _add_redis(worker)
    worker.add_argument(
        "--concurrency",
        "-c",
        type=whole,
        default=None,
        metavar="N",
        help="the --concurrency of the shards this worker runs, instead of the batch's: as in `run`, one "
        "budget of requests in flight shared through Redis by every worker on the key",
    )
    worker.add_argument(
        "--burst", action="store_true", help="exit once no shard is left, queued or taken by another worker"
    )
    worker.add_argument(
        "--heartbeat-timeout",
        type=seconds,
        default=DEFAULT_HEARTBEAT_TIMEOUT,
        metavar="SECONDS",
        help="a worker silent this long is taken for dead and its shard is run by another "
        f"(default {DEFAULT_HEARTBEAT_TIMEOUT:g}; every worker of a Redis should use the same)",
    )
    log_flags = worker.add_argument_group("what it prints")
    log_flags.add_argument("--log-file", type=path, metavar="FILE", help="also append the log lines to FILE")
    log_flags.add_argument("--quiet", "-q", action="store_true", help="only warnings")
    log_flags.add_argument("--verbose", "-v", action="store_true", help="a line per task and retry; debug")
    return worker


def _add_redis(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis",
        default=None,
        type=redis_url,
        metavar="URL",
        help="the queue's Redis, e.g. redis://host:6379/0 (default: MAAS_REDIS_URL)",
    )


def _queue_settings(args: argparse.Namespace) -> Any:
    from batch.cluster.queue import QueueSettings

    url = args.redis or checked_env("MAAS_REDIS_URL", check_redis_url)
    if url is None:
        raise UsageError("give the queue's Redis: --redis URL (or MAAS_REDIS_URL)")
    timeout = getattr(args, "heartbeat_timeout", None)
    if timeout is None:  # submit, resume, retry-failed: no maintenance (see QueueSettings)
        return QueueSettings(url)
    return QueueSettings(url, heartbeat_timeout=timeout, maintenance=True)  # a worker


def run_options(manifest: Path, out: Path | str, run_flags: list[str]) -> Options:
    """What `maas-batch run MANIFEST --out DIR RUN-FLAGS` would run with (its parser, its checks)."""
    from batch.cli.grammar import build_parser
    from batch.cli.options import options_from

    args = build_parser().parse_args(["run", str(manifest), "--out", str(out), *run_flags])
    if args.dry_run:
        args.command_parser.error("--dry-run: not for submit (try `maas-batch validate`)")
    return options_from(args)


def submit(args: argparse.Namespace, run_flags: list[str]) -> int:
    from batch.cluster.queue import ShardQueue
    from batch.cluster.submit import submit as submit_batch

    if args.resume is not None:
        if args.manifest is not None or args.out is not None or run_flags:
            raise UsageError("--resume DIR takes no MANIFEST, --out or run flags: DIR's plan has them")
        return resume(args)
    if args.manifest is None or args.out is None:
        raise UsageError("give MANIFEST and --out DIR (or --resume DIR)")
    options = run_options(args.manifest, args.out, run_flags)
    queue = ShardQueue(_queue_settings(args))
    try:
        plan = submit_batch(
            args.manifest, args.out, options, queue, shard_size=args.shard_size, run_flags=run_flags
        )
    finally:
        queue.close()
    print(
        f"maas-batch: {plan.total:,} tasks in {len(plan.shards):,} shards queued on {plan.queue}; "
        f"plan: {args.out}/cluster/plan.json; `maas-batch status {args.out}` follows them"
    )
    return EXIT_OK


def batch_scope(args: argparse.Namespace, root: Path) -> Scope:
    """The scope of `report`, `export` or `gallery` on a sharded DIR: the submitted manifest, with the
    flags its shards ran with (so that pending tasks can be listed)."""
    from batch.cluster.plan import read_plan
    from batch.cluster.view import batch_scope as scope_of_batch

    if args.manifest is not None:
        raise UsageError(f"--manifest: not for a sharded batch ({root} runs the manifest submitted to it)")
    plan = read_plan(root)
    options = run_options(Path(plan.manifest), root, plan.run_flags)
    settings = {
        "overrides": dict(options.overrides),
        "endpoints": dict(options.endpoints),
        "allow_unknown": options.allow_unknown,
    }
    scope = scope_of_batch(root, settings, include_orphaned=args.include_orphaned)
    if scope.order is None:  # no DIR/cluster/order.ids (an older submit): the order from a check walk
        from batch.cluster.shard import submitted_manifest
        from batch.errors import ManifestError

        try:
            scope.order = submitted_manifest(
                plan, dataclasses.replace(options, endpoint=plan.endpoint)
            ).plan.order
        except ManifestError as exc:
            log.warning("%s: each shard's results in file order, no pending task listed", exc)
    return scope


def resume(args: argparse.Namespace) -> int:
    """`submit --resume DIR`: the queue rebuilt from the outputs (batch.cluster.submit.resume)."""
    from batch.cluster.plan import read_plan
    from batch.cluster.queue import ShardQueue
    from batch.cluster.submit import resume as resume_batch

    if isinstance(args.resume, StoreUrl):  # the shards' outputs read through a local view of the store
        from batch.output.remote import view as view_of

        with view_of(args.resume) as view:
            if not (view / "cluster" / "plan.json").is_file():
                raise UsageError(f"{args.resume} holds no submitted batch (no cluster/plan.json)")
            return resume(argparse.Namespace(**{**vars(args), "resume": view}))
    out = args.resume
    plan = read_plan(out)
    options = run_options(Path(plan.manifest), out, plan.run_flags)
    queue = ShardQueue(_queue_settings(args))
    try:
        plan, queued = resume_batch(out, options, queue)
    finally:
        queue.close()
    print(
        f"maas-batch: {len(queued):,} of {len(plan.shards):,} shards queued again on {plan.queue}"
        + (
            f" ({', '.join(str(s.index) for s in queued[:20])}{'...' if len(queued) > 20 else ''})"
            if queued
            else ""
        )
        + "; the others are done, queued or taken"
    )
    return EXIT_OK


def retry_failed(args: argparse.Namespace) -> int:
    """`retry-failed DIR` of a sharded DIR: its shards that hold failures queued again, for workers to
    send those tasks again (a worker runs such a shard with --retry-failed)."""
    from batch.cluster.queue import ShardQueue
    from batch.cluster.submit import retry

    flags = argparse.ArgumentParser(prog="maas-batch retry-failed DIR", add_help=False)
    _add_redis(flags)
    known, unknown = flags.parse_known_args(args.extra)
    if unknown:
        raise UsageError(
            f"{' '.join(unknown)}: not for a sharded batch (its shards run with the flags it was submitted "
            "with); only --redis URL"
        )
    args.redis = known.redis
    if not (args.redis or env("MAAS_REDIS_URL")):
        raise UsageError(
            f"{getattr(args, 'url', None) or args.out} is a sharded batch: retry-failed queues its shards "
            "that hold failures again, for "
            "the workers; give the queue's Redis: --redis URL (or MAAS_REDIS_URL)"
        )
    queue = ShardQueue(_queue_settings(args))
    try:
        plan, queued, failures = retry(args.out, queue)
    finally:
        queue.close()
    if queued:
        print(
            f"maas-batch: {len(queued):,} shard(s) holding {failures:,} failed task(s) queued on "
            f"{plan.queue}; "
            "`maas-batch worker`s send those tasks again"
        )
    else:
        print("maas-batch: no shard to queue: none holds a failed task, or it is queued for a retry already")
    return EXIT_OK


def show_status(args: argparse.Namespace) -> int:
    """`status DIR` of a sharded DIR: per shard and in total."""
    from batch.cluster.plan import read_plan
    from batch.cluster.queue import QueueError, QueueSettings, ShardQueue
    from batch.cluster.view import cluster_status, format_cluster_status
    from batch.output.report import as_json

    plan = read_plan(args.out)
    url = args.redis or env("MAAS_REDIS_URL") or plan.redis
    state, trouble = None, None
    if url:  # the queue's side too: workers alive, shards queued and taken
        try:
            queue = ShardQueue(QueueSettings(url))
            try:
                state = queue.look(plan.queue)
            finally:
                queue.close()
        except QueueError as exc:  # the directories still say what is done
            trouble = str(exc)
    found = {**cluster_status(args.out, state), "directory": str(getattr(args, "url", None) or args.out)}
    if trouble:
        found["queue_error"] = trouble
    print(as_json(found) if args.json else format_cluster_status(found))
    return EXIT_OK


def worker(args: argparse.Namespace) -> int:
    from batch.cli.progress import LogLines
    from batch.cluster.queue import ShardQueue
    from batch.cluster.shard import ShardRunner
    from batch.cluster.worker import ShardWorker, WorkerSettings

    settings = _queue_settings(args)

    def options_for(plan: BatchPlan) -> Options:
        flags = list(plan.run_flags)
        if args.concurrency is not None:
            flags += ["--concurrency", str(args.concurrency)]
        options = run_options(Path(plan.manifest), plan.out, flags)
        # every worker's shard shares the key's limits through the queue's Redis (issue 14's --redis),
        # unless the submitted run flags name another
        return options if options.redis else dataclasses.replace(options, redis=settings.url)

    queue = ShardQueue(settings)
    try:
        queue.ping()
        runner = ShardRunner(options_for, lambda: [] if args.quiet else [LogLines()])
        shards = ShardWorker(queue, runner, WorkerSettings(burst=args.burst))

        def stop(signum: int, frame: object) -> None:
            log.warning(
                "%s: the shard in hand finishes its requests in flight, then goes back on the queue",
                signal.Signals(signum).name,
            )
            shards.stop()

        # SIGHUP: the terminal or session a worker was started from closing (without nohup)
        stops = (signal.SIGINT, signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))
        previous = {signum: signal.signal(signum, stop) for signum in stops}
        try:
            code = shards.run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    finally:
        queue.close()
    log.info("worker ends with exit code %d after %d shard(s)", code, shards.shards_done)
    return code
