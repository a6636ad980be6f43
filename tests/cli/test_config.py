"""Settings without a server: Options' defaults and checks, the flags read into Options generically, and
each error's exit code, the same from the library as from the command line."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import typing
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest

import batch
from batch import defaults
from batch.cli.grammar import build_parser
from batch.cli.options import options_from
from batch.config import Options, OptionValues
from batch.errors import BatchError, MissingConfigError, OptionError
from batch.exitcodes import EXIT_CONFIG, EXIT_DATAERR, EXIT_TEMPFAIL, EXIT_USAGE
from batch.output.lock import acquire
from tests.conftest import KEY, Outcome

ROOT = Path(__file__).resolve().parents[2]
FLAGLESS = {"base_url", "endpoint", "heartbeat"}  # from the environment, or derived (heartbeat)


def run_args(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", "m.yaml", "--out", "o", "--no-progress", *extra])


def test_each_default_is_one_constant_shared_by_options_and_the_flags() -> None:
    parsed = vars(run_args())
    assert options_from(run_args()) == Options(heartbeat=defaults.DEFAULT_LOG_EVERY)  # no flag: no change
    chosen = Options()
    assert (chosen.concurrency, chosen.max_concurrency) == (
        defaults.DEFAULT_CONCURRENCY,
        defaults.DEFAULT_MAX_CONCURRENCY,
    )
    assert chosen.grace == defaults.DEFAULT_GRACE and chosen.sync_interval == defaults.DEFAULT_SYNC_INTERVAL
    assert chosen.max_answer_mb * 2**20 == defaults.DEFAULT_MAX_BODY
    assert parsed["log_every"] == defaults.DEFAULT_LOG_EVERY
    helped = build_parser()._subparsers._group_actions[0].choices["run"].format_help()  # type: ignore[union-attr]
    assert f"(default {defaults.DEFAULT_MAX_CONCURRENCY}, at most {defaults.MAX_IN_FLIGHT:,})" in helped
    assert f"(default {defaults.DEFAULT_GRACE:g})" in helped


def test_every_field_but_the_flagless_ones_has_its_flag() -> None:
    parsed = vars(run_args())
    assert {f.name for f in fields(Options)} - FLAGLESS <= set(parsed)


def test_option_values_are_options_fields_with_the_same_types() -> None:
    hints = typing.get_type_hints(Options)
    assert typing.get_type_hints(OptionValues) == {f.name: hints[f.name] for f in fields(Options)}


def test_flags_become_options_generically() -> None:
    chosen = options_from(
        run_args("-c", "auto", "--max-cost", "2.5", "--set", "chat.temperature=0", "--endpoint", "ep")
    )
    assert chosen.concurrency == "auto" and chosen.max_cost == 2.5
    assert chosen.overrides == {"chat": {"temperature": 0}} and chosen.endpoints == {"*": "ep"}
    assert chosen.heartbeat == defaults.DEFAULT_LOG_EVERY  # --no-progress: status lines
    # --quiet: the status lines still go to a --log-file (stderr shows warnings only)
    assert options_from(run_args("--quiet")).heartbeat == defaults.DEFAULT_LOG_EVERY
    assert options_from(run_args("--no-fsync", "--no-gallery", "--grace", "3")) == Options(
        fsync=False, gallery=False, grace=3, heartbeat=defaults.DEFAULT_LOG_EVERY
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("concurrency", 0, "must be at least 1, not 0"),
        ("concurrency", "many", "must be a whole number or 'auto', not 'many'"),
        ("concurrency", 100_000, "must be at most 10,000, not 100,000"),
        ("max_concurrency", 10_001, "must be at most 10,000, not 10,001"),
        ("max_attempts", 1.5, "must be a whole number, not 1.5"),
        ("max_tokens", 0, "must be at least 1, not 0"),
        ("timeout", -1.0, "must be more than 0, not -1"),
        ("rpm", True, "must be a finite number, not True"),
        ("max_cost", float("nan"), "must be a finite number, not nan"),
        ("timeout", float("inf"), "must be a finite number, not inf"),  # failed every request, maybe billed
        ("max_answer_mb", float("inf"), "must be a finite number, not inf"),  # crashed the run
        ("grace", float("-inf"), "must be a finite number, not -inf"),
        ("overrides", "quality=low", "must be a mapping, not 'quality=low'"),  # was dict's ValueError
        ("endpoints", "x", "must be a mapping, not 'x'"),
        ("simulate", "no", "must be True or False, not 'no'"),  # was taken as True
        ("prices", 5, "must be a mapping or a file's path, not 5"),
        ("deadline", [1], "must be a time (datetime, unix time or text), not [1]"),
        ("deadline", float("nan"), "must be a finite unix time, not nan"),  # was anyio's ExceptionGroup
        ("max_duration", -5, "must be more than 0, not -5"),  # ended the run at once
        ("max_duration", float("nan"), "must be a finite number, not nan"),
        ("backoff", -0.5, "must be 0 or more, not -0.5"),
        ("grace", -1, "must be 0 or more, not -1"),
    ],
)
def test_options_refuse_what_no_run_can_use(name: str, value: object, message: str) -> None:
    with pytest.raises(OptionError) as raised:
        Options(**{name: value})  # type: ignore[arg-type]
    assert (raised.value.name, raised.value.problem, raised.value.exit_code) == (name, message, EXIT_USAGE)


def test_an_infinite_flag_is_refused_as_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--timeout", "--max-answer-mb", "--backoff-max"):
        with pytest.raises(SystemExit) as exited:
            options_from(run_args(flag, "inf"))
        assert exited.value.code == EXIT_USAGE
        assert "must be a finite number, not inf" in capsys.readouterr().err


def test_a_refused_flag_is_reported_as_argparse_reports_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        options_from(run_args("--timeout", "-1"))
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert (
        err.startswith("usage: maas-batch run") and "argument --timeout: must be more than 0, not -1" in err
    )


def test_the_settings_do_not_import_the_command_line() -> None:
    code = "import sys, batch.config; print(sorted(m for m in sys.modules if m.startswith('batch.cli')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_help_starts_without_the_http_stack_or_pillow() -> None:
    code = (
        "import sys\nfrom batch.cli import main\ntry:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('aiohttp', 'anyio', 'PIL', 'batch.api') if m in sys.modules), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stderr.strip() == "[]"


# --- each error knows its exit code; the library and the command line agree -------------------------------

MANIFESTS = {
    "bad-manifest": "tasks:\n  - {kind: generate, prompt: a, n: 99}\n",
    "ok": "tasks:\n  - {kind: generate, prompt: a}\n",
    "unpriced": "tasks:\n  - {kind: chat, model: house-model, prompt: a}\n",
}


@pytest.mark.parametrize(
    ("case", "manifest", "env", "extra", "code"),
    [
        ("bad manifest", "bad-manifest", {"MAAS_ENDPOINT": "ep"}, {}, EXIT_DATAERR),
        ("missing endpoint", "ok", {}, {}, EXIT_CONFIG),
        ("missing key", "ok", {"MAAS_API_KEY": "", "MAAS_ENDPOINT": "ep"}, {}, EXIT_CONFIG),
        ("locked dir", "ok", {"MAAS_ENDPOINT": "ep"}, {}, EXIT_TEMPFAIL),
        ("no price for --max-cost", "unpriced", {"MAAS_ENDPOINT": "ep"}, {"max_cost": 1.0}, EXIT_CONFIG),
    ],
)
def test_the_library_raises_the_error_whose_exit_code_the_cli_exits_with(
    case: str,
    manifest: str,
    env: dict[str, str],
    extra: dict[str, float],
    code: int,
    cli: Callable[..., Outcome],
    write: Callable[..., Path],
    tmp_path: Path,
) -> None:
    path = write(MANIFESTS[manifest])
    out = tmp_path / "out"
    out.mkdir()
    lock = acquire(out) if case == "locked dir" else None
    environment = {"MAAS_API_KEY": KEY, "MAAS_BASE_URL": "http://127.0.0.1:9/v1/ai", **env}
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in extra.items()]
    try:
        outcome = cli("run", path, "--out", out, *flags, env={k: v for k, v in environment.items() if v})
        assert outcome.code == code, outcome
        if not environment["MAAS_API_KEY"]:
            os.environ.pop("MAAS_API_KEY", None)
        with pytest.raises(BatchError) as raised:
            batch.run(path, out, **extra)  # type: ignore[arg-type]
    finally:
        if lock is not None:
            os.close(lock)
    assert raised.value.exit_code == code, raised.value
    if case == "missing endpoint":  # located, like any manifest problem, and a ConfigError
        assert isinstance(raised.value, MissingConfigError) and isinstance(raised.value, batch.ConfigError)
        assert isinstance(raised.value, batch.ManifestError) and raised.value.problems[0].field == "endpoint"


def test_a_misspelt_environment_variable_is_named_never_its_value(
    cli: Callable[..., Outcome], write: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAAS_BASEURL for MAAS_BASE_URL did nothing: the run went to the default API, with no word said."""
    from batch import config

    monkeypatch.setattr(config, "_looked", False)
    monkeypatch.setenv("MAAS_BASEURL", "https://gateway.example/v1/ai-secret-part")
    monkeypatch.setenv("maas_api_key", "a-secret-value-1234")
    monkeypatch.setenv("MAAS_URL", "http://canonical-maas.example")  # another tool's: not ours misspelt
    manifest = write("tasks:\n  - {kind: chat, model: gemini-2.5-flash, prompt: hi}\n")
    done = cli("validate", manifest, env={"MAAS_ENDPOINT": "ep"})
    assert done.code == 0, done.err
    assert (
        "MAAS_BASEURL is set, but maas-batch reads no such variable: did you mean MAAS_BASE_URL?" in done.err
    )
    assert (
        "maas_api_key is set, but maas-batch reads no such variable: did you mean MAAS_API_KEY?" in done.err
    )
    assert "MAAS_URL" not in done.err and "secret" not in done.err
    again = cli("validate", manifest, env={"MAAS_ENDPOINT": "ep"})
    assert "MAAS_BASEURL" not in again.err  # said once a process


