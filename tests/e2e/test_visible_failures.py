"""Failures are visible and fast: the first failure of each sort is a WARNING with its reason, the bar and
the heartbeat show the last reason, an address that never answered stops the run at once (exit 78), and
the circuit breaker says when it opens and closes."""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batch.cli.progress import LogLines, ProgressBar
from batch.events import AttemptFailed, Heartbeat, RunStarted, TaskFinished
from batch.running.health import ServiceHealth
from batch.simulator import SimConfig, simulator_in_thread
from tests.conftest import FAST, KEY, Outcome, env_for

Cli = Callable[..., Outcome]
Write = Callable[..., Path]


def three_tasks(write: Write) -> Path:
    return write("tasks:\n" + "".join(f"  - {{kind: generate, prompt: p {i}}}\n" for i in range(3)))


def free_port() -> int:
    with socket.socket() as probe:  # bound, then closed: nothing listens there, connections are refused
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_address_that_refuses_from_the_first_request_stops_the_run_at_once_with_78(
    cli: Cli, write: Write, tmp_path: Path
) -> None:
    base = f"http://127.0.0.1:{free_port()}/v1/ai"
    env = {"MAAS_API_KEY": KEY, "MAAS_BASE_URL": base, "MAAS_ENDPOINT": "ep"}
    outcome = cli("run", three_tasks(write), "--out", tmp_path / "out", "--max-attempts", "1000", env=env)
    assert outcome.code == 78, outcome.out + outcome.err
    assert f"cannot reach the API at {base}: could not connect to 127.0.0.1" in outcome.out
    results = tmp_path / "out" / "results.jsonl"
    assert not results.exists() or results.read_text() == "", "every task is still pending"


def test_a_base_url_with_a_user_or_password_is_refused_without_showing_them(
    cli: Cli, write: Write, tmp_path: Path
) -> None:
    base = f"http://user:secret-pass@127.0.0.1:{free_port()}/v1/ai"
    env = {"MAAS_API_KEY": KEY, "MAAS_BASE_URL": base, "MAAS_ENDPOINT": "ep"}
    outcome = cli("run", three_tasks(write), "--out", tmp_path / "out", env=env)
    assert outcome.code == 78, outcome.out + outcome.err
    assert "the base URL must not hold a user or password" in outcome.err
    assert "secret-pass" not in outcome.out + outcome.err


def test_a_host_that_does_not_resolve_stops_the_run_at_once_naming_the_url(
    cli: Cli, write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "api.maas-typo.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    env = {"MAAS_API_KEY": KEY, "MAAS_BASE_URL": "https://api.maas-typo.test/v1", "MAAS_ENDPOINT": "ep"}
    outcome = cli("run", three_tasks(write), "--out", tmp_path / "out", "--outage-limit", "900", env=env)
    assert outcome.code == 78, outcome.out + outcome.err
    assert (
        "cannot reach the API at https://api.maas-typo.test/v1: cannot resolve the host 'api.maas-typo.test'"
        in outcome.out
    )


def test_the_first_failure_of_each_sort_is_a_warning_with_its_reason(
    cli: Cli, write: Write, tmp_path: Path
) -> None:
    manifest = write("tasks:\n" + "".join(f"  - {{kind: generate, prompt: p {i}}}\n" for i in range(12)))
    with simulator_in_thread(SimConfig(api_key=KEY, error_rate=0.5, seed=7)) as sim:
        outcome = cli(
            "run", manifest, "--out", tmp_path / "out", *FAST, "--max-attempts", "20", env=env_for(sim)
        )
        errors = sim.state.requests_total - 12
    assert outcome.code == 0, outcome.out + outcome.err
    warned = [line for line in (outcome.out + outcome.err).splitlines() if "WARNING first " in line]
    sorts = [line.split("WARNING first ", 1)[1].split(" failure:", 1)[0] for line in warned]
    assert sorts and all(sort.startswith("HTTP 5") for sort in sorts), warned
    assert len(sorts) == len(set(sorts)), "one warning per sort of failure"
    assert errors > len(sorts), "later failures of a sort already seen are not warned of again"


def events_of_a_failing_run() -> list[Any]:
    return [
        RunStarted(total=2, finished_before=0, pending=2),
        AttemptFailed("t1", 1, "HTTP 503: overloaded", 0.5, "HTTP 503"),
        AttemptFailed("t2", 1, "HTTP 503: overloaded again", 0.5, "HTTP 503"),
        AttemptFailed("t1", 2, "could not connect to api:443: refused", 1.0, "refused"),
        Heartbeat(
            done=0,
            failed=0,
            left=2,
            in_flight=2,
            retries=3,
            per_second=0.0,
            eta_seconds=None,
            tokens=0,
            cost=0.0,
            unpriced=0,
            last_error="could not connect to api:443: refused",
        ),
    ]


def test_log_lines_warn_once_per_sort_and_the_heartbeat_names_the_last_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lines = LogLines()
    with caplog.at_level(logging.DEBUG, logger="batch.run"):
        for event in events_of_a_failing_run():
            lines(event)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "first HTTP 503 failure: HTTP 503: overloaded (task t1; retrying in 0.5 s; -v shows every retry)",
        "first refused failure: could not connect to api:443: refused (task t1; retrying in 1.0 s; -v shows "
        "every retry)",
    ]
    status = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done ")]
    assert status and status[-1].endswith("; last error: could not connect to api:443: refused")


def test_the_progress_bar_shows_the_last_error() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream)
    for event in events_of_a_failing_run()[:4]:
        bar(event)
    bar(TaskFinished({"id": "t2", "status": "succeeded", "kind": "generate"}))
    bar.close()
    assert "last=could not connect to api:443: refused" in stream.getvalue()


def test_the_circuit_breaker_says_when_it_opens_and_closes(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    health = ServiceHealth(2, 600, lambda reason: None, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="batch"):
        health.failed("HTTP 502")
        health.failed("HTTP 503: down")
        now[0] += 42
        health.succeeded()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert said[0].startswith("the service is failing (2 failed attempts in a row; last: HTTP 503: down)")
    assert said[1] == "the service answers again, after 42 s of failures"


def test_the_bars_figures_are_formatted_at_most_ten_times_a_second_and_are_whole_at_the_end() -> None:
    """The bar's postfix (failures, retries, tokens, cost) costs more to format than the rest of a task's
    bar: it follows tqdm's own redraws, and its last figures are drawn when the bar closes."""
    from batch.events import Billed

    stream = io.StringIO()
    bar = ProgressBar(stream)
    bar(RunStarted(1001, 0, 1001))
    for i in range(1000):
        bar(Billed(f"t{i}", "m", 10, 26, 36, None))
        bar(TaskFinished({"id": f"t{i}", "status": "succeeded", "kind": "chat"}))
    bar(TaskFinished({"id": "x", "status": "failed", "kind": "chat", "error": {"message": "no"}}))
    bar.close()
    last = stream.getvalue().rstrip().rsplit("\r", 1)[-1]
    assert "1001/1001" in last and "failed=1" in last and "tokens=36,000" in last, last
