"""`maas-batch run`: a dry run, or the run itself with signals, progress and the summary. The settings
come as Options (batch.cli.options); the work itself is batch.running.job's.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch import __version__
from batch.cli import StdoutError, to_devnull
from batch.cli.options import show_bar
from batch.config import (
    Options,
    base_url_for,
    check_aside,
    checked_manifest,
    connection,
    endpoint_for,
    job_config,
    loop_options,
    need_prices,
    price_table,
    redis_url_for,
)
from batch.defaults import DEFAULT_MAX_CONCURRENCY
from batch.errors import UsageError, unwrap
from batch.exitcodes import EXIT_BUDGET, EXIT_DEADLINE, EXIT_OK, EXIT_TEMPFAIL
from batch.output.lock import acquire
from batch.output.lock import probe as probe_lock
from batch.values import StoreUrl

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from batch.cli.progress import ProgressBar
    from batch.events import Observer
    from batch.manifest.aside import CheckAside
    from batch.running.job import Job
    from batch.running.summary import RunSummary

log = logging.getLogger("batch.cli")


def run(args: argparse.Namespace, options: Options, argv: list[str]) -> int:
    if isinstance(args.out, StoreUrl):
        return _on_store(args, options, argv)
    from batch.cluster.plan import is_sharded

    if is_sharded(args.out):  # its results are in shards/: a run here would buy them all again
        where = getattr(args, "store", None) or args.out
        raise UsageError(
            f"{where} holds a batch submitted in shards (cluster/plan.json): its tasks are run by "
            f"`maas-batch worker`, their failures by `maas-batch retry-failed {where} --redis URL`; `run` "
            "into another --out"
        )
    if args.dry_run:
        return _dry_run(args, options)
    probe_lock(args.out)  # a second run on DIR gives up now, before any slow import or manifest check
    _said_unused(args, options)
    # where a run starts, in a log file that many runs append to
    log.info(
        "maas-batch %s run: manifest %s, directory %s, pid %d",
        __version__,
        args.manifest.absolute(),
        args.out.absolute(),
        os.getpid(),
    )
    # a big manifest is checked in a child while this process imports the HTTP stack and the engine
    aside = check_aside(args.manifest, options, args.out)
    try:
        return _run(args, options, argv, aside)
    finally:
        if aside is not None:
            aside.close()  # a child still checking (the run stopped first) is ended


def _run(args: argparse.Namespace, options: Options, argv: list[str], aside: CheckAside | None) -> int:
    # the HTTP stack and the engine, imported after the lock's probe: a refused second run gives up fast
    import anyio

    from batch.kind import builtin_registry as registry
    from batch.manifest import plancache
    from batch.running.job import Job

    deadline = options.deadline_time()
    with connection(options) as connected:
        checked = checked_manifest(
            args.manifest, options, connected.endpoint, args.out / plancache.FOLDER, out=args.out, aside=aside
        )
        config = job_config(options, checked, args.out, connected, recorded_command(argv), deadline)
        store = getattr(args, "store", None)
        if store is not None:  # the run works in a staging DIR and mirrors it (its gallery: at the end)
            config = dataclasses.replace(config, store=str(store))
        observers, bar = _observers(args, show_bar(args))
        try:
            with Job(config, checked, registry(), observers) as job:
                try:
                    summary = anyio.run(_run_with_signals, job, options.grace, backend_options=loop_options())
                except BaseExceptionGroup as group:
                    raise unwrap(group) from None
                retried, rerun = job.retried, job.rerun
        finally:
            if bar is not None:
                bar.close()
    try:
        # args.out: DIR, or the staging DIR of a run on a store, where the page was written before it went up
        out = getattr(args, "store", None) or args.out
        _print_summary(summary, out, (retried, rerun), args.out / "index.html")
    except (BrokenPipeError, StdoutError) as exc:  # a closed stdout, or a cron job's log on a full disk:
        # the run's own exit code matters more, and what stdout would have said is in DIR (results, ledger,
        # the run's log)
        to_devnull(sys.stdout)  # Python's last flush goes nowhere
        if isinstance(exc, StdoutError):
            with contextlib.suppress(OSError):
                print(f"maas-batch: could not print the run's summary: {exc.reason}", file=sys.stderr)
    return summary.exit_code


def _said_unused(args: argparse.Namespace, options: Options) -> None:
    """Flags this run was given that have nothing to act on: said, not silently dropped."""
    if getattr(args, "stage", None) is not None and getattr(args, "store", None) is None:
        log.warning("--stage is for an --out on a store (s3://..., az://...): this run writes %s", args.out)
    if not options.fsync and options.sync_interval == 0:
        log.warning("--sync-interval 0 fsyncs each line, --no-fsync none: no line is fsync'd")
    if options.concurrency != "auto" and options.max_concurrency != DEFAULT_MAX_CONCURRENCY:
        log.warning(
            "--max-concurrency is the ceiling of --concurrency auto: with --concurrency N it does nothing"
        )


def _on_store(args: argparse.Namespace, options: Options, argv: list[str]) -> int:
    """`run --out s3://...`: the run works in a local staging DIR assembled from the store's segments
    (so it resumes from what any earlier run saved there), and mirrors what it saves into the store."""
    from batch.output.remote import empty, flush_kept, held_here, left_by_a_run, open_store, staging

    store = open_store(args.out)
    stage = args.stage
    # a second run on the store from this machine (cron's tonight, while last night's goes on) gives up
    # before it reads the store or touches a kept folder; a dry run sends nothing, and needs no lock
    with contextlib.nullcontext() if args.dry_run else held_here(store):
        if stage is not None and stage.exists() and (not stage.is_dir() or any(stage.iterdir())):
            if not left_by_a_run(stage):
                raise UsageError(f"--stage {stage}: give a new or empty folder, or one a run on a store kept")
            if args.dry_run:  # it would upload what the folder holds, and empty it: no dry run's doing
                raise UsageError(f"--stage {stage}: a dry run takes a new or empty folder, not a kept one")
            # a folder a stopped run kept: what it holds and the store lacks goes up before anything is
            # sent; under the folder's own lock, so that a run still working in it (75) keeps it
            held = acquire(stage)
            try:
                flush_kept(store, stage)
                empty(stage)
            finally:
                os.close(held)
        with staging(store, stage) as folder:
            return run(argparse.Namespace(**{**vars(args), "out": folder, "store": args.out}), options, argv)


def recorded_command(argv: list[str]) -> dict[str, Any]:
    """The run's command line, as its log's start line keeps it (for `retry-failed`): each flag under its
    full name, as argparse read it (`--dead` is kept as `--deadline`: retry-failed finds the flags it
    leaves out by name), and the password of the --redis URL left out. The log goes into DIR and up to a
    store; the README promises a Redis URL is written without its password. (Values are kept as given:
    they make the tasks.)"""
    from batch.cli.grammar import run_flags_in_full

    full = run_flags_in_full(argv)
    kept = list(full)
    for index, arg in enumerate(full):
        flag, equals, value = arg.partition("=")
        if equals and flag == "--redis":
            kept[index] = f"{flag}={_without_password(value)}"
        elif index and full[index - 1] == "--redis":
            kept[index] = _without_password(arg)
    info: dict[str, Any] = {"argv": kept, "cwd": os.getcwd()}
    if kept != full:
        info["passwords_left_out"] = True
    return info


def _without_password(url: str) -> str:
    """The URL as the queue's plan writes it: no password, in its user part or its query."""
    from batch.values import without_password

    return without_password(url)


