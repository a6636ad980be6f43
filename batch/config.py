"""A run's settings, the same for the command line and for programs that import batch: `Options` (what
the flags of `maas-batch run` say), the connection from the environment, and the JobConfig made of both.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from batch.defaults import (
    DEFAULT_BACKOFF,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_BASE_URL,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_OUTAGE_LIMIT,
    DEFAULT_TASK_DEADLINE,
    DEFAULT_TIMEOUT,
)
from batch.errors import ConfigError, ManifestError, Problem, UsageError

if TYPE_CHECKING:
    from batch.manifest.tasks import BuildSettings
    from batch.running.job import CheckedManifest, JobConfig
    from batch.running.prices import PriceTable

log = logging.getLogger("batch")

SIMULATED_ENDPOINT = "simulator"


@dataclass(frozen=True)
class Options:
    """How to run a manifest: the flags of `maas-batch run`, as keywords. The API key is not here: it comes
    from MAAS_API_KEY only."""

    simulate: bool = False  # run against the built-in simulator (no key needed)
    base_url: str | None = None  # default: MAAS_BASE_URL, else the MaaS API
    endpoint: str | None = None  # for tasks the manifest gives none; default: MAAS_ENDPOINT
    endpoints: Mapping[str, str] = field(default_factory=dict)  # --endpoint: {kind | model | "*": endpoint}
    overrides: Mapping[str, Any] = field(default_factory=dict)  # --set: {field: v} or {kind: {field: v}}
    concurrency: int | Literal["auto"] = DEFAULT_CONCURRENCY
    max_concurrency: int = 256
    rpm: float | None = None
    tpm: float | None = None
    prices: Mapping[str, Any] | str | Path | None = (
        None  # {model: {text_input, image_input, output}} or a file
    )
    max_cost: float | None = None  # US dollars, for everything DIR's ledger holds
    max_tokens: int | None = None
    deadline: datetime | float | str | None = None  # a datetime, unix time, or "07:00" / ISO text
    max_duration: float | str | None = None  # seconds, or "6h", "45m"
    timeout: float = DEFAULT_TIMEOUT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    task_deadline: float = DEFAULT_TASK_DEADLINE
    backoff: float = DEFAULT_BACKOFF
    backoff_max: float = DEFAULT_BACKOFF_MAX
    outage_limit: float = DEFAULT_OUTAGE_LIMIT
    max_answer_mb: float = 64
    retry_failed: bool = False  # send the failed tasks again, and only them
    gallery: bool = True  # thumbnails and DIR/index.html
    fsync: bool = True
    sync_interval: float = 0.1
    heartbeat: float = 0.0  # seconds between Heartbeat events (0: none)

    def __post_init__(self) -> None:
        """The checks the command line's flags get (a NaN budget would silently be no budget)."""

        def number(name: str, *, zero: bool, none: bool = True) -> None:
            value = getattr(self, name)
            if value is None and none:
                return
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise UsageError(f"{name} must be a number, not {value!r}")
            if value < 0 or (value == 0 and not zero):
                raise UsageError(f"{name} must be {'0 or more' if zero else 'more than 0'}, not {value!r}")

        if self.concurrency != "auto":
            if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int):
                raise UsageError(f"concurrency must be a whole number or 'auto', not {self.concurrency!r}")
            number("concurrency", zero=False)
        if isinstance(self.max_concurrency, bool) or not isinstance(self.max_concurrency, int):
            raise UsageError(f"max_concurrency must be a whole number, not {self.max_concurrency!r}")
        number("max_concurrency", zero=False)
        for name in ("rpm", "tpm", "timeout", "task_deadline", "max_answer_mb", "max_tokens"):
            number(name, zero=False)
        for name in ("max_cost", "backoff", "backoff_max", "outage_limit", "sync_interval", "heartbeat"):
            number(name, zero=True)
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise UsageError(f"max_attempts must be a whole number, not {self.max_attempts!r}")
        number("max_attempts", zero=False)

    def deadline_time(self) -> float | None:
        """The earlier of `deadline` and now + `max_duration`, as unix time."""
        from batch.cli.grammar import parse_deadline, parse_duration

        moments = []
        deadline = self.deadline
        if isinstance(deadline, datetime):
            moments.append(deadline.timestamp())
        elif isinstance(deadline, str):
            moments.append(_parsed(parse_deadline, deadline, "deadline"))
        elif deadline is not None:
            moments.append(float(deadline))
        if isinstance(self.max_duration, str):
            moments.append(time.time() + _parsed(parse_duration, self.max_duration, "max_duration"))
        elif self.max_duration is not None:
            moments.append(time.time() + float(self.max_duration))
        return min(moments) if moments else None

    def build_settings(self, env_endpoint: str | None) -> BuildSettings:
        from batch.manifest.tasks import BuildSettings

        return BuildSettings(
            overrides=dict(self.overrides), endpoints=dict(self.endpoints), env_endpoint=env_endpoint
        )


