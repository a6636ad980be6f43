"""`maas-batch run`: settings from the flags and the environment, a dry run, signals, progress, the summary.
The work itself is batch.job's.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from batch.cli import SIMULATED_ENDPOINT, check, env, price_table
from batch.defaults import DEFAULT_BASE_URL
from batch.errors import ConfigError
from batch.exitcodes import EXIT_BUDGET, EXIT_DEADLINE, EXIT_OK, EXIT_TEMPFAIL
from batch.lock import probe as probe_lock

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from batch.events import Observer
    from batch.job import CheckedManifest, Job
    from batch.prices import PriceTable
    from batch.progress import ProgressBar
    from batch.runner import RunSummary

log = logging.getLogger("batch.cli")


@dataclass(frozen=True)
class Connection:
    base_url: str
    api_key: str = field(repr=False)
    env_endpoint: str | None


@contextlib.contextmanager
def connection(simulate: bool) -> Iterator[Connection]:
    """Where requests go, from the environment; or the built-in simulator, with a throwaway key."""
    if not simulate:
        api_key = env("MAAS_API_KEY")
        if api_key is None:
            raise ConfigError("MAAS_API_KEY is not set: export your API key (or try --simulate)")
        yield Connection(env("MAAS_BASE_URL") or DEFAULT_BASE_URL, api_key, env("MAAS_ENDPOINT"))
        return
    from batch.simulator import SimConfig, simulator_in_thread

    key = "sim-" + secrets.token_hex(8)
    with simulator_in_thread(SimConfig(api_key=key, latency=0.2, latency_jitter=0.5)) as sim:
        log.debug("simulator listening on %s", sim.base_url)
        yield Connection(sim.base_url, key, env("MAAS_ENDPOINT") or SIMULATED_ENDPOINT)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.dry_run:
        return _dry_run(args)
    probe_lock(args.out)  # a second run on DIR gives up now, before any slow import or manifest check
    import anyio

    from batch import plancache
    from batch.budget import BudgetLimits
    from batch.client import ClientConfig
    from batch.job import Job, JobConfig
    from batch.limits import Limits
    from batch.retry import RetryPolicy
    from batch.runner import RunSettings
    from jobs import registry

    deadline = _deadline(args)
    with connection(args.simulate) as connected:
        checked = check(args, connected.env_endpoint, args.out / plancache.FOLDER)
        if isinstance(checked, int):
            return checked
        prices = price_table(checked.manifest.prices, args.prices)
        budget = BudgetLimits(max_cost=args.max_cost, max_tokens=args.max_tokens)
        if budget.max_cost is not None:
            _need_prices(checked, prices)
        show_bar = not args.quiet and (args.progress if args.progress is not None else sys.stderr.isatty())
        config = JobConfig(
            manifest=args.manifest,
            out=args.out,
            client=ClientConfig(
                base_url=connected.base_url,
                api_key=connected.api_key,
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
                prices=prices,
                budget=budget,
                deadline=deadline,
                heartbeat=0.0 if show_bar or args.quiet else args.log_every,
            ),
            fsync=args.fsync,
            sync_interval=args.sync_interval,
            retry_failed=args.retry_failed,
            gallery=args.gallery,
            run_info={"argv": argv, "cwd": os.getcwd()},
        )
        observers, bar = _observers(args, show_bar)
        try:
            with Job(config, checked, registry(), observers) as job:
                summary = anyio.run(_run_with_signals, job, args.grace)
                retried = job.retried
        finally:
            if bar is not None:
                bar.close()
    try:
        _print_summary(summary, args.out, retried)
    except BrokenPipeError:  # the run's own exit code matters more than a closed stdout
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return summary.exit_code


def _deadline(args: argparse.Namespace) -> float | None:
    """The earlier of --deadline and now + --max-duration (unix time), or None."""
    moments = [args.deadline] if args.deadline is not None else []
    if args.max_duration is not None:
        moments.append(time.time() + args.max_duration)
    return min(moments) if moments else None


def _need_prices(checked: CheckedManifest, prices: PriceTable) -> None:
    """--max-cost cannot count what has no price: refuse before sending rather than overspend."""
    missing = sorted({model for _, model in checked.plan.estimates if prices.price(model) is None})
    if "-" in missing:
        raise ConfigError(
            "--max-cost needs a price for every task, and some tasks name no model: give them a model "
            "(in defaults: or per task) so that they can be priced"
        )
    if missing:
        raise ConfigError(
            f"--max-cost needs a price for every model; none for {', '.join(missing)}: add them "
            "under prices: in the manifest or in a --prices FILE"
        )


def _dry_run(args: argparse.Namespace) -> int:
    """Check, then estimate what the run would spend on the tasks DIR does not hold yet; send nothing."""
    from batch.idset import IdSet
    from batch.plan import Plan, iter_tasks
    from batch.report import format_plan
    from batch.store import RESULTS, finished_results
    from jobs import registry

    env_endpoint = env("MAAS_ENDPOINT") or (SIMULATED_ENDPOINT if args.simulate else None)
    checked = check(args, env_endpoint)
    if isinstance(checked, int):
        return checked
    prices = price_table(checked.manifest.prices, args.prices)
    print("\n".join(format_plan(str(args.manifest), checked.plan, prices)))
    done = IdSet(task_id for task_id, _ in finished_results(args.out / RESULTS))
    if len(done):
        left = Plan(str(args.manifest))
        kinds = registry()
        for spec in iter_tasks(checked.manifest, checked.builder):
            if spec.id not in done:
                left.total += 1
                left.counts[(spec.kind, spec.model or "-", spec.endpoint)] += 1
                left.estimate(spec.kind, spec.model or "-", kinds[spec.kind].estimate(spec.fields))
        heading = f"left to do in {args.out}: {left.total:,} of {checked.plan.total:,} tasks"
        print("\n".join(format_plan(str(args.manifest), left, prices, heading)))
    print("dry run: nothing was sent")
    return EXIT_OK


def _observers(args: argparse.Namespace, show_bar: bool) -> tuple[list[Observer], ProgressBar | None]:
    from batch.progress import LogLines, ProgressBar

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


def _print_summary(summary: RunSummary, out: Path, retried: int) -> None:
    from batch.prices import money

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
    if retried:
        lines.append(f"{retried} failed task(s) were given another go (--retry-failed)")
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
        lines.append(
            {
                EXIT_BUDGET: "run again with a higher --max-cost / --max-tokens to carry on",
                EXIT_DEADLINE: "run the same command again (with a later --deadline) to carry on",
            }.get(summary.stop_code or 0, "run the same command again to resume")
        )
    elif summary.failed or summary.failed_before:
        lines.append(
            f"failures are in {out / 'results.jsonl'}; `maas-batch retry-failed {out}` runs them again"
        )
    gallery = out / "index.html"
    lines.append(f"output: {out}" + (f" (gallery: {gallery})" if gallery.exists() else ""))
    _to_log_files(lines)
    print("\n".join(lines))


def _to_log_files(lines: list[str]) -> None:
    """The summary goes to stdout, and into --log-file too: the morning's read of a cron run."""
    for handler in logging.getLogger("batch").handlers:
        if isinstance(handler, logging.FileHandler):
            for line in lines:
                handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, line, (), None))