def _dry_run(args: argparse.Namespace, options: Options) -> int:
    """Check, then estimate what the run would spend on the tasks DIR does not hold yet; send nothing."""
    # the engine's modules, for this command only (the module itself stays light for a fast refusal)
    from batch.kind import builtin_registry as registry
    from batch.manifest.plan import Plan, iter_tasks
    from batch.output.report import changed_line, format_plan
    from batch.output.store import RESULTS, finished_results, requested_results, retried_ids
    from batch.running.finishedset import changed_digests
    from batch.running.idset import IdSet, digest

    if not options.simulate:  # what the run would refuse at its start (78)
        base_url_for(options)
    redis_url_for(options)
    checked = checked_manifest(args.manifest, options, endpoint_for(options), out=args.out)
    prices = price_table(checked.manifest.prices, options.prices)
    print("\n".join(format_plan(str(args.manifest), checked.plan, prices)))
    if options.max_cost is not None:
        need_prices(checked, prices)  # the run would refuse to start (exit 78): say so now
    finished = list(finished_results(args.out / RESULTS))
    where = getattr(args, "store", None) or args.out  # a store's URL, not its staging DIR's path
    retry, rerun = options.retry_failed, options.rerun_changed
    plan = checked.plan
    changed = IdSet()
    if finished:
        failing = IdSet(task_id for task_id, failed in finished if failed) if retry else IdSet()
        failing.freeze()  # with --retry-failed, their lines go aside and they are sent: not kept

        def kept() -> Iterator[tuple[str, str]]:
            return (line for line in requested_results(args.out / RESULTS) if line[0] not in failing)

        changed = changed_digests(plan.order, plan.requests, kept)
    if finished or retry:
        # What the run would send: the tasks without a line; with --retry-failed, the failed ones only
        # (and those an earlier --retry-failed moved aside but was stopped before sending); with
        # --rerun-changed, the finished ones whose request changed too.
        if retry:
            done = IdSet(task_id for task_id, _ in finished)
            again = (task_id for task_id in retried_ids(args.out) if task_id not in done)
            listed = IdSet([*(task_id for task_id, failed in finished if failed), *again])
        else:
            listed = IdSet(task_id for task_id, _ in finished)
        what = "to retry" if retry else "left to do"
        left = Plan(str(args.manifest))
        kinds = registry()
        for spec in iter_tasks(checked.manifest, checked.builder):
            if (spec.id in listed) == retry or (rerun and changed.contains_digest(digest(spec.id))):
                left.total += 1
                left.counts[(spec.kind, spec.model or "-", spec.endpoint)] += 1
                left.estimate(spec.kind, spec.model or "-", kinds[spec.kind].estimate(spec.fields))
        heading = f"{what} in {where}: {left.total:,} of {checked.plan.total:,} tasks"
        print("\n".join(format_plan(str(args.manifest), left, prices, heading)))
        orphaned = sum(task_id not in checked.plan.ids for task_id, _ in finished)
        if orphaned and left.total:  # as the run warns: what it sends may be those tasks under other names
            print(
                f"{orphaned:,} result line(s) in {where} are of tasks this manifest no longer has "
                "(a prompt, a setting or the endpoint changed since they ran, or the task was removed)"
            )
        if changed:  # as the run warns
            print(changed_line(len(changed), rerun))
    print("dry run: nothing was sent")
    return EXIT_OK