def test_misspelt_environment_names() -> None:
    from batch.config import misspelt_environment

    typos = [
        "MAAS_ENDPOINTS",
        "MAS_API_KEY",
        "MASS_API_KEY",
        "MAA_API_KEY",
        "MAAS_REDIS_ULR",
        "maas_base_url",
        "MAAS_REDIS",  # one of ours cut short after a whole word (0.83 alike: under the cutoff)
        "MAAS_BASE",
    ]
    others = [
        "MAAS",
        "MAAS_API_KEY_OLD",
        "MAAS_ENDPOINT_CHAT",
        "MAAS_REDIS_PORT",
        "MAAS_PROFILE",
        "OPENAI_API_KEY",
    ]
    others += ["MAKEFLAGS", "MAIL", "MANPATH", "MAPS_API_KEY", "MAPS_BASE_URL", "MARS_API_KEY", "MAX_API_KEY"]
    assert [said.split()[0] for said in misspelt_environment(typos + others)] == sorted(typos)
    # near a name that is set too: another tool's, not a typo (MAAS_API_URL, as Canonical MAAS has it)
    assert misspelt_environment(["MAAS_API_URL", "MAAS_BASE_URL"]) == []


@pytest.mark.parametrize("endpoint", ["a b", "x/y", ".."])
def test_an_endpoint_from_the_environment_is_checked_as_one_in_the_manifest(
    endpoint: str, cli: Callable[..., Outcome], write: Callable[..., Path]
) -> None:
    """The manifest's endpoints are refused with slashes or spaces; MAAS_ENDPOINT was not, and `..` sent
    every task to /v1/google/chat/completions (a 404, exit 78, blamed on the endpoint's existence)."""
    manifest = write("tasks:\n  - {kind: chat, id: q, model: gemini-2.5-flash, prompt: hi}\n")
    done = cli("validate", manifest, env={"MAAS_ENDPOINT": endpoint})
    assert done.code == 78 and "MAAS_ENDPOINT must be an endpoint (deployment) id" in done.err, done.err
    assert cli("validate", manifest, env={"MAAS_ENDPOINT": "ep-1"}).code == 0


