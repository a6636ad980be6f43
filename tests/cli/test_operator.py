"""The operator's night: prices and estimates, budgets, deadlines, the unattended log, status, report,
export and retry-failed, end to end through the CLI against the simulator."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from batch.kind import TokenCounts
from batch.output.lock import acquire
from batch.running.prices import PriceTable, parse_prices
from batch.simulator import RunningSimulator, SimConfig, simulator_in_thread
from batch.values import parse_deadline, parse_duration
from tests.conftest import FAST, KEY, Outcome, env_for, ledger, results

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# gpt-image-1, 1024x1024, low: 272 output tokens; "p 00" is one token of text. At the built-in prices:
ONE_TASK_TOKENS = 1 + 272
ONE_TASK_COST = (1 * 5.00 + 272 * 40.00) / 1_000_000


def sixteen_tasks(write: Callable[..., Path]) -> Path:
    return write(
        "defaults: {model: gpt-image-1, size: 1024x1024, quality: low}\n"
        "tasks:\n" + "".join(f"  - {{kind: generate, id: t{i:02d}, prompt: p {i:02d}}}\n" for i in range(16))
    )


# --- prices and estimates ---------------------------------------------------------------------------


def test_price_table_arithmetic_and_mistakes() -> None:
    table = PriceTable()
    assert table.origins["gpt-image-1"].startswith("built-in list price, read")
    tokens = TokenCounts(input=1000, output=2000, total=3000, image_input=400)
    # 600 text tokens at $5, 400 image tokens at $10, 2000 output tokens at $40 (per million)
    assert table.cost("gpt-image-1", tokens) == pytest.approx((600 * 5 + 400 * 10 + 2000 * 40) / 1e6)
    assert table.cost("no-such-model", tokens) is None
    found, mistakes = parse_prices(
        {
            "mine": {"text_input": 1, "output": 2},  # image input defaults to the text price
            "bad": {"text_input": -1, "output": 2},
            "typo": {"text_input": 1, "ouptut": 2},
            "flag": {"text_input": True, "output": 2},
            "odd": 3,
            "nan": {"text_input": float("nan"), "output": 2},  # YAML's .nan: every cost, every budget NaN
            "inf": {"text_input": 1, "output": float("inf")},
        },
        "prices",
    )
    assert list(found) == ["mine"] and found["mine"].image_input == 1
    assert any(m.startswith("prices.nan.text_input: must be a finite number") for m in mistakes)
    assert any(m.startswith("prices.inf.output: must be a finite number") for m in mistakes)
    assert any(m.startswith("prices.bad.text_input:") for m in mistakes)
    assert any("prices.typo: unknown keys ['ouptut']" in m for m in mistakes)
    assert any(m.startswith("prices.flag.text_input:") for m in mistakes)
    assert any(m.startswith("prices.odd: must be a mapping") for m in mistakes)
    overridden = table.with_overrides(found, "the manifest's prices:")
    assert overridden.origins["mine"] == "the manifest's prices:" and "gpt-image-1" in overridden.prices


def test_bad_prices_in_the_manifest_are_manifest_errors_and_nothing_is_sent(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("""
        prices:
          gpt-image-1: {text_input: 5, image_input: 10, output: "forty"}
          gpt-image-1-mini: {text_input: .nan, output: .inf}
        tasks:
          - {kind: generate, prompt: a lake}
    """)
    outcome = cli("run", manifest, "--out", tmp_path / "out", env=env_for(sim))
    assert outcome.code == 65
    assert "prices.gpt-image-1.output" in outcome.err
    assert "prices.gpt-image-1-mini.text_input: must be a finite number" in outcome.err
    assert sim.state.requests_total == 0


def test_dry_run_estimates_with_the_prices_in_force_and_sends_nothing(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("""
        prices:
          gemini-2.5-flash: {text_input: 1, image_input: 1, output: 10}
        tasks:
          - {kind: generate, id: big, model: gpt-image-1, size: 1536x1024, quality: high, n: 2, prompt: abcdefgh}
          - {kind: chat, id: hello, model: gemini-2.5-flash, prompt: hello there, max_tokens: 100}
          - {kind: generate, id: other, model: house-model, prompt: abcd}
    """)
    prices = write("gpt-image-1-mini: {text_input: 1, output: 1}\n", "prices.yaml")
    out = tmp_path / "out"
    outcome = cli("run", manifest, "--out", out, "--dry-run", "--prices", prices, env=env_for(sim))
    assert outcome.code == 0, outcome.err
    assert sim.state.requests_total == 0 and not out.exists()
    # two 1536x1024 high images: 2 x 6240 output tokens, and 2 tokens of prompt
    big = 2 + 2 * 6240
    line = next(
        li
        for li in outcome.out.splitlines()
        if li.lstrip().startswith("generate  gpt-image-1 ") and "tokens" in li
    )
    assert f"{big:,} tokens" in line
    assert f"${(2 * 5 + 2 * 6240 * 40) / 1e6:.4f}" in line
    assert re.search(r"gemini-2.5-flash .*\$1 / \$1 / \$10 +\(the manifest's prices:\)", outcome.out)
    assert re.search(
        r"gpt-image-1 .*\$5 / \$10 / \$40 +\(built-in list price, read \d{4}-\d\d\)", outcome.out
    )
    assert "house-model" in outcome.out and "no price" in outcome.out
    assert "dry run: nothing was sent" in outcome.out
    # validate prints the same estimate
    validated = cli("validate", manifest, "--prices", prices, env=env_for(sim))
    assert validated.code == 0 and f"{big:,} tokens" in validated.out


def test_dry_run_after_a_partial_run_estimates_only_what_is_left(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = sixteen_tasks(write)
    out = tmp_path / "out"
    assert (
        cli("run", manifest, "--out", out, "--max-tokens", str(5 * ONE_TASK_TOKENS), env=env_for(sim)).code
        == 3
    )
    sent = sim.state.requests_total
    outcome = cli("run", manifest, "--out", out, "--dry-run", env=env_for(sim))
    assert outcome.code == 0
    assert f"left to do in {out}: 11 of 16 tasks" in outcome.out
    assert f"{11 * ONE_TASK_TOKENS:,} tokens" in outcome.out
    assert sim.state.requests_total == sent


# --- what was spent ---------------------------------------------------------------------------------


def test_every_billed_answer_is_priced_in_the_ledger_results_summary_and_report(
    cli: Callable[..., Outcome], sim: RunningSimulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    outcome = cli("run", EXAMPLES / "quickstart.yaml", "--out", out, env=env_for(sim))
    assert outcome.code == 0, outcome.err
    table = PriceTable()
    total = 0.0
    lines = ledger(out)
    for line in lines:
        tokens = TokenCounts(
            line["input_tokens"], line["output_tokens"], line["total_tokens"], line["image_input_tokens"]
        )
        assert line["cost"] == pytest.approx(table.cost(line["model"], tokens))
        total += line["cost"]
    edits = [line for line in lines if line["kind"] == "edit"]
    assert edits and all(line["image_input_tokens"] > 0 for line in edits)
    done = results(out)
    for task_id, record in done.items():
        assert record["cost"] == pytest.approx(sum(li["cost"] for li in lines if li["task_id"] == task_id))
    assert f"${total:.4f}" in outcome.out
    found = json.loads(cli("report", out, "--json").out)
    assert found["cost"] == pytest.approx(total, abs=1e-5)
    assert found["tokens"] == sim.state.billed_total_tokens
    # --prices reprices every answer: output at $80 instead of $40 for gpt-image-1
    dearer = tmp_path / "dearer.json"
    dearer.write_text(json.dumps({"gpt-image-1": {"text_input": 5, "image_input": 10, "output": 80}}))
    repriced = json.loads(cli("report", out, "--json", "--prices", dearer).out)
    image_output = sum(li["output_tokens"] for li in lines if li["model"] == "gpt-image-1")
    assert repriced["cost"] == pytest.approx(total + image_output * 40 / 1e6, abs=1e-5)
    # a --prices file's mistakes name the file once, and a report does not say it sent nothing: it never sends
    typo = tmp_path / "typo.yaml"
    typo.write_text("gpt-image-1: {text_input: 5, ouptut: 80}\n")
    for words in (("report", out), ("run", EXAMPLES / "quickstart.yaml", "--out", tmp_path / "again")):
        refused = cli(*words, "--prices", typo, env=env_for(sim))
        assert refused.code == 65
        assert f"{typo}:1: gpt-image-1: unknown keys ['ouptut']" in refused.err, refused.err
        assert refused.err.count(str(typo)) == 1
        assert ("nothing was sent" in refused.err) == (words[0] == "run")
    missing = cli("report", out, "--prices", tmp_path / "none.yaml")
    assert (
        missing.code == 65
        and missing.err.strip() == f"{tmp_path / 'none.yaml'}: cannot be read: No such file or directory"
    )


def test_report_prices_anew_as_the_run_did_the_manifests_prices_under_the_file(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """`report --prices FILE` put FILE over the built-in list alone: a model the manifest's prices: priced
    (gpt-image-1 at $4 output) was repriced at its $40 list price, ten times what the run recorded."""
    manifest = write("""
        prices:
          gpt-image-1: {text_input: 1, image_input: 1, output: 4}
        tasks:
          - {kind: generate, id: g, model: gpt-image-1, prompt: a fox}
          - {kind: chat, id: c, model: gemini-2.5-flash, prompt: hi}
    """)
    chat_only = write("gemini-2.5-flash: {text_input: 0.3, output: 2.5}\n", "chat-prices.yaml")
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, "--prices", chat_only, env=env_for(sim)).code == 0
    recorded = sum(line["cost"] for line in ledger(out))
    again = json.loads(cli("report", out, "--json", "--prices", chat_only).out)
    assert again["cost"] == pytest.approx(recorded, abs=1e-6)
    assert json.loads(cli("report", out, "--json").out)["cost"] == pytest.approx(recorded, abs=1e-6)


# --- budgets ----------------------------------------------------------------------------------------


def test_max_cost_stops_before_passing_the_budget_exit_3_and_a_higher_budget_carries_on(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = sixteen_tasks(write)
    out = tmp_path / "out"
    budget = 4.5 * ONE_TASK_COST  # room for four tasks, not five
    first = cli("run", manifest, "--out", out, "--max-cost", f"{budget:.6f}", "-c", "8", env=env_for(sim))
    assert first.code == 3, first.err
    assert "budget reached" in first.out and "higher --max-cost" in first.out
    assert len(results(out)) == 4 and sim.state.requests_total == 4
    assert sum(line["cost"] for line in ledger(out)) <= budget
    # the budget is DIR's: the same one again sends nothing more
    again = cli("run", manifest, "--out", out, "--max-cost", f"{budget:.6f}", env=env_for(sim))
    assert again.code == 3 and sim.state.requests_total == 4
    # a higher one carries on from where it stopped, without sending a finished task again
    more = cli("run", manifest, "--out", out, "--max-cost", "1", env=env_for(sim))
    assert more.code == 0, more.err
    assert "12 succeeded, 0 failed, 4 already done" in more.out
    assert sim.state.requests_total == 16
    assert len(results(out)) == 16


def test_max_tokens_counts_the_ledger_of_every_run(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = sixteen_tasks(write)
    out = tmp_path / "out"
    outcome = cli(
        "run", manifest, "--out", out, "--max-tokens", str(3 * ONE_TASK_TOKENS + 10), env=env_for(sim)
    )
    assert outcome.code == 3
    assert sum(line["total_tokens"] for line in ledger(out)) == 3 * ONE_TASK_TOKENS
    status = json.loads(cli("status", out, "--json").out)
    assert (status["succeeded"], status["pending"]) == (3, 13)
    assert status["last_run"]["exit_code"] == 3 and "token budget" in status["last_run"]["stop_reason"]


def test_max_cost_refuses_a_model_without_a_price_before_sending(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("""
        tasks:
          - {kind: generate, model: gpt-image-1, prompt: a lake}
          - {kind: chat, model: house-gemini, prompt: hello}
    """)
    outcome = cli("run", manifest, "--out", tmp_path / "out", "--max-cost", "5", env=env_for(sim))
    assert outcome.code == 78
    assert "house-gemini" in outcome.err and "prices:" in outcome.err
    assert sim.state.requests_total == 0
    nameless = write("tasks:\n  - {kind: generate, prompt: a lake}\n", "nameless.yaml")
    outcome = cli("run", nameless, "--out", tmp_path / "out", "--max-cost", "5", env=env_for(sim))
    assert outcome.code == 78 and "name no model" in outcome.err
    # with a price for it, the run goes
    priced = write(
        manifest.read_text() + "prices:\n  house-gemini: {text_input: 1, output: 2}\n", "priced.yaml"
    )
    assert cli("run", priced, "--out", tmp_path / "out", "--max-cost", "5", env=env_for(sim)).code == 0


# --- time -------------------------------------------------------------------------------------------


def test_deadline_and_duration_parsing() -> None:
    now = datetime(2026, 11, 22, 23, 0)
    assert datetime.fromtimestamp(parse_deadline("07:00", now)) == datetime(2026, 11, 23, 7, 0)
    assert datetime.fromtimestamp(parse_deadline("23:30", now)) == datetime(2026, 11, 22, 23, 30)
    assert datetime.fromtimestamp(parse_deadline("2026-11-24T06:15", now)) == datetime(2026, 11, 24, 6, 15)
    for bad in ("25:00", "tomorrow", "2026-11-20T07:00"):
        with pytest.raises(ValueError, match=r"time|past"):
            parse_deadline(bad, now)
    assert [parse_duration(t) for t in ("90s", "45m", "6h", "1d", "1.5h")] == [90, 2700, 21600, 86400, 5400]


def test_bad_deadline_is_a_usage_error(cli: Callable[..., Outcome], tmp_path: Path) -> None:
    outcome = cli(
        "run", EXAMPLES / "quickstart.yaml", "--out", tmp_path / "o", "--simulate", "--deadline", "7am"
    )
    assert outcome.code == 64 and "--deadline" in outcome.err


def test_max_duration_stops_dispatching_in_time_exit_4_then_resumes(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write(
        "tasks:\n" + "".join(f"  - {{kind: generate, id: t{i:03d}, prompt: p {i}}}\n" for i in range(200))
    )
    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY, latency=0.1)) as sim:
        started = time.monotonic()
        # stopped after 1.5 s: some 30 of the 200 tasks done, which 2 at a time would take 10 s
        first = cli("run", manifest, "--out", out, "-c", "2", "--max-duration", "1.5s", env=env_for(sim))
        took = time.monotonic() - started
        assert first.code == 4, first.err
        assert "deadline" in first.out
        done = len(results(out))
        assert 0 < done < 200
        # 200 tasks at 2 x 10/s would need 10 s; 12 s past the limit, as before, for a slow machine
        assert took < 1.5 + 12, took
        assert all(r["status"] == "succeeded" for r in results(out).values())  # nothing cut half-way
        second = cli("run", manifest, "--out", out, "-c", "16", env=env_for(sim))
        assert second.code == 0, second.err
        assert f"{200 - done} succeeded, 0 failed, {done} already done" in second.out


def test_unattended_log_lines_heartbeat_and_log_file(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write(
        "tasks:\n" + "".join(f"  - {{kind: generate, id: t{i:02d}, prompt: p {i}}}\n" for i in range(20))
    )
    log_file = tmp_path / "night.log"
    with simulator_in_thread(SimConfig(api_key=KEY, latency=0.05)) as sim:
        outcome = cli(
            "run",
            manifest,
            "--out",
            tmp_path / "out",
            "-c",
            "2",
            "--no-progress",
            "--log-every",
            "0.1",
            "--log-file",
            log_file,
            env=env_for(sim),
        )
    assert outcome.code == 0, outcome.err
    assert "\r" not in outcome.err  # no progress bar
    text = log_file.read_text()
    beats = [li for li in text.splitlines() if " INFO done " in li]
    assert beats, text
    assert re.search(
        r"done \d+/20, failed 0, in flight \d, retries 0, [\d.]+/s, ETA \S+, [\d,]+ tokens, \$", text
    )
    assert "20 succeeded, 0 failed" in text  # the summary, for the morning's read
    assert KEY not in text
    assert all(li in outcome.err for li in beats)  # the same lines on stderr


# --- status, report, export, retry-failed -----------------------------------------------------------


def test_status_says_whether_a_run_holds_the_lock(
    cli: Callable[..., Outcome], sim: RunningSimulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert cli("run", EXAMPLES / "quickstart.yaml", "--out", out, env=env_for(sim)).code == 0
    idle = cli("status", out)
    assert idle.code == 0
    assert "7 succeeded, 0 failed, 0 pending (of 7)" in idle.out and "no run is in progress" in idle.out
    lock = acquire(out)
    try:
        held = json.loads(cli("status", out, "--json").out)
        assert held["running"] is True and held["pid"] == os.getpid()
        assert f"pid {os.getpid()}" in cli("status", out).out
        # the run holding it has begun its log, not ended it: going on, not "killed?"
        start = {"event": "start", "at": "2099-01-01T00:00:00.000+00:00", "pid": os.getpid(), "tasks": 7}
        (out / "runs" / "99991231T000000000000Z-zzz.jsonl").write_text(json.dumps(start) + "\n")
        going = cli("status", out).out
        assert "this run: started 2099-01-01T00:00:00.000+00:00, going on" in going
        assert "killed" not in going
    finally:
        os.close(lock)
    assert "did not end cleanly (killed?)" in cli("status", out).out  # no one holds it: it was killed
    assert json.loads(cli("status", out, "--json").out)["running"] is False
    assert cli("status", tmp_path / "nowhere").code == 64


def test_report_groups_failures_counts_retries_and_names_the_slowest(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("""
        tasks:
          - {kind: generate, id: ok-1, prompt: a calm lake}
          - {kind: generate, id: ok-2, prompt: a quiet wood}
          - {kind: generate, id: no-1, prompt: something forbidden}
          - {kind: generate, id: no-2, prompt: another forbidden thing}
          - {kind: chat, id: talk, model: gemini-2.5-flash, prompt: hello}
    """)
    out = tmp_path / "out"
    config = SimConfig(api_key=KEY, faults={"not_json": 0.9}, seed=7, fault_once_per_task=True)
    with simulator_in_thread(config) as sim:
        assert cli("run", manifest, "--out", out, *FAST, env=env_for(sim)).code == 1
    found = json.loads(cli("report", out, "--json").out)
    assert (found["tasks"], found["succeeded"], found["failed"]) == (5, 3, 2)
    assert found["retries"] == found["attempts"] - 5 and found["retries"] > 0
    assert set(found["by_kind"]) == {"generate", "chat"}
    assert set(found["by_model"]) == {"-", "gemini-2.5-flash"}  # "-": the generate tasks name no model
    assert found["by_kind"]["generate"]["answers"] == 2
    assert found["by_kind"]["chat"]["tokens"] + found["by_kind"]["generate"]["tokens"] == found["tokens"]
    [(error_type, group)] = found["failures"].items()
    assert error_type == "moderation_blocked" and group["count"] == 2 and group["status"] == 400
    assert group["example_task"] in ("no-1", "no-2") and "safety" in group["example"]
    assert sorted(s["id"] for s in found["slowest"]) == ["no-1", "no-2", "ok-1", "ok-2", "talk"]
    seconds = [s["seconds"] for s in found["slowest"]]
    assert seconds == sorted(seconds, reverse=True)
    assert found["runs"] == 1
    text = cli("report", out).out
    assert "2 moderation_blocked (HTTP 400): e.g. no-" in text and "slowest tasks:" in text


def test_export_joins_answers_back_to_the_input_rows(
    cli: Callable[..., Outcome], sim: RunningSimulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert cli("run", EXAMPLES / "labeling.yaml", "--out", out, env=env_for(sim)).code == 0
    table = list(csv.DictReader(io.StringIO(cli("export", out, "--format", "csv").out)))
    source = {row["sku"]: row for row in csv.DictReader(io.StringIO((EXAMPLES / "products.csv").read_text()))}
    assert sorted(row["id"] for row in table) == sorted(source)
    for row in table:
        assert row["status"] == "succeeded" and row["kind"] == "chat" and row["text"]
        assert int(row["total_tokens"]) > 0 and float(row["cost"]) > 0
        assert (row["meta.price"], row["meta.warehouse"]) == (
            source[row["id"]]["price"],
            source[row["id"]]["warehouse"],
        )
    written = tmp_path / "rows.jsonl"
    outcome = cli("export", out, "--format", "jsonl", "--output", written)
    assert outcome.code == 0 and "3 rows written" in outcome.err
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert {r["id"]: r["meta"]["warehouse"] for r in rows} == {k: v["warehouse"] for k, v in source.items()}
    assert all(r["text"] == results(out)[r["id"]]["text"] for r in rows)


def test_export_lists_files_of_images_and_errors_of_failures(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("""
        tasks:
          - {kind: generate, id: two, prompt: a lake, n: 2, meta: {batch: 7}}
          - {kind: generate, id: refused, prompt: something forbidden}
    """)
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 1
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(cli("export", out).out))}
    assert rows["two"]["files"] == "images/two~1.png;images/two~2.png" and rows["two"]["meta.batch"] == "7"
    assert rows["refused"]["status"] == "failed" and rows["refused"]["error_type"] == "moderation_blocked"
    assert rows["refused"]["meta.batch"] == ""


def test_retry_failed_sends_only_the_failed_tasks_and_keeps_their_old_lines(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write(
        "tasks:\n" + "".join(f"  - {{kind: generate, id: t{i:02d}, prompt: p {i}}}\n" for i in range(12))
    )
    out = tmp_path / "out"
    # a server that fails a third of the answers for good (500s, with no retry left)
    flaky = SimConfig(api_key=KEY, error_rate=0.35, retry_after=0, seed=11)
    with simulator_in_thread(flaky) as sim:
        first = cli("run", manifest, "--out", out, *FAST, "--max-attempts", "1", env=env_for(sim))
    assert first.code == 1
    failed = sorted(k for k, r in results(out).items() if r["status"] == "failed")
    assert failed and len(failed) < 12
    assert "maas-batch retry-failed" in first.out
    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        # a plain run does not give failed tasks another go
        assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 1
        assert sim.state.requests_total == 0
        # --out after DIR ran afresh in another folder, sent none of DIR's failures and exited 0
        elsewhere = tmp_path / "elsewhere"
        for moved in (
            ["--out", str(elsewhere)],
            [f"--out={elsewhere}"],
            ["-o", str(elsewhere)],
            ["-vo", str(elsewhere)],
        ):
            refused = cli("retry-failed", out, *moved, env=env_for(sim))
            assert refused.code == 64 and "is not taken after DIR" in refused.err
        assert not elsewhere.exists() and sim.state.requests_total == 0
        again = cli("retry-failed", out, env=env_for(sim))
        assert again.code == 0, again.err
        assert sim.state.requests_total == len(failed)
        assert f"{len(failed)} failed task(s) were given another go" in again.out
    done = results(out)
    assert len(done) == 12 and all(r["status"] == "succeeded" for r in done.values())
    retried = [json.loads(li) for li in (out / "results.retried.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in retried) == failed and all(r["status"] == "failed" for r in retried)


def test_run_retry_failed_flag_and_retry_failed_without_a_recorded_run(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("""
        tasks:
          - {kind: generate, id: fine, prompt: a calm lake}
          - {kind: generate, id: refused, prompt: something forbidden}
    """)
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 1
    assert cli("run", manifest, "--out", out, "--retry-failed", env=env_for(sim)).code == 1
    assert sim.state.requests_total == 3  # fine once, refused twice
    assert len((out / "results.retried.jsonl").read_text().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    outcome = cli("retry-failed", empty)
    assert outcome.code == 64 and "no run of maas-batch is recorded" in outcome.err


def test_retry_failed_sends_the_failed_tasks_only_and_leaves_new_ones_pending(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("""
        tasks:
          - {kind: generate, id: fine, prompt: a calm lake}
          - {kind: generate, id: refused, prompt: something forbidden}
    """)
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 1
    # tasks added since: pending, and not what retry-failed is asked for
    manifest.write_text(manifest.read_text() + "  - {kind: generate, id: new-1, prompt: a heron}\n")
    manifest.write_text(manifest.read_text() + "  - {kind: generate, id: new-2, prompt: an owl}\n")
    again = cli("retry-failed", out, env=env_for(sim))
    assert again.code == 1  # the refused task is refused again
    assert sim.state.requests_total == 3  # fine, refused, refused again: nothing for new-1 and new-2
    assert "2 pending task(s) left alone" in again.out
    status = json.loads(cli("status", out, "--json").out)
    assert (status["succeeded"], status["failed"], status["pending"]) == (1, 1, 2)
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 1  # the rest: new-1, new-2
    assert sim.state.requests_total == 5 and len(results(out)) == 4


def test_retry_failed_of_a_run_whose_deadline_has_passed_is_not_refused_for_good(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """retry-failed replays the recorded command line: a --deadline given as a date and time, once past,
    made every retry exit 64 ('already past'), a --deadline or --max-duration given to the retry too (the
    recorded value is read first)."""
    from datetime import datetime, timedelta

    manifest = write("""
        tasks:
          - {kind: generate, id: fine, prompt: a calm lake}
          - {kind: generate, id: refused, prompt: something forbidden}
    """)
    out = tmp_path / "out"
    soon = (datetime.now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert cli("run", manifest, "--out", out, "--deadline", soon, env=env_for(sim)).code == 1
    [log] = (out / "runs").glob("*.jsonl")
    log.write_text(log.read_text().replace(soon, "2020-01-02T07:00", 1))  # the night has passed
    again = cli("retry-failed", out, env=env_for(sim))
    assert again.code == 1, again.err  # refused again by the server, not by the command line
    assert "the recorded --deadline 2020-01-02T07:00 is past: retried without it" in again.err
    for given in (("--deadline", "23:59"), ("--max-duration", "1h")):
        outcome = cli("retry-failed", out, *given, env=env_for(sim))
        assert outcome.code == 1 and "is past" not in outcome.err, outcome.err
    assert sim.state.requests_total == 5  # fine once, refused four times
    # a recorded deadline still ahead stays beside a --max-duration (the run ends at the earlier)
    other = tmp_path / "other"
    assert cli("run", manifest, "--out", other, "--deadline", soon, env=env_for(sim)).code == 1
    kept = cli("retry-failed", other, "--max-duration", "1h", env=env_for(sim))
    assert kept.code == 1 and f"--deadline {soon}" in kept.err and "is past" not in kept.err, kept.err


def test_retry_failed_of_a_run_given_abbreviated_flags_reads_them_as_argparse_did(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """argparse takes `--dead` for `--deadline`: retry-failed, which replays the recorded command line and
    leaves a past --deadline out by its name, did not know it, and once the night had passed every retry
    of the run exited 64 ('already past'). The flags are recorded under their full names now, and a run
    recorded before (its `--dead`) is read the same way."""
    from datetime import datetime, timedelta

    manifest = write("tasks:\n  - {kind: generate, id: refused, prompt: something forbidden}\n")
    soon = (datetime.now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    for name in ("out", "recorded-before"):
        out = tmp_path / name
        assert (
            cli("run", manifest, "--out", out, "--dead", soon, "--max-att", "2", env=env_for(sim)).code == 1
        )
        [log] = (out / "runs").glob("*.jsonl")
        start = json.loads(log.read_text().splitlines()[0])
        assert start["argv"][-4:] == ["--deadline", soon, "--max-attempts", "2"]
        text = log.read_text().replace(soon, "2020-01-02T07:00", 1)  # the night has passed
        if name == "recorded-before":  # as a run recorded its command line before
            text = text.replace('"--deadline"', '"--dead"', 1).replace('"--max-attempts"', '"--max-att"', 1)
        log.write_text(text)

        again = cli("retry-failed", out, env=env_for(sim))

        assert again.code == 1, again.err  # refused again by the server, not by the command line
        assert "the recorded --deadline 2020-01-02T07:00 is past: retried without it" in again.err
        assert "--max-attempts 2 --out" in again.err  # the replayed command, each flag in full
    assert sim.state.requests_total == 4  # each run, and its retry


def test_retry_failed_on_a_copy_of_dir_acts_on_the_copy(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    import shutil

    manifest = write("""
        tasks:
          - {kind: generate, id: fine, prompt: a calm lake}
          - {kind: generate, id: flaky, prompt: a quiet wood}
    """)
    out = tmp_path / "out"
    down = SimConfig(api_key=KEY, error_rate=1.0, retry_after=0)
    with simulator_in_thread(down) as sim:
        assert cli("run", manifest, "--out", out, *FAST, "--max-attempts", "1", env=env_for(sim)).code == 1
    assert all(r["status"] == "failed" for r in results(out).values())
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        outcome = cli("retry-failed", copy, env=env_for(sim))
        assert outcome.code == 0, outcome.err
        assert sim.state.requests_total == 2
    [command] = [li for li in outcome.err.splitlines() if li.startswith("maas-batch: in ")]
    assert command.count(" --out ") == 1 and command.endswith(f"--out {copy} --retry-failed")
    assert all(r["status"] == "succeeded" for r in results(copy).values())
    assert all(r["status"] == "failed" for r in results(out).values())  # the original is untouched
    assert not (out / "results.retried.jsonl").exists() and not list((out / "images").glob("*"))


def test_answers_that_do_not_say_their_usage_still_count_against_the_budget(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import batch.jobs.generate

    monkeypatch.setattr(
        batch.jobs.generate.KIND, "usage_of", lambda body: None
    )  # a gateway that strips usage
    manifest = sixteen_tasks(write)
    out = tmp_path / "out"
    budget = 4.5 * ONE_TASK_COST
    # one at a time, so that the budget has only the finished answers to go on
    outcome = cli("run", manifest, "--out", out, "--max-cost", f"{budget:.6f}", "-c", "1", env=env_for(sim))
    assert outcome.code == 3, outcome.err
    assert sim.state.requests_total == 4 and len(results(out)) == 4  # each counted as its estimate
    # each paid answer has its ledger line, at the estimate, marked so
    lines = ledger(out)
    assert len(lines) == 4 and all(line["estimated"] is True and line["usage"] is None for line in lines)
    estimate = batch.jobs.generate.KIND.estimate({"prompt": "p 00", "size": "1024x1024", "quality": "low"})
    assert all(line["output_tokens"] == estimate.output for line in lines)


def test_a_remembered_plan_without_estimates_is_not_trusted_by_max_cost(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("tasks:\n  - {kind: chat, model: house-gemini, prompt: hello}\n")
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    plan = out / ".cache" / "plan.json"
    document = json.loads(plan.read_text())
    del document["estimates"]  # as an older maas-batch wrote it
    plan.write_text(json.dumps(document))
    outcome = cli("run", manifest, "--out", out, "--max-cost", "5", env=env_for(sim))
    assert outcome.code == 78 and "house-gemini" in outcome.err
    assert sim.state.requests_total == 1


def test_unusable_log_file_and_export_output_are_clear_errors(
    cli: Callable[..., Outcome], sim: RunningSimulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    (tmp_path / "a-file").write_text("")
    nowhere = tmp_path / "a-file" / "night.log"  # a missing folder is made; one under a file cannot be
    outcome = cli("run", EXAMPLES / "quickstart.yaml", "--out", out, "--log-file", nowhere, env=env_for(sim))
    assert outcome.code == 64 and "night.log" in outcome.err and "Traceback" not in outcome.err
    assert sim.state.requests_total == 0
    assert cli("run", EXAMPLES / "quickstart.yaml", "--out", out, env=env_for(sim)).code == 0
    exported = cli("export", out, "--output", tmp_path / "no-such-folder" / "rows.csv")
    assert exported.code == 74 and "rows.csv" in exported.err and "Traceback" not in exported.err


def test_an_answer_being_written_to_the_ledger_still_counts_against_the_budget(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import anyio

    from batch.output.store import OutputDir

    append = OutputDir.append

    async def slow_ledger(self: OutputDir, journal: object, record: dict[str, object]) -> None:
        if journal is self.usage:  # a slow disk: the answer is in, its bill is not yet
            await anyio.sleep(0.3)
        await append(self, journal, record)  # type: ignore[arg-type]

    monkeypatch.setattr(OutputDir, "append", slow_ledger)
    manifest = sixteen_tasks(write)
    out = tmp_path / "out"
    budget = str(int(2.5 * ONE_TASK_TOKENS))  # two tasks, not three
    outcome = cli("run", manifest, "--out", out, "--max-tokens", budget, "-c", "2", env=env_for(sim))
    assert outcome.code == 3, outcome.err
    assert sim.state.requests_total == 2 and len(ledger(out)) == 2


def test_a_retry_stopped_before_sending_every_failure_sends_the_rest_next_time(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write(
        "defaults: {model: gpt-image-1, size: 1024x1024, quality: low}\n"
        "tasks:\n" + "".join(f"  - {{kind: generate, id: t{i:02d}, prompt: p {i:02d}}}\n" for i in range(4))
    )
    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY, error_rate=1.0, retry_after=0)) as sim:
        assert cli("run", manifest, "--out", out, *FAST, "--max-attempts", "1", env=env_for(sim)).code == 1
    assert len(results(out)) == 4
    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        budget = str(int(2.5 * ONE_TASK_TOKENS))
        stopped = cli("retry-failed", out, "--max-tokens", budget, "-c", "1", env=env_for(sim))
        assert stopped.code == 3, stopped.err
        assert sim.state.requests_total == 2 and len(results(out)) == 2
        status = json.loads(cli("status", out, "--json").out)
        assert (status["succeeded"], status["pending"], status["retry_pending"]) == (2, 2, 2)
        assert "2 of the pending failed before" in cli("status", out).out
        # 2 tasks sent again: 2 retries, not 4 (the two set aside and not sent made no second try)
        found = json.loads(cli("report", out, "--json").out)
        assert (found["attempts"], found["retries"], found["requests"]) == (6, 2, 6), found
        # report said "0 failed, 2 pending" and no failure at all: it says what status says
        assert (found["failed"], found["pending"], found["retry_pending"]) == (0, 2, 2), found
        assert "2 of the pending failed before" in cli("report", out).out
        dry = cli("run", manifest, "--out", out, "--retry-failed", "--dry-run", env=env_for(sim))
        assert f"to retry in {out}: 2 of 4 tasks" in dry.out
        rest = cli("retry-failed", out, "--max-tokens", "100000", env=env_for(sim))
        assert rest.code == 0, rest.err
        assert "2 failed task(s) were given another go" in rest.out
        assert sim.state.requests_total == 4
    assert all(r["status"] == "succeeded" for r in results(out).values()) and len(results(out)) == 4
    assert json.loads(cli("status", out, "--json").out)["retry_pending"] == 0
    assert json.loads(cli("report", out, "--json").out)["retries"] == 4


def test_a_refused_tasks_result_line_keeps_the_servers_request_id(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """The simulator's 400 (a content filter) carries x-request-id, as the API's does: the id an invoice
    or a support ticket names. The failed task's line dropped it, and `export --format openai` wrote ''."""
    manifest = write("tasks:\n  - {kind: generate, id: refused, prompt: something forbidden}\n")
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 1
    line = json.loads((out / "results.jsonl").read_text())
    assert line["status"] == "failed" and str(line.get("request_id", "")).startswith("req_")
    exported = json.loads(cli("export", out, "--format", "openai").out.splitlines()[0])
    assert exported["response"]["request_id"] == line["request_id"]


