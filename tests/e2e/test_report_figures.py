"""The figures a user reads after a night, end to end against the simulator: each says exactly what
happened and what it cost. Maybe-billed requests are told apart by whether their usage is in the ledger
(so in the cost) or nowhere; a re-send of a task whose request changed is no retry; the export's rows
add up to what the ledger says was paid."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.simulator import RunningSimulator, SimConfig, simulator_in_thread
from tests.conftest import FAST, KEY, Outcome, env_for, ledger, results

pytestmark = pytest.mark.timeout(60)


def test_maybe_billed_says_how_many_are_in_the_cost_and_how_many_in_none(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """A stream cut after a running usage is in the ledger (its cost counted, if maybe not in full) and
    maybe billed; an answer reset before any usage came is maybe billed and in no cost. Both were one
    "maybe billed" figure: the user could not tell how much more they may owe."""
    job = write(
        "defaults: {chat: {model: gemini-2.5-flash}}\n"
        "tasks:\n"
        "  - {kind: chat, id: s1, prompt: one, stream: true}\n"
        "  - {kind: chat, id: s2, prompt: two, stream: true}\n"
        "  - {kind: chat, id: w1, prompt: three}\n"
    )
    out = tmp_path / "out"
    config = SimConfig(
        api_key=KEY, answers={"usage_every_chunk"}, faults={"reset": 1.0}, fault_once_per_task=True
    )
    with simulator_in_thread(config) as sim:
        done = cli("run", job, "--out", out, "--no-progress", *FAST, env=env_for(sim))
    assert done.code == 0, done.out + done.err
    logged = [
        json.loads(line)
        for path in (out / "runs").glob("*.jsonl")
        for line in path.read_text().splitlines()
        if '"maybe_billed": true' in line
    ]
    in_ledger = {line["request_id"] for line in ledger(out)}
    counted = sum(line["request_id"] in in_ledger for line in logged)
    assert (len(logged), counted) == (3, 2)  # the two streams' usage so far; the reset whole answer's none

    assert "3 request(s) may have been billed without a saved result" in done.out, done.out
    assert "2 in the cost above (a usage so far: they may have cost more), 1 in no cost" in done.out, done.out
    found = json.loads(cli("status", out, "--json").out)
    assert (found["maybe_billed"], found["maybe_billed_counted"], found["maybe_billed_uncounted"]) == (
        3,
        2,
        1,
    )
    said = cli("status", out).out
    assert "maybe billed without a saved result: 3 (of 6 requests): 2 in the ledger's cost" in said, said
    assert "1 in no cost (no usage came)" in said, said
    reported = json.loads(cli("report", out, "--json").out)
    assert (reported["maybe_billed_counted"], reported["maybe_billed_uncounted"]) == (2, 1), reported
    assert "maybe billed without a saved result: 3: 2 in the ledger's cost" in cli("report", out).out


def test_a_task_sent_again_as_its_request_changed_is_no_retry_in_the_report(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """--rerun-changed sends a finished task again on purpose, its request changed: `report` counted that
    send a retry, so a night without a fault read as one that needed retries."""

    def tasks(a: str) -> Path:
        return write(
            "tasks:\n"
            + "".join(
                f"  - {{kind: chat, id: {name}, model: gemini-2.5-flash, prompt: {prompt}}}\n"
                for name, prompt in (("a", a), ("b", "two"), ("c", "three"))
            )
        )

    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY, faults={"reset": 1.0}, fault_once_per_task=True)) as sim:
        first = cli("run", tasks("one"), "--out", out, "--no-progress", *FAST, env=env_for(sim))
        assert first.code == 0 and "3 retries" in first.out, first.out  # each task reset once, then answered
        again = cli("run", tasks("one again"), "--out", out, "--rerun-changed", env=env_for(sim))
        assert again.code == 0 and "retries" not in again.out, again.out  # the run said none
        assert sim.state.requests_total == 7

    found = json.loads(cli("report", out, "--json").out)
    assert (found["attempts"], found["retries"]) == (7, 3), found  # the three resets' retries alone
    assert found["resent_changed"] == 1, found
    said = cli("report", out).out
    assert "attempts: 7 (3 retries, 1 re-sent as their request changed), 7 requests sent" in said, said


def test_the_exports_billed_cost_is_what_the_task_cost_in_all_and_sums_to_the_reports(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """A task failed after a billed answer (a stream's error after its usage), then retry-failed bought it
    again: its result line's `cost` is only the second answer's, so the CSV's cost column summed to less
    than `report` and the export's ledger said was paid. `billed_cost` is the task's whole bill."""
    job = write(
        "defaults: {chat: {model: gemini-2.5-flash, stream: true}}\n"
        "tasks:\n"
        "  - {kind: chat, id: a, prompt: one}\n"
        "  - {kind: chat, id: b, prompt: two}\n"
    )
    out = tmp_path / "out"
    config = SimConfig(api_key=KEY, faults={"stream_error_mid": 1.0}, fault_once_per_task=True)
    with simulator_in_thread(config) as sim:
        first = cli("run", job, "--out", out, "--max-attempts", "1", "--no-progress", env=env_for(sim))
        assert first.code == 1 and len(ledger(out)) == 2, first.out  # both failed, each answer billed
        assert cli("retry-failed", out, "--no-progress", env=env_for(sim)).code == 0
    paid = sum(line["cost"] for line in ledger(out))
    reported = json.loads(cli("report", out, "--json").out)
    assert reported["cost"] == pytest.approx(paid, abs=1e-6)  # report rounds to 6 digits

    exported = cli("export", out)
    assert exported.code == 0, exported.err
    rows = list(csv.DictReader(io.StringIO(exported.out)))
    assert [row["billed_answers"] for row in rows] == ["2", "2"]
    assert sum(float(row["cost"]) for row in rows) < paid  # each line's: the answer that succeeded
    assert sum(float(row["billed_cost"]) for row in rows) == pytest.approx(paid)
    for row in rows:
        task = [line for line in ledger(out) if line["task_id"] == row["id"]]
        assert int(row["billed_tokens"]) == sum(line["total_tokens"] for line in task)
    lines = [json.loads(line) for line in cli("export", out, "--format", "jsonl").out.splitlines()]
    assert sum(line["billed_cost"] for line in lines) == pytest.approx(paid)
    assert cli("export", out, "--format", "sqlite", "--output", tmp_path / "out.db").code == 0
    with contextlib.closing(sqlite3.connect(tmp_path / "out.db")) as db:
        [(total,)] = db.execute("SELECT sum(billed_cost) FROM results").fetchall()
    assert total == pytest.approx(paid)


def test_a_502_is_one_failure_whether_it_came_in_a_stream_or_as_a_page(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """A failure's type is the server's name for it, or its code: a stream's error event gave "502", a
    gateway's page http_502, a JSON body server_error, and `report` grouped one outage's failures as if
    they were different reasons. Retries run out on a status are grouped by it, the types counted."""
    head = "defaults: {chat: {model: gemini-2.5-flash}}\ntasks:\n  - {kind: chat, id: s, prompt: one, stream: true}\n"
    out = tmp_path / "out"
    once = ["--max-attempts", "1", "--no-progress"]
    with simulator_in_thread(SimConfig(api_key=KEY, faults={"stream_error_mid": 1.0})) as sim:
        assert cli("run", write(head), "--out", out, *once, env=env_for(sim)).code == 1
    both = write(head + "  - {kind: chat, id: p, prompt: two}\n")
    with simulator_in_thread(SimConfig(api_key=KEY, error_rate=1.0, error_statuses=(502,))) as sim:
        assert cli("run", both, "--out", out, *once, env=env_for(sim)).code == 1
    came = {line["id"]: line["error"]["type"] for line in results(out).values()}
    assert came["s"] == "502" and came["p"] in ("http_502", "server_error"), came  # as each came

    found = json.loads(cli("report", out, "--json").out)["failures"]
    assert list(found) == ["http_502"] and found["http_502"]["count"] == 2, found
    assert found["http_502"]["types"] == {"502": 1, came["p"]: 1}, found
    said = cli("report", out).out
    assert "2 http_502 (HTTP 502) [as " in said and "1 502" in said, said


def test_billed_cost_tells_a_task_that_cost_nothing_from_one_whose_cost_is_unknown(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """`cost` is null both for a task nothing was billed for (a refusal) and for an answer of a model
    with no price: none and unknown read alike. billed_cost is 0 for the one and null for the other."""
    job = write(
        "tasks:\n"
        "  - {kind: chat, id: refused, model: gemini-2.5-flash, prompt: something forbidden}\n"
        "  - {kind: chat, id: unpriced, model: my-house-model, prompt: hello}\n"
    )
    out = tmp_path / "out"
    assert cli("run", job, "--out", out, "--allow-unknown", "--no-progress", env=env_for(sim)).code == 1
    lines = {
        line["id"]: line for line in map(json.loads, cli("export", out, "--format", "jsonl").out.splitlines())
    }
    assert lines["refused"]["cost"] is None and lines["unpriced"]["cost"] is None  # alike
    assert (lines["refused"]["billed_answers"], lines["refused"]["billed_cost"]) == (0, 0.0)
    assert (lines["unpriced"]["billed_answers"], lines["unpriced"]["billed_cost"]) == (1, None)