# the base URL and the Redis a run refuses at its start: validate, which "checks everything run would",
# and a dry run passed them (exit 0), and `validate --show` printed the URL's password
BAD_BASE_URLS = {
    "a password": "http://someone:hunter2-secret@api.example.test/v1/ai",
    "not http": "ftp://api.example.test/v1/ai",
    "a query": "http://api.example.test/v1/ai?key=hunter2-secret",
    "a port that is none": "http://api.example.test:99999/v1/ai",  # the run: a traceback, exit 1
}


@pytest.mark.parametrize(
    "base_url", ["http://[::1]:8000/v1/ai", "https://api.example.test/v1/ai", "http://127.0.0.1:1/v1/ai"]
)
@pytest.mark.parametrize("redis", ["unix:///run/redis.sock", "rediss://h:6380/0", "redis://h:6379?db=1"])
def test_base_and_redis_urls_a_run_can_use_pass(
    base_url: str, redis: str, cli: Callable[..., Outcome], write: Callable[..., Path]
) -> None:
    path = write("tasks:\n  - {kind: chat, id: a, model: gemini-2.5-flash, prompt: hi}\n")
    env = {"MAAS_BASE_URL": base_url, "MAAS_REDIS_URL": redis, "MAAS_ENDPOINT": "ep"}
    outcome = cli("validate", path, env=env)
    assert outcome.code == 0, outcome.err