def test_the_recorded_command_keeps_no_redis_password() -> None:
    from batch.cli.run import recorded_command

    argv = ["run", "m.yaml", "--redis", "redis://:s3cret@h:6400/0", "--out", "D", "--set", "u=http://a:b@c"]
    kept = recorded_command(argv)
    assert "s3cret" not in json.dumps(kept) and kept["passwords_left_out"] is True
    assert kept["argv"][3] == "redis://h:6400/0" and kept["argv"][-1] == "u=http://a:b@c"  # a task's value
    # an abbreviated flag, under its full name (retry-failed finds the flags by name)
    assert recorded_command(["run", "--red=rediss://u:pw@h/1"])["argv"] == ["run", "--redis=rediss://u@h/1"]
    assert recorded_command(["run", "--red", "redis://:pw@h/1"])["argv"] == ["run", "--redis", "redis://h/1"]
    # a password with an @ in it, or in the query: none of it kept (a review found "@ss" and the query)
    for url in ("redis://:p@ss@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0?password=p@ss"):
        kept = recorded_command(["run", "--redis", url])
        assert "ss" not in kept["argv"][2] and kept["passwords_left_out"] is True, kept
    assert "passwords_left_out" not in recorded_command(["run", "m.yaml", "--redis", "redis://h:6379/0"])


