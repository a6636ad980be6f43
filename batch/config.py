"""A run's settings, the same for the command line and for programs that import batch: `Options` (what
the flags of `maas-batch run` say), the connection from the environment, and the JobConfig made of both.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

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
    DOWNLOADS_AT_ONCE,
    MAX_IN_FLIGHT,
)
from batch.errors import ConfigError, ManifestError, OptionError, Problem, manifest_error
from batch.values import check_base_url, check_redis_url, parse_deadline, parse_duration

if TYPE_CHECKING:
    from batch.kind import Registry
    from batch.manifest.aside import CheckAside
    from batch.manifest.checked import CheckedManifest
    from batch.manifest.plan import Plan
    from batch.manifest.read import Manifest
    from batch.manifest.tasks import BuildSettings
    from batch.running.job import JobConfig
    from batch.running.prices import PriceTable

log = logging.getLogger("batch")

SIMULATED_ENDPOINT = "simulator"

# How each number of Options is checked (None always passes: no such limit).
WHOLE = ("max_concurrency", "max_attempts", "max_tokens")  # 1 or more; `concurrency` too, unless "auto"
ABOVE_ZERO = ("rpm", "tpm", "timeout", "task_deadline", "max_answer_mb")
ZERO_OR_MORE = ("max_cost", "backoff", "backoff_max", "outage_limit", "sync_interval", "heartbeat", "grace")


@dataclass(frozen=True)
class Options:
    """How to run a manifest: the flags of `maas-batch run`, as keywords. The API key is not here: it comes
    from MAAS_API_KEY only. Every value is checked here, once, for the library and the command line."""

    simulate: bool = False  # run against the built-in simulator (no key needed)
    base_url: str | None = None  # default: MAAS_BASE_URL, else the MaaS API
    endpoint: str | None = None  # for tasks the manifest gives none; default: MAAS_ENDPOINT
    endpoints: Mapping[str, str] = field(default_factory=dict)  # --endpoint: {kind | model | "*": endpoint}
    overrides: Mapping[str, Any] = field(default_factory=dict)  # --set: {field: v} or {kind: {field: v}}
    allow_unknown: bool = False  # send chat fields and model names that look like typos as they are
    concurrency: int | Literal["auto"] = DEFAULT_CONCURRENCY
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    rpm: float | None = None
    tpm: float | None = None
    redis: str | None = field(default=None, repr=False)  # share the limits by key; default: MAAS_REDIS_URL
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
    max_answer_mb: float = DEFAULT_MAX_ANSWER_MB
    retry_failed: bool = False  # send the failed tasks again, and only them
    rerun_changed: bool = False  # send again the finished tasks whose request changed since they ran
    gallery: bool = True  # thumbnails and DIR/index.html
    fsync: bool = True
    sync_interval: float = DEFAULT_SYNC_INTERVAL
    heartbeat: float = 0.0  # seconds between Heartbeat events (0: none)
    grace: float = DEFAULT_GRACE  # after a stop, seconds the requests in flight get before they are cancelled

    def __post_init__(self) -> None:
        """Refuse what no run could use (a NaN budget would silently be no budget): OptionError, exit 64."""
        if self.concurrency != "auto":
            _check_whole("concurrency", self.concurrency, "a whole number or 'auto'")
        for name in WHOLE:
            _check_whole(name, getattr(self, name), "a whole number")
        for name in ("concurrency", "max_concurrency"):
            value = getattr(self, name)
            if isinstance(value, int) and value > MAX_IN_FLIGHT:  # each is a task of the loop, made at once
                raise OptionError(name, f"must be at most {MAX_IN_FLIGHT:,}, not {value:,}")
        for name in ABOVE_ZERO:
            _check_number(name, getattr(self, name), zero=False)
        for name in ZERO_OR_MORE:
            _check_number(name, getattr(self, name), zero=True)
        self._check_kinds_of_values()

    def _check_kinds_of_values(self) -> None:
        """The fields that are not numbers: of the type they must have, so that a library call fails here,
        with the option's name, not deep in the run (`overrides="quality=low"` was a ValueError of dict)."""
        for name in ("simulate", "allow_unknown", "retry_failed", "rerun_changed", "gallery", "fsync"):
            if not isinstance(getattr(self, name), bool):  # "no" would have been taken as True
                raise OptionError(name, f"must be True or False, not {_shown(getattr(self, name))}")
        for name in ("endpoints", "overrides"):
            if not isinstance(getattr(self, name), Mapping):
                raise OptionError(name, f"must be a mapping, not {_shown(getattr(self, name))}")
        for name, check in (("base_url", check_base_url), ("endpoint", None), ("redis", check_redis_url)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise OptionError(name, f"must be a string, not {_shown(value)}")
            if value is not None and check is not None:
                try:  # what the run would refuse once started (78), said by validate and a dry run too
                    check(value)
                except ValueError as exc:
                    raise OptionError(name, str(exc)) from None
        if self.prices is not None and not isinstance(self.prices, Mapping | str | Path):
            raise OptionError("prices", f"must be a mapping or a file's path, not {_shown(self.prices)}")
        deadline = self.deadline
        if isinstance(deadline, bool) or not isinstance(deadline, datetime | int | float | str | None):
            raise OptionError(
                "deadline", f"must be a time (datetime, unix time or text), not {_shown(deadline)}"
            )
        if isinstance(deadline, int | float) and not math.isfinite(deadline):
            raise OptionError("deadline", f"must be a finite unix time, not {_shown(deadline)}")
        duration = self.max_duration
        if isinstance(duration, bool) or not isinstance(duration, int | float | str | None):
            raise OptionError("max_duration", f"must be seconds or text such as 6h, not {_shown(duration)}")
        if isinstance(duration, int | float):
            _check_number("max_duration", duration, zero=False)  # -5 ended the run at once (exit 4)

    def deadline_time(self) -> float | None:
        """The earlier of `deadline` and now + `max_duration`, as unix time."""
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

    def build_settings(self, env_endpoint: str | None, id_scheme: int | None = None) -> BuildSettings:
        from batch.manifest.tasks import BuildSettings  # the manifest package, only when a manifest is read

        priced, prices_file, lines = self._priced_models()
        return BuildSettings(
            overrides=_nested(self.overrides),
            endpoints=dict(self.endpoints),
            env_endpoint=env_endpoint,
            allow_unknown=self.allow_unknown,
            known_models=priced,
            prices_file=prices_file,
            prices_lines=lines,
            **({"id_scheme": id_scheme} if id_scheme is not None else {}),
        )

    def _priced_models(self) -> tuple[tuple[str, ...], str | None, dict[str, int]]:
        """The models `prices` gives a price for, what messages call where they come from, and the line
        of each in a file: their names are checked with the manifest (a file's other mistakes are
        reported when it is read for its prices)."""
        from batch.running.prices import load_prices

        if isinstance(self.prices, Mapping):
            return tuple(sorted(map(str, self.prices))), PRICES_IN_CODE, {}
        if self.prices is None:
            return (), None, {}
        read = load_prices(Path(self.prices))
        return tuple(sorted(read.prices)), str(self.prices), read.lines


class OptionValues(TypedDict, total=False):
    """The fields of Options as keyword arguments (`batch.run(..., **options)`), so that mypy checks them.
    A test keeps the two in step."""

    simulate: bool
    base_url: str | None
    endpoint: str | None
    endpoints: Mapping[str, str]
    overrides: Mapping[str, Any]
    allow_unknown: bool
    concurrency: int | Literal["auto"]
    max_concurrency: int
    rpm: float | None
    tpm: float | None
    redis: str | None
    prices: Mapping[str, Any] | str | Path | None
    max_cost: float | None
    max_tokens: int | None
    deadline: datetime | float | str | None
    max_duration: float | str | None
    timeout: float
    max_attempts: int
    task_deadline: float
    backoff: float
    backoff_max: float
    outage_limit: float
    max_answer_mb: float
    retry_failed: bool
    rerun_changed: bool
    gallery: bool
    fsync: bool
    sync_interval: float
    heartbeat: float
    grace: float


def _shown(value: object) -> str:
    """A value in a message as it was most likely typed: -1 rather than -1.0."""
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _nested(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` as --set's parser makes them: `{"chat.temperature": 0}` (the flag's KIND.FIELD, as a
    program may well write it) is `{"chat": {"temperature": 0}}`."""
    found: dict[str, Any] = {}
    for key, value in overrides.items():
        kind, dot, name = key.partition(".") if isinstance(key, str) else (key, "", "")
        if dot and kind and name:
            scoped = found.setdefault(kind, {})
            if isinstance(scoped, dict):
                scoped[name] = value
                continue
        if isinstance(value, Mapping) and isinstance(found.get(key), dict):
            found[key] = {**value, **found[key]}
        else:
            found[key] = dict(value) if isinstance(value, Mapping) else value
    return found


def _check_whole(name: str, value: object, what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(name, f"must be {what}, not {_shown(value)}")
    if value < 1:
        raise OptionError(name, f"must be at least 1, not {value}")


def _check_number(name: str, value: object, *, zero: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        # infinity too: --timeout inf failed every request ("cannot convert float infinity to integer",
        # each counted maybe billed) and --max-answer-mb inf crashed the run
        raise OptionError(name, f"must be a finite number, not {_shown(value)}")
    if value < 0 or (value == 0 and not zero):
        raise OptionError(name, f"must be {'0 or more' if zero else 'more than 0'}, not {_shown(value)}")


def _parsed(parse: Callable[[str], float], text: str, name: str) -> float:
    try:
        return parse(text)
    except ValueError as exc:
        raise OptionError(name, str(exc)) from None


ENVIRONMENT = ("MAAS_API_KEY", "MAAS_BASE_URL", "MAAS_ENDPOINT", "MAAS_REDIS_URL")  # what the tool reads
_looked = False  # whether the environment's names were looked at for a misspelt one of these


def env(name: str) -> str | None:
    """A variable of ENVIRONMENT, None when unset or blank. The first call says (once) which variables
    set look like a misspelling of one of them: a typo would otherwise do nothing, as if unset."""
    global _looked
    if not _looked:
        _looked = True
        for said in misspelt_environment(os.environ):
            log.warning("%s", said)
    return os.environ.get(name, "").strip() or None


_NEAR_PREFIXES = ("MAAS", "MAS_", "MASS", "MAA_", "MMAS")  # how a name meant to be ours may begin


def misspelt_environment(names: Iterable[str]) -> list[str]:
    """What to say of the variables among `names` that look like one of ENVIRONMENT misspelt (MAAS_BASEURL,
    maas_api_key, MASS_API_KEY): their names only, never their values. Not of one whose near name is set
    too (it is then likely another tool's: MAAS_API_URL), nor of one of them with a suffix of its own
    (MAAS_API_KEY_OLD)."""
    given = set(names)
    said = []
    for name in sorted(given):
        upper = name.upper()
        if (
            name in ENVIRONMENT
            or not upper.startswith(_NEAR_PREFIXES)
            or upper.startswith(tuple(f"{n}_" for n in ENVIRONMENT))
        ):
            continue
        meant = difflib.get_close_matches(upper, ENVIRONMENT, n=1, cutoff=0.85)
        # or one of ours cut short after a whole word: MAAS_REDIS for MAAS_REDIS_URL (0.83 alike)
        meant = meant or [n for n in ENVIRONMENT if n.startswith(f"{upper}_") and upper.count("_") >= 1][:1]
        if meant and meant[0] not in given:
            said.append(f"{name} is set, but maas-batch reads no such variable: did you mean {meant[0]}?")
    return said


@dataclass(frozen=True)
class Connection:
    base_url: str
    api_key: str = field(repr=False)
    endpoint: str | None  # for tasks the manifest gives none


def base_url_for(options: Options) -> str:
    """The base URL requests go to: `base_url`, MAAS_BASE_URL or the MaaS API's; ConfigError (78) for a
    MAAS_BASE_URL no request can be built on (validate and a dry run refuse it as the run does)."""
    # options.base_url is checked with the options
    return options.base_url or checked_env("MAAS_BASE_URL", check_base_url) or DEFAULT_BASE_URL


def redis_url_for(options: Options) -> str | None:
    """The Redis the run shares its limits through: `redis` or MAAS_REDIS_URL, None for none; ConfigError
    (78) for a MAAS_REDIS_URL that is no Redis URL."""
    return options.redis or checked_env("MAAS_REDIS_URL", check_redis_url)


def checked_env(name: str, check: Callable[[str], None]) -> str | None:
    """The variable `name` (see env), or ConfigError (78), named, where `check` refuses its value."""
    value = env(name)
    if value is not None:
        try:
            check(value)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return value


def endpoint_for(options: Options) -> str | None:
    """The endpoint of tasks that name none, before a connection exists (validate, dry run)."""
    return options.endpoint or env("MAAS_ENDPOINT") or (SIMULATED_ENDPOINT if options.simulate else None)


def uvloop_installed() -> bool:
    """Whether uvloop is there (`maas-batch[fast]`): a run's event loop is then uvloop's, which spends
    less CPU per request than asyncio's own (BENCHMARKS.md)."""
    import importlib.util

    return importlib.util.find_spec("uvloop") is not None


def loop_options() -> dict[str, Any]:
    """anyio's backend options for a run: uvloop where it is installed."""
    return {"use_uvloop": uvloop_installed()}


def loop_factory() -> Callable[[], Any] | None:
    """An event loop factory for asyncio.Runner: uvloop's where it is installed, else None (asyncio's)."""
    if not uvloop_installed():
        return None
    import uvloop

    factory: Callable[[], Any] = uvloop.new_event_loop
    return factory


@contextlib.contextmanager
def connection(options: Options) -> Iterator[Connection]:
    """Where requests go, from the environment; or the built-in simulator, with a throwaway key."""
    if not options.simulate:
        api_key = env("MAAS_API_KEY")
        if api_key is None:
            raise ConfigError("MAAS_API_KEY is not set: export your API key (or try --simulate)")
        yield Connection(base_url_for(options), api_key, endpoint_for(options))
        return
    from batch.simulator import SimConfig, simulator_in_thread  # aiohttp's server, only for --simulate

    key = "sim-" + secrets.token_hex(8)
    with simulator_in_thread(SimConfig(api_key=key, latency=0.2, latency_jitter=0.5)) as sim:
        log.debug("simulator listening on %s", sim.base_url)
        yield Connection(sim.base_url, key, endpoint_for(options))


def checked_manifest(
    manifest: str | Path | Manifest,
    options: Options,
    endpoint: str | None,
    cache: Path | None = None,
    kinds: Registry | None = None,
    out: Path | None = None,
    aside: CheckAside | None = None,
    ids: int | None = None,
) -> CheckedManifest:
    """The manifest checked whole, as a run would, sending nothing; `cache` is DIR's remembered plan,
    `kinds` the registry (the built-in kinds by default), `out` the directory whose id scheme the ids
    follow (none: a new directory's), `ids` that scheme when it is known otherwise (a submitted batch's),
    `aside` the same check begun in a child process (check_aside,
    batch.manifest.aside). Raises ManifestError with every problem: a MissingConfigError (exit 78) when
    each is missing configuration."""
    # the manifest and kind modules load when a command reads a manifest: `maas-batch --help` starts fast
    from batch.kind import builtin_registry as registry
    from batch.manifest.aside import Refusal
    from batch.manifest.checked import check
    from batch.manifest.read import Manifest

    source = manifest if isinstance(manifest, Manifest) else Path(manifest)
    from batch.manifest.ids import LATEST_IDS
    from batch.output.format import id_scheme

    scheme = ids if ids is not None else id_scheme(out) if out is not None else LATEST_IDS
    settings = options.build_settings(endpoint, scheme)
    kinds = kinds or registry()
    found = aside.take(settings, kinds) if aside is not None else None
    if isinstance(found, Refusal):
        raise manifest_error(found.problems, found.more, report=found.report)
    checked = found if found is not None else check(source, settings, kinds, cache)
    plan = checked.plan
    name = manifest.name if isinstance(manifest, Manifest) else str(manifest)
    if not plan.ok:
        raise manifest_error(plan.problems, plan.unshown, report=_described(plan, name))
    # nothing to do is no error (a night whose prompt file came empty), but not a silent one either
    for warning in plan.warnings:
        log.warning("%s", warning)
    if plan.total == 0 and not plan.warnings:
        in_code = isinstance(manifest, Manifest) and manifest.origin is not None
        log.warning("%s", f"no tasks were given ({name})" if in_code else f"{name} holds no tasks")
    return checked


def check_aside(manifest: Path, options: Options, out: Path) -> CheckAside | None:
    """A run's check of its manifest begun in a child process, with the settings checked_manifest will
    have (batch.manifest.aside: where it pays); None where it does not, or where the run cannot start."""
    if not options.simulate and env("MAAS_API_KEY") is None:
        return None  # the run stops at once (connection)
    from batch.kind import builtin_registry
    from batch.manifest import aside
    from batch.manifest.checked import check  # noqa: F401 - the child's and the run's, imported once
    from batch.output.format import id_scheme

    builtin_registry()  # the kinds' modules too
    settings = options.build_settings(endpoint_for(options), id_scheme(out))
    return aside.start(manifest, settings, out, _described)


def _described(plan: Plan, name: str) -> list[str]:
    """A refused plan as the command line prints it: each problem with how many more tasks share it."""
    count = len(plan.problems) + plan.unshown
    lines = [plan.describe(problem) for problem in plan.problems]
    if plan.dropped:
        lines.append(f"... and {plan.dropped} more problems")
    lines.append(f"{name}: {count} problem{'s' if count != 1 else ''}; nothing was sent")
    return lines


PRICES_IN_CODE = "prices given in code"  # what messages call Options.prices given as a mapping


def price_table(manifest_prices: Any, extra: Mapping[str, Any] | str | Path | None) -> PriceTable:
    """Built-in list prices, then the manifest's `prices:`, then --prices FILE (or a mapping from code)."""
    # the engine's modules load when a command uses them: `maas-batch --help` starts fast
    from batch.running.prices import PriceTable, load_prices, parse_prices

    # The manifest's mistakes were reported with the manifest's other problems.
    table = PriceTable().with_overrides(parse_prices(manifest_prices, "prices")[0], "the manifest's prices:")
    if extra is None:
        return table
    if not isinstance(extra, Mapping):
        read = load_prices(Path(extra))
        if read.problems:
            raise ManifestError(read.problems)
        return table.with_overrides(read.prices, str(extra))
    found, mistakes = parse_prices(extra, "prices")
    if mistakes:
        raise ManifestError([Problem(PRICES_IN_CODE, None, mistake) for mistake in mistakes])
    return table.with_overrides(found, PRICES_IN_CODE)


def check_run_settings(checked: CheckedManifest, options: Options) -> PriceTable:
    """What a run refuses before it sends, beside the manifest: its prices (ManifestError), a budget with a
    model it cannot price (ConfigError), a deadline it cannot read (OptionError). `validate` refuses the
    same. Returns the prices in force."""
    prices = price_table(checked.manifest.prices, options.prices)
    if options.max_cost is not None:
        need_prices(checked, prices)
    options.deadline_time()
    return prices


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
    # the engine's modules load when a command uses them: `maas-batch --help` starts fast
    from batch.running.budget import BudgetLimits
    from batch.running.client import ClientConfig
    from batch.running.job import JobConfig
    from batch.running.limits import Limits
    from batch.running.retry import RetryPolicy
    from batch.running.summary import RunSettings

    prices = check_run_settings(checked, options)
    budget = BudgetLimits(max_cost=options.max_cost, max_tokens=options.max_tokens)
    concurrency = None if options.concurrency == "auto" else options.concurrency
    redis_url = redis_url_for(options)
    shared = None
    if redis_url:  # redis and pyrate-limiter load only for a run that shares its limits
        from batch.running.shared import SharedConfig, key_id

        shared = SharedConfig(redis_url, key_id(connected.api_key))
    return JobConfig(
        manifest=checked.manifest.path,
        out=out,
        client=ClientConfig(
            base_url=connected.base_url,
            api_key=connected.api_key,
            timeout=options.timeout,
            # each request in flight, or the links of its answer fetched side by side: an API request never
            # waits for a connection (and its timeout) behind other tasks' downloads
            connections=max((concurrency or options.max_concurrency) * DOWNLOADS_AT_ONCE, 10),
            max_body_bytes=int(options.max_answer_mb * 2**20),
        ),
        run=RunSettings(
            limits=Limits(
                rpm=options.rpm,
                tpm=options.tpm,
                concurrency=concurrency,
                max_concurrency=options.max_concurrency,
                shared=shared,
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
        rerun_changed=options.rerun_changed,
        gallery=options.gallery,
        run_info=run_info,
    )