def _parsed(parse: Any, text: str, name: str) -> float:
    import argparse

    try:
        return float(parse(text))
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{name}: {exc}") from None


def env(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None


@dataclass(frozen=True)
class Connection:
    base_url: str
    api_key: str = field(repr=False)
    endpoint: str | None  # for tasks the manifest gives none


def endpoint_for(options: Options) -> str | None:
    """The endpoint of tasks that name none, before a connection exists (validate, dry run)."""
    return options.endpoint or env("MAAS_ENDPOINT") or (SIMULATED_ENDPOINT if options.simulate else None)


@contextlib.contextmanager
def connection(options: Options) -> Iterator[Connection]:
    """Where requests go, from the environment; or the built-in simulator, with a throwaway key."""
    if not options.simulate:
        api_key = env("MAAS_API_KEY")
        if api_key is None:
            raise ConfigError("MAAS_API_KEY is not set: export your API key (or try --simulate)")
        base_url = options.base_url or env("MAAS_BASE_URL") or DEFAULT_BASE_URL
        yield Connection(base_url, api_key, endpoint_for(options))
        return
    from batch.simulator import SimConfig, simulator_in_thread

    key = "sim-" + secrets.token_hex(8)
    with simulator_in_thread(SimConfig(api_key=key, latency=0.2, latency_jitter=0.5)) as sim:
        log.debug("simulator listening on %s", sim.base_url)
        yield Connection(sim.base_url, key, endpoint_for(options))


def price_table(manifest_prices: Any, extra: Mapping[str, Any] | str | Path | None) -> PriceTable:
    """Built-in list prices, then the manifest's `prices:`, then --prices FILE (or a mapping from code)."""
    from batch.running.prices import PriceTable, load_prices, parse_prices

    # The manifest's mistakes were reported with the manifest's other problems.
    table = PriceTable().with_overrides(parse_prices(manifest_prices, "prices")[0], "the manifest's prices:")
    if extra is None:
        return table
    if isinstance(extra, Mapping):
        found, mistakes = parse_prices(extra, "prices")
        origin = "prices given in code"
    else:
        found, mistakes = load_prices(Path(extra))
        origin = str(extra)
    if mistakes:
        raise ManifestError([Problem(origin, None, mistake) for mistake in mistakes])
    return table.with_overrides(found, origin)


def need_prices(checked: CheckedManifest, prices: PriceTable) -> None:
    """A cost budget cannot count what has no price: refuse before sending rather than overspend."""
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


def job_config(
    options: Options,
    checked: CheckedManifest,
    out: Path,
    connected: Connection,
    run_info: Mapping[str, Any],
    deadline: float | None,
) -> JobConfig:
    """Everything a run of `checked` into `out` needs; refuses a cost budget that cannot be counted."""
    from batch.running.budget import BudgetLimits
    from batch.running.client import ClientConfig
    from batch.running.job import JobConfig
    from batch.running.limits import Limits
    from batch.running.retry import RetryPolicy
    from batch.running.runner import RunSettings

    prices = price_table(checked.manifest.prices, options.prices)
    budget = BudgetLimits(max_cost=options.max_cost, max_tokens=options.max_tokens)
    if budget.max_cost is not None:
        need_prices(checked, prices)
    concurrency = None if options.concurrency == "auto" else options.concurrency
    return JobConfig(
        manifest=checked.manifest.path,
        out=out,
        client=ClientConfig(
            base_url=connected.base_url,
            api_key=connected.api_key,
            timeout=options.timeout,
            connections=max(concurrency or options.max_concurrency, 10),
            max_body_bytes=int(options.max_answer_mb * 2**20),
        ),
        run=RunSettings(
            limits=Limits(
                rpm=options.rpm,
                tpm=options.tpm,
                concurrency=concurrency,
                max_concurrency=options.max_concurrency,
            ),
            retry=RetryPolicy(
                max_attempts=options.max_attempts,
                deadline=options.task_deadline,
                backoff_base=options.backoff,
                backoff_max=options.backoff_max,
            ),
            outage_limit=options.outage_limit,
            prices=prices,
            budget=budget,
            deadline=deadline,
            heartbeat=options.heartbeat,
        ),
        fsync=options.fsync,
        sync_interval=options.sync_interval,
        retry_failed=options.retry_failed,
        gallery=options.gallery,
        run_info=run_info,
    )