def test_a_set_value_with_a_hash_is_sent_as_written() -> None:
    """YAML reads ` #` as a comment: `--set chat.stop=###` set stop to null, `user=team #3` to "team"."""
    from batch.values import parse_overrides

    found = parse_overrides(["chat.stop=###", "user=team #3", "a=#x", "n=3", "t=true", "s='a # b'", "e="])
    # a # that YAML read as text stays where it is: a list, a mapping
    assert parse_overrides(['stop=["#", "END"]', 'x={a: "#1"}']) == {"stop": ["#", "END"], "x": {"a": "#1"}}
    assert found == {
        "chat": {"stop": "###"},
        "user": "team #3",
        "a": "#x",
        "n": 3,
        "t": True,
        "s": "a # b",
        "e": "",
    }


def test_a_store_url_with_one_slash_is_refused_not_made_a_folder(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--out s3:/bucket/x` made a local folder named `s3:` and wrote the night into it, in silence."""
    monkeypatch.chdir(tmp_path)
    manifest = write("tasks:\n  - {kind: chat, id: q, model: gemini-2.5-flash, prompt: hi}\n")
    for command in (("run", manifest, "--out", "s3:/bucket/x", "--simulate"), ("status", "az:container/x")):
        done = cli(*command, env={"MAAS_ENDPOINT": "ep"})
        assert done.code == 64 and "a store's URL is" in done.err, done.err
    assert "a store's URL is s3://bucket/x" in cli("status", "s3:/bucket/x").err
    assert not (tmp_path / "s3:").exists() and not (tmp_path / "az:container").exists()


def test_a_log_file_into_dirs_own_files_is_refused(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """`--log-file DIR/results.jsonl` appended log lines to the checkpoint: status then said 12 of its
    lines were damaged. Refused, as export --output refuses the same names; a file beside them is fine."""
    manifest = write("tasks:\n  - {kind: chat, id: q, model: gemini-2.5-flash, prompt: hi}\n")
    out = tmp_path / "out"
    refused = cli("run", manifest, "--out", out, "--simulate", "--log-file", out / "results.jsonl")
    assert refused.code == 64 and f"--log-file {out / 'results.jsonl'} is {out}'s own" in refused.err
    assert not out.exists()
    assert cli("run", manifest, "--out", out, "--simulate", "--log-file", out / "night.log").code == 0
    assert (out / "night.log").read_text() and len(results(out)) == 1


def test_the_recorded_command_imports_no_queue_library() -> None:
    """Leaving the password out must not cost a --redis run Dramatiq's import (some 0.2 s at start)."""
    import subprocess
    import sys

    code = (
        "import sys; from batch.cli.run import recorded_command; "
        "recorded_command(['run', '--redis', 'redis://:pw@h/0']); print('dramatiq' in sys.modules)"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert found.stdout.strip() == "False", found.stdout + found.stderr