def _observers(args: argparse.Namespace, show_bar: bool) -> tuple[list[Observer], ProgressBar | None]:
    from batch.cli.progress import LogLines, ProgressBar  # tqdm, once the run is sure to start

    if not show_bar:  # with --quiet too: stderr then shows its warnings only, a --log-file every line
        return [LogLines()], None
    bar = ProgressBar(sys.stderr)
    if getattr(args, "log_file", None) is None:
        return [bar], bar
    # the bar shows the run on the terminal; the log file gets its lines as without a bar
    for handler in logging.getLogger("batch").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.addFilter(lambda record: record.name != "batch.run")
    return [bar, LogLines()], bar


async def _run_with_signals(job: Job, grace: float) -> RunSummary:
    import anyio  # like every heavy import of this module, after the lock probe (see run)

    async with anyio.create_task_group() as group:
        await group.start(_watch_signals, job, grace)
        summary = await job.run()
        group.cancel_scope.cancel()
    return summary


async def _watch_signals(job: Job, grace: float, *, task_status: TaskStatus[None]) -> None:
    """First SIGINT/SIGTERM/SIGHUP: stop dispatching, give requests in flight `grace` seconds, exit 75.
    Another one: cancel what is still in flight (the run stays resumable). SIGHUP is the terminal or the
    ssh session closing under a run started without nohup: by default it killed the process at once,
    answers in flight lost; the run's display is then gone, and dropped at its first failed write."""
    import anyio  # after the lock probe (see run)

    stops = (signal.SIGINT, signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))
    with anyio.open_signal_receiver(*stops) as signals:
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
    import anyio  # after the lock probe (see run)

    await anyio.sleep(grace)
    log.warning("grace period of %g s over: cancelling the requests still in flight", grace)
    job.cancel_in_flight()


