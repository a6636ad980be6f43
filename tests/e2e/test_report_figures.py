"""The figures a user reads after a night, end to end against the simulator: each says exactly what
happened and what it cost. Maybe-billed requests are told apart by whether their usage is in the ledger
(so in the cost) or nowhere."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.simulator import SimConfig, simulator_in_thread
from tests.conftest import FAST, KEY, Outcome, env_for, ledger

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
