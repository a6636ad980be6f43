"""A service that fails most requests but answers some (a partial 5xx outage), end to end: the night
finishes, slowly, no task failed for good by 503s it happened to meet, nothing bought twice; a task still
failing at its --task-deadline is left pending, not failed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from batch.simulator import SimConfig, simulator_in_thread
from tests.conftest import FAST, KEY, Outcome, env_for, ledger, results


def chat_tasks(count: int) -> str:
    return "".join(
        f"  - {{kind: chat, id: c{i}, model: gemini-2.5-flash, prompt: hi {i}}}\n" for i in range(count)
    )


@pytest.mark.timeout(90)
def test_a_service_that_answers_one_request_in_five_finishes_the_night_and_fails_no_task(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """80% of requests answered 503. Each 503 spent an attempt while the circuit was closed, and the
    circuit opened and closed again and again (five 503s in a row are common at 80%), its probes one at a
    time up to 30 s apart: tasks failed for good after six 503s, and the run crawled (24 of 40 done after
    300 s). A 503 that bought nothing, while the service fails more than it answers, now spends no
    attempt, and an answer keeps the circuit closed: every task is done, each bought once."""
    manifest = write("tasks:\n" + chat_tasks(16))
    config = SimConfig(api_key=KEY, error_rate=0.8, error_statuses=(503,), seed=7)
    flags = ("--backoff", "0.01", "--backoff-max", "0.05", "--outage-limit", "60", "-c", "8")
    out = tmp_path / "out"
    with simulator_in_thread(config) as sim:
        outcome = cli("run", manifest, "--out", out, *flags, "--max-duration", "40s", env=env_for(sim))
        statuses = sim.state.status_counts()
        billed = [record.task_id for record in sim.state.records if record.billed_tokens]
    assert outcome.code == 0, outcome.out + outcome.err
    done = results(out)
    assert len(done) == 16 and all(r["status"] == "succeeded" for r in done.values())
    assert max(r["attempts"] for r in done.values()) > 6  # more 503s than --max-attempts: not counted
    assert statuses[503] > statuses[200] == 16
    assert sorted(billed) == sorted(done) and len(ledger(out)) == 16


@pytest.mark.timeout(60)
def test_a_task_still_answered_503_at_its_task_deadline_is_left_pending_not_failed(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """A task whose retries end at its --task-deadline on a 503 that bought nothing, the service failing
    more than it answers, was failed for good (and a night's line does not send a failed task again):
    the 503s said nothing of the task. It is left pending (exit 69, resumable), and the next run buys it
    once."""
    manifest = write("tasks:\n" + chat_tasks(3))
    out = tmp_path / "out"
    flags = ("--backoff", "0.05", "--backoff-max", "0.1", "--task-deadline", "0.5", "--outage-limit", "60")
    with simulator_in_thread(SimConfig(api_key=KEY, error_rate=1.0, error_statuses=(503,))) as sim:
        outcome = cli("run", manifest, "--out", out, *flags, env=env_for(sim))
        answered = sim.state.status_counts()
    assert outcome.code == 69, outcome.out + outcome.err
    assert "3 task(s) left pending, the service failing (3 still answered HTTP 5xx" in outcome.out
    assert "3 not run" in outcome.out and results(out) == {} and answered == {503: answered[503]}
    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        again = cli("run", manifest, "--out", out, *FAST, env=env_for(sim))
        requests = sim.state.requests_total
    assert again.code == 0, again.out + again.err
    assert requests == 3 and all(r["status"] == "succeeded" for r in results(out).values())


@pytest.mark.timeout(60)
def test_a_run_that_begins_in_a_partial_outage_finishes_as_fast_as_one_that_met_it_later(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """Three requests in four answered 503, and the run's first 16 all failed (seed 375: one run in a
    hundred at that rate; its first five fail in one run in four). The circuit opened on the first five,
    its probes one at a time failed as often, and their waits doubled to 30 s: the first answer came
    after 92 s, in a run that takes 3 s once the service has answered. The probes now go 0.25 s apart
    while the failures in a row are too few to tell a dead service from a limping one."""
    manifest = write("tasks:\n" + chat_tasks(12))
    config = SimConfig(api_key=KEY, error_rate=0.75, error_statuses=(503,), seed=375)
    flags = ("--backoff", "0.01", "--backoff-max", "0.05", "-c", "4", "--max-duration", "30s")
    out = tmp_path / "out"
    with simulator_in_thread(config) as sim:
        outcome = cli("run", manifest, "--out", out, *flags, env=env_for(sim))
        records = sim.state.records
    assert outcome.code == 0, outcome.out + outcome.err
    assert "the service is failing (5 failed attempts in a row" in outcome.err  # it began as before
    first = min(record.time for record in records)
    answered = min(record.time for record in records if record.status == 200)
    failed_first = sum(record.status == 503 for record in records if record.time < answered)
    assert failed_first >= 16 and answered - first < 10, (failed_first, answered - first)
    assert all(r["status"] == "succeeded" for r in results(out).values()) and len(ledger(out)) == 12


@pytest.mark.timeout(60)
def test_a_5xx_that_may_have_been_billed_spends_an_attempt_in_a_partial_outage(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """Three requests in four answered 503, which bought nothing and spend no attempt while the service
    fails more than it answers; a streamed task's other answers are all a 502 error event after half its
    chunks and its usage (billed). That 502 reaches the breaker as maybe billed and spends an attempt: the
    task fails after --max-attempts attempts, bought three times at most. Taken for one that bought
    nothing (attempt.py's `billed` forced off), it spent none while the service failed more than it
    answered: the task was bought again and again, 14 to 25 times in 5 s, and left pending at its
    --task-deadline (or failed, bought more often than its attempts).

    The streamed task comes first, among 30 others that keep answering one request in four while it
    runs: left last, its requests alone would all fail, open the circuit, and spend no attempt as the
    outage's probes (a failure that may be billed does not during an outage). Seed 32 fails 5 of the
    first 8 requests (the -c 8 sent at once) and more than it answers from there on, with no 8 in a row
    (the circuit stays closed): a 503 spends an attempt only among those first 8, one a task."""
    manifest = write(
        "tasks:\n"
        + "  - {kind: chat, id: streamed, model: gemini-2.5-flash, prompt: tell me, stream: true}\n"
        + chat_tasks(30)
    )
    config = SimConfig(
        api_key=KEY, error_rate=0.75, error_statuses=(503,), faults={"stream_error_mid": 1.0}, seed=32
    )
    flags = ("--backoff", "0.01", "--backoff-max", "0.05", "-c", "8", "--max-attempts", "3")
    out = tmp_path / "out"
    with simulator_in_thread(config) as sim:
        outcome = cli("run", manifest, "--out", out, *flags, "--task-deadline", "5", env=env_for(sim))
        billed = [record.task_id for record in sim.state.records if record.billed_tokens]
        refused = sum(r.status == 503 for r in sim.state.records if r.task_id == "streamed")
    assert outcome.code == 1, outcome.out + outcome.err
    done = results(out)
    assert done["streamed"]["status"] == "failed" and 2 <= billed.count("streamed") <= 3, billed
    assert refused > 0  # its 503s came between them
    others = [task for task in done if task != "streamed"]
    assert len(others) == 30 and all(done[task]["status"] == "succeeded" for task in others)
    assert sorted(task for task in billed if task != "streamed") == sorted(others)