def _print_summary(summary: RunSummary, out: Path | str, again: tuple[int, int], page: Path) -> None:
    """`again`: the failed tasks --retry-failed, and the changed ones --rerun-changed, made pending."""
    from batch.running.prices import money  # the engine, after the lock probe (see run)

    lines = [
        f"maas-batch: {summary.succeeded} succeeded, {summary.failed} failed, "
        f"{summary.finished_before} already done"
        + (f" ({summary.failed_before} of them failed)" if summary.failed_before else "")
        + f", {summary.not_run} not run ({summary.total} tasks, {summary.seconds:.1f} s)",
        f"tokens: {summary.total_tokens:,} "
        f"(input {summary.input_tokens:,}, output {summary.output_tokens:,}) "
        f"in {summary.billed_answers} billed answer{'s' if summary.billed_answers != 1 else ''}, "
        f"{money(summary.cost)}"
        + (f" + {summary.unpriced} answers of models with no price" if summary.unpriced else "")
        + (f"; {summary.retries} retries" if summary.retries else ""),
    ]
    retried, rerun = again
    if rerun:
        sent = summary.succeeded + summary.failed
        lines.append(
            f"{rerun} finished task(s) whose request changed were "
            + ("given another go" if sent else "set aside to be sent again; none was sent")
            + " (--rerun-changed; their old lines are in results.retried.jsonl)"
        )
    if retried:
        if summary.succeeded + summary.failed:
            lines.append(f"{retried} failed task(s) were given another go (--retry-failed)")
        else:  # stopped before any was sent (a budget reached): they are still to be tried again
            lines.append(
                f"{retried} failed task(s) are to be given another go (--retry-failed); none was sent"
            )
    if summary.left_alone:
        lines.append(
            f"{summary.left_alone} pending task(s) left alone: --retry-failed runs the failed ones only; "
            "run without it for the rest"
        )
    if summary.interrupted:
        lines.append(
            f"{summary.interrupted} request(s) of an earlier run that was killed may have been billed "
            "without a result; they are counted in maybe_billed of their tasks"
        )
    if summary.maybe_billed:
        counted = summary.maybe_billed_counted
        lines.append(
            f"{summary.maybe_billed} request(s) may have been billed without a saved result "
            "(sent, then cut off or cancelled before their answer was saved): "
            f"{counted} in the cost above (a usage so far: they may have cost more), "
            f"{summary.maybe_billed - counted} in no cost (no usage came)"
        )
    if summary.stop_reason:
        lines.append(f"stopped: {summary.stop_reason}")
        resume = "run the same command again to resume"
        if isinstance(out, str):  # a store: its staging folder may hold what the store lacks
            from batch.output.remote import staging_unmirrored

            if staging_unmirrored(page.parent):
                resume = (
                    f"run the same command again with --stage {page.parent} to resume: that folder holds "
                    "paid answers the store lacks, which go up first rather than be bought again"
                )
        lines.append(
            {
                EXIT_BUDGET: "run again with a higher --max-cost / --max-tokens to carry on",
                EXIT_DEADLINE: "run the same command again (with a later --deadline) to carry on",
            }.get(summary.stop_code or 0, resume)
        )
    elif summary.failed or summary.failed_before:
        where = f"{out}/results" if isinstance(out, str) else out / "results.jsonl"  # a store's segments
        lines.append(f"failures are in {where}; `maas-batch retry-failed {out}` runs them again")
    gallery = f"{out}/index.html" if isinstance(out, str) else page  # a store's page is an object there
    shown = f" (gallery: {gallery})" if page.exists() else ""
    lines.append(f"output: {out}{shown}")
    _to_log_files(lines)
    print("\n".join(lines), flush=True)  # a full disk under stdout is met here, by the handler around it


def _to_log_files(lines: list[str]) -> None:
    """The summary goes to stdout, and into --log-file too: the morning's read of a cron run."""
    for handler in logging.getLogger("batch").handlers:
        if isinstance(handler, logging.FileHandler):
            for line in lines:
                handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, line, (), None))