@pytest.mark.parametrize("url", BAD_BASE_URLS.values(), ids=BAD_BASE_URLS.keys())
@pytest.mark.parametrize("command", ["validate", "run --dry-run", "run"])
def test_a_base_url_the_run_refuses_is_refused_by_validate_and_a_dry_run_alike(
    url: str, command: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    path = write("tasks:\n  - {kind: chat, id: a, model: gemini-2.5-flash, prompt: hi}\n")
    name, *flags = command.split()
    if name == "run":
        flags += ["--out", str(tmp_path / "out")]
    else:
        flags += ["--show", "1"]
    outcome = cli(name, path, *flags, env={"MAAS_API_KEY": KEY, "MAAS_BASE_URL": url, "MAAS_ENDPOINT": "ep"})
    assert outcome.code == EXIT_CONFIG, outcome
    assert "MAAS_BASE_URL: the " in outcome.err and "Traceback" not in outcome.err
    assert "hunter2" not in outcome.out + outcome.err and "someone" not in outcome.out + outcome.err
    assert not (tmp_path / "out" / "results.jsonl").exists()


@pytest.mark.parametrize("command", ["run --dry-run", "worker --burst", "status"])
def test_a_redis_url_that_is_no_url_is_a_usage_error_as_a_flag_and_a_setting_from_the_environment(
    command: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """`--redis notaurl` was taken, then refused at connection as a Redis that does not answer (78), and a
    dry run said nothing of it (0)."""
    path = write("tasks:\n  - {kind: chat, id: a, model: gemini-2.5-flash, prompt: hi}\n")
    name, *flags = command.split()
    where = [str(path), "--out", str(tmp_path / "out")] if name == "run" else []
    where = [str(tmp_path)] if name == "status" else where
    env = {"MAAS_API_KEY": KEY, "MAAS_ENDPOINT": "ep"}
    flag = cli(name, *where, *flags, "--redis", "http://:hunter2@localhost:6379", env=env)
    assert flag.code == EXIT_USAGE and "a Redis URL must begin with redis://" in flag.err
    assert "hunter2" not in flag.err
    if name == "status":
        return  # the URL of a sharded DIR's queue: a flag only here
    variable = cli(name, *where, *flags, env={**env, "MAAS_REDIS_URL": "notaurl"})
    assert variable.code == EXIT_CONFIG and "MAAS_REDIS_URL: a Redis URL must begin with" in variable.err
    if name == "run":  # --simulate's runs share their limits through it too: checked as `run --simulate` does
        for command in (["validate", str(path), "--simulate"], [name, *where, *flags, "--simulate"]):
            simulated = cli(*command, env={**env, "MAAS_REDIS_URL": "notaurl"})
            assert simulated.code == EXIT_CONFIG, simulated
