"""Hostile manifests and a tampered output directory: refused or contained; no byte written outside DIR."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.simulator import RunningSimulator
from tests.conftest import ROOT, Outcome, env_for, make_image, results
from tests.output.test_gallery import page_data


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (not following links) with a hash of its content."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder with a file that nothing may touch."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me\n")
    return folder


@pytest.mark.parametrize("task_id", ["../escape", "/etc/passwd", "a\u0000b", "..", "with/slash", "x" * 101])
def test_ids_that_would_leave_the_directory_are_refused(
    task_id: str,
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
) -> None:
    import json

    manifest = write(json.dumps({"kind": "generate", "id": task_id, "prompt": "a"}) + "\n", "tasks.jsonl")
    outcome = cli("run", manifest, "--out", tmp_path / "out", env=env_for(sim))
    assert outcome.code == 65
    assert "id: must be 1-100 characters of A-Z a-z 0-9 . _ -" in outcome.err
    assert not (tmp_path / "out").exists() and sim.state.requests_total == 0


def test_placeholders_cannot_smuggle_a_path_into_an_id(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    write("name\n../../outside/x\nfine\n", "rows.csv")
    manifest = write(
        "tasks:\n  - {kind: generate, id: '{name}', for_each: {csv: rows.csv}, prompt: '{name}'}\n"
    )
    outcome = cli("run", manifest, "--out", tmp_path / "out", env=env_for(sim))
    assert outcome.code == 65
    assert "tasks[0] rows.csv:2: id: must be 1-100 characters" in outcome.err
    assert sim.state.requests_total == 0


def test_generated_ids_from_hostile_values_are_safe(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    write("../../etc/passwd\n/absolute/path\n\u0000nul\n", "prompts.txt")
    manifest = write("tasks:\n  - {kind: generate, prompts_file: prompts.txt}\n")
    outcome = cli("run", manifest, "--out", tmp_path / "out", env=env_for(sim))
    assert outcome.code == 0, outcome.err
    for task_id, record in results(tmp_path / "out").items():
        assert "/" not in task_id and "\x00" not in task_id
        [path] = record["files"]
        assert (tmp_path / "out" / path).resolve().parent == (tmp_path / "out" / "images").resolve()


def test_oversized_lines_and_files_are_refused_without_being_read_whole(
    cli: Callable[..., Outcome], sim: RunningSimulator, tmp_path: Path
) -> None:
    huge = 100 * 2**20
    jsonl = tmp_path / "huge.jsonl"
    with jsonl.open("wb") as handle:
        handle.write(b'{"kind": "generate", "prompt": "' + b"x" * huge + b'"}\n')
        handle.write(b'{"kind": "generate", "prompt": "fine"}\n')
    outcome = cli("run", jsonl, "--out", tmp_path / "o1", env=env_for(sim))
    assert outcome.code == 65 and f"{jsonl}:1: line is longer than 64 MB" in outcome.err

    yaml_file = tmp_path / "huge.yaml"
    with yaml_file.open("wb") as handle:
        handle.write(b"tasks:\n  - {kind: generate, prompt: " + b"y" * huge + b"}\n")
    outcome = cli("run", yaml_file, "--out", tmp_path / "o2", env=env_for(sim))
    assert outcome.code == 65 and "a YAML manifest must be under 50 MB" in outcome.err

    prompts = tmp_path / "prompts.txt"
    with prompts.open("wb") as handle:
        handle.write(b"fine\n" + b"z" * huge + b"\nalso fine\n")
    manifest = tmp_path / "p.yaml"
    manifest.write_text("tasks:\n  - {kind: generate, prompts_file: prompts.txt}\n")
    outcome = cli("run", manifest, "--out", tmp_path / "o3", env=env_for(sim))
    assert outcome.code == 65 and f"{prompts}:2: tasks[0]: the line is longer than 1 MB" in outcome.err
    assert sim.state.requests_total == 0


def test_yaml_alias_bomb_and_python_tags_are_refused(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    levels = ['x-a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for name, previous in zip("bcdefghi", "abcdefgh", strict=True):
        levels.append(f"x-{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    bomb = write(
        "\n".join(levels) + "\ntasks:\n  - {kind: chat, model: m, prompt: hi, payload: *i}\n", "bomb.yaml"
    )
    outcome = cli("run", bomb, "--out", tmp_path / "o1", env=env_for(sim))
    assert outcome.code == 65 and "an alias bomb?" in outcome.err

    marker = tmp_path / "pwned"
    evil = write(f"tasks: !!python/object/apply:os.system ['touch {marker}']\n", "evil.yaml")
    outcome = cli("run", evil, "--out", tmp_path / "o2", env=env_for(sim))
    assert outcome.code == 65 and "not valid YAML" in outcome.err
    assert not marker.exists()
    assert sim.state.requests_total == 0


FOLDERS = ("images", "runs", "answers", "thumbs", "thumbs/inputs")


@pytest.mark.parametrize("planted", ["results.jsonl", "usage.jsonl", ".lock", *FOLDERS])
def test_a_symlink_planted_in_the_directory_is_not_written_through(
    planted: str,
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    outside: Path,
) -> None:
    manifest = write("tasks:\n  - {kind: generate, id: victim, prompt: a}\n")
    out = tmp_path / "out"
    out.mkdir()
    target = outside / "precious.txt" if planted not in FOLDERS else outside
    (outside / ".draft.tmp").write_text("a file of mine the start's sweep of temporary files must leave\n")
    (out / planted).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, out / planted)
    before = snapshot(outside)
    outcome = cli("run", manifest, "--out", out, env=env_for(sim))
    assert outcome.code == 74, outcome.err
    assert snapshot(outside) == before


def test_a_symlinked_output_file_is_replaced_not_followed(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    outside: Path,
) -> None:
    manifest = write("tasks:\n  - {kind: generate, id: victim, prompt: a}\n")
    images = tmp_path / "out" / "images"
    images.mkdir(parents=True)
    os.symlink(outside / "precious.txt", images / "victim.png")
    before = snapshot(outside)
    assert cli("run", manifest, "--out", tmp_path / "out", env=env_for(sim)).code == 0
    assert snapshot(outside) == before
    assert not (images / "victim.png").is_symlink() and (images / "victim.png").stat().st_size > 0


PLANTED_AFTER_A_RUN = [
    "results.jsonl",
    "usage.jsonl",
    "runs/LOG",
    "runs",
    "images",
    ".cache",
    ".cache/plan.json",
    "thumbs",
    "thumbs/inputs",
    "answers",
    "index.html",
]


@pytest.mark.parametrize("planted", PLANTED_AFTER_A_RUN)
def test_a_symlink_planted_after_a_run_is_never_written_or_truncated_through(
    planted: str,
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    outside: Path,
) -> None:
    """The outside file ends without a newline, as a torn journal line would: a repair that followed the
    link would cut it. Every command that writes to DIR is run over the planted link."""
    (outside / "precious.txt").write_bytes(b"line one\nno newline at the end")
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (1, 2, 3)).save(photo)
    manifest = write(f"tasks:\n  - {{kind: edit, id: first, prompt: a, image: {photo}}}\n")
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    where = out / planted.replace("LOG", next((out / "runs").glob("*.jsonl")).name)
    if where.is_dir():
        __import__("shutil").rmtree(where)
        os.symlink(outside, where)
    else:
        where.unlink(missing_ok=True)
        os.symlink(outside / "precious.txt", where)
    before = snapshot(outside)
    manifest = write(
        f"tasks:\n  - {{kind: edit, id: first, prompt: a, image: {photo}}}\n"
        f"  - {{kind: edit, id: second, prompt: b, image: {photo}}}\n"
    )
    outcomes = [
        cli("run", manifest, "--out", out, env=env_for(sim)),
        cli("gallery", out),
        cli("run", manifest, "--out", out, "--retry-failed", env=env_for(sim)),
    ]
    for outcome in outcomes:
        assert outcome.code in (0, 74), outcome.err
        assert "Traceback" not in outcome.err
    assert snapshot(outside) == before
    assert (outside / "precious.txt").read_bytes() == b"line one\nno newline at the end"


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("csv-fifo", "for_each: the csv file is not a regular file"),
        ("jsonl-fifo", "for_each: the jsonl file is not a regular file"),
        ("prompts-fifo", "prompts_file: is not a regular file"),
        ("csv-dev-zero", "for_each: the csv file is not a regular file"),
        ("prompts-dev-zero", "prompts_file: is not a regular file"),
        ("image-fifo", "is not a regular file"),
        ("manifest-fifo", "the manifest file is not a regular file"),
        ("csv-long-header", "header row cannot be read: the line is longer than 16 MB"),
        ("csv-long-row", "rows.csv:3: tasks[0]: the line is longer than 16 MB"),
        ("jsonl-deep", "not valid JSON: nested too deeply"),
        ("rows-deep", "rows.jsonl:2: tasks[0]: not valid JSON: nested too deeply"),
        ("yaml-deep", "not valid YAML"),
    ],
)
def test_manifest_inputs_that_would_hang_or_exhaust_memory_are_refused_located(
    source: str,
    says: str,
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """A FIFO blocks a read forever and /dev/zero never ends: both are refused before any read. Lines
    are read in bounded pieces; nesting that breaks a parser is a located problem. Exit 65, nothing sent."""
    rows = tmp_path / "rows.csv"
    template = "tasks:\n  - {kind: generate, id: '{name}', for_each: {csv: rows.csv}, prompt: '{name}'}\n"
    manifest = None
    if source == "csv-fifo":
        fifo(rows)
    elif source == "jsonl-fifo":
        fifo(tmp_path / "rows.jsonl")
        template = template.replace("csv: rows.csv", "jsonl: rows.jsonl")
    elif source == "prompts-fifo":
        fifo(tmp_path / "prompts.txt")
        template = "tasks:\n  - {kind: generate, prompts_file: prompts.txt}\n"
    elif source == "csv-dev-zero":
        os.symlink("/dev/zero", rows)
    elif source == "prompts-dev-zero":
        os.symlink("/dev/zero", tmp_path / "prompts.txt")
        template = "tasks:\n  - {kind: generate, prompts_file: prompts.txt}\n"
    elif source == "image-fifo":
        fifo(tmp_path / "photo.png")
        template = "tasks:\n  - {kind: edit, prompt: a, image: photo.png}\n"
    elif source == "manifest-fifo":
        manifest = fifo(tmp_path / "job.yaml")
    elif source == "csv-long-header":
        with rows.open("wb") as handle:
            handle.write(b"name," + b"x" * (40 * 2**20) + b"\nfine,ok\n")
    elif source == "csv-long-row":
        with rows.open("wb") as handle:
            handle.write(b"name\nfine\n" + b"y" * (40 * 2**20) + b"\nalso fine\n")
    elif source == "jsonl-deep":
        deep = b"[" * 100_000 + b"]" * 100_000
        manifest = tmp_path / "tasks.jsonl"
        manifest.write_bytes(
            b'{"kind": "generate", "prompt": "ok"}\n{"kind": "generate", "x": ' + deep + b"}\n"
        )
    elif source == "rows-deep":
        (tmp_path / "rows.jsonl").write_bytes(b'{"name": "ok"}\n{"name": ' + b"[" * 100_000 + b"}\n")
        template = template.replace("csv: rows.csv", "jsonl: rows.jsonl")
    elif source == "yaml-deep":
        template = "tasks: " + "[" * 20_000 + "]" * 20_000 + "\n"
    if manifest is None:
        manifest = write(template)
    for command in ("validate", "run"):
        args = [command, manifest] + (["--out", tmp_path / "out"] if command == "run" else [])
        outcome = cli(*args, env=env_for(sim))
        assert outcome.code == 65, outcome.err
        assert says in outcome.err, outcome.err
        assert "Traceback" not in outcome.err
    assert sim.state.requests_total == 0


def test_a_result_line_naming_files_elsewhere_is_no_way_out_of_the_directory(
    cli: Callable[..., Outcome],
    sim: RunningSimulator,
    write: Callable[..., Path],
    tmp_path: Path,
    outside: Path,
) -> None:
    """A line edited by hand (or a DIR from elsewhere) that names a FIFO hung the page's build, and with it
    every later run on DIR, lock held; files outside DIR were read into thumbs/ (their bytes copied), and
    the page linked any URL a line gave."""
    manifest = write("tasks:\n  - {kind: generate, id: fox, prompt: a fox}\n")
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    make_image(outside / "secret.png")
    os.mkfifo(outside / "pipe.png")
    line = results(out)["fox"]
    own = line["files"][0]
    line["files"] = [own, "../outside/secret.png", str(outside / "secret.png"), "https://evil.example/b.png"]
    line["inputs"] = [str(outside / "pipe.png")]
    (out / "results.jsonl").write_text(json.dumps(line) + "\n")
    shutil.rmtree(out / "thumbs")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    built = subprocess.run(
        [sys.executable, "-m", "batch", "gallery", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert built.returncode == 0, built.stderr
    assert sorted(p.name for p in (out / "thumbs").glob("*.webp")) == [f"{Path(own).name}.webp"]
    [card] = page_data(out / "index.html")["items"]
    assert card["files"] == [own]  # no link out of DIR, no URL
    again = subprocess.run(
        [sys.executable, "-m", "batch", "run", str(manifest), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, **env_for(sim)},
    )
    assert again.returncode == 0 and "1 already done" in again.stdout, again.stderr


def test_a_result_line_nested_deeper_than_the_tool_writes_is_read_as_a_damaged_line(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """990 levels of params crashed the page, the exports, and a run's end (exit 1, a traceback)."""
    manifest = write(
        "tasks:\n  - {kind: generate, id: fox, prompt: a fox}\n  - {kind: generate, id: owl, prompt: an owl}\n"
    )
    out = tmp_path / "out"
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    deep = json.dumps({**json.loads(lines[0]), "params": {"deep": "DEEP"}}).replace(
        '"DEEP"', "[" * 990 + "]" * 990
    )
    (out / "results.jsonl").write_text(deep + "\n" + lines[1] + "\n")
    for command in (("gallery", out), ("export", out), ("export", out, "--format", "jsonl"), ("report", out)):
        done = cli(*command)
        assert done.code == 0 and "Traceback" not in done.err, (command, done.err)
    assert json.loads(cli("status", out, "--json").out)["pending"] == 1  # the deep line: as a damaged one
