"""End to end through the CLI against the simulator on a loopback port: the three kinds, resuming, and
every exit code of the contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from batch.output.store import OutputDir
from batch.simulator import RunningSimulator, SimConfig, simulator_in_thread
from tests.conftest import FAST, KEY, Outcome, env_for, ledger, results

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
ONE_CHAT_TASK = '{"kind": "chat", "id": "a", "model": "gemini-2.5-flash", "prompt": "hi"}\n'


def _on_a_full_disk(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m batch COMMAND` with its stdout on /dev/full (every write fails with ENOSPC)."""
    with open("/dev/full", "w") as full:
        return subprocess.run(
            [sys.executable, "-m", "batch", *command],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=env,
        )


def _child_env(sim: RunningSimulator) -> dict[str, str]:
    """The environment of a `python -m batch` child against `sim`, with this tree's `batch`, its stdout
    buffered as a user's is (without PYTHONUNBUFFERED, which some shells and CI set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_") and k != "PYTHONUNBUFFERED"}
    return {**env, **env_for(sim), "PYTHONPATH": str(ROOT)}


def test_quickstart_produces_images_answers_and_ledger_then_resumes_with_zero_requests(
    cli: Callable[..., Outcome], sim: RunningSimulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = cli("run", QUICKSTART, "--out", out, env=env_for(sim))
    assert first.code == 0, first.err
    assert "7 succeeded, 0 failed" in first.out
    done = results(out)
    assert sorted(done) == [
        "describe-meadow",
        "desert-and-meadow",
        "fox-autumn",
        "haiku",
        "lighthouse",
        "meadow-balloon",
        "sticker",
    ]
    assert all(r["status"] == "succeeded" and r["attempts"] == 1 for r in done.values())
    sizes = {"fox-autumn": (1024, 1024, "PNG"), "lighthouse": (1536, 1024, "WEBP")}
    for task_id, (width, height, fmt) in sizes.items():
        [path] = done[task_id]["files"]
        with Image.open(out / path) as image:
            assert (image.width, image.height, image.format) == (width, height, fmt)
    assert done["sticker"]["files"] == ["images/sticker~1.png", "images/sticker~2.png"]
    assert done["lighthouse"]["files"] == ["images/lighthouse.webp"]
    for task_id in ("describe-meadow", "haiku"):  # haiku was streamed
        assert done[task_id]["text"] and done[task_id]["usage"]["total_tokens"] > 0
    assert "1 image" in done["describe-meadow"]["text"]  # the local picture reached the API inline
    # the ledger: one line per billed answer, totals equal to what the server billed
    lines = ledger(out)
    assert len(lines) == 7
    assert sum(line["total_tokens"] for line in lines) == sim.state.billed_total_tokens
    assert {line["task_id"] for line in lines} == set(done)
    assert all(line["usage"] for line in lines)
    assert sum(r["usage"]["total_tokens"] for r in done.values()) == sim.state.billed_total_tokens
    requests_before = sim.state.requests_total

    second = cli("run", QUICKSTART, "--out", out, env=env_for(sim))
    assert second.code == 0
    assert sim.state.requests_total == requests_before  # nothing sent again
    assert "0 succeeded, 0 failed, 7 already done" in second.out
    assert len(results(out)) == 7 and len(ledger(out)) == 7


def test_simulate_flag_runs_without_a_key(cli: Callable[..., Outcome], tmp_path: Path) -> None:
    outcome = cli("run", QUICKSTART, "--out", tmp_path / "out", "--simulate")
    assert outcome.code == 0, outcome.err
    assert len(results(tmp_path / "out")) == 7


def test_reordered_manifest_with_new_tasks_sends_only_the_new_ones(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    manifest = write("tasks:\n" + "".join(f"  - {{kind: generate, prompt: picture {i}}}\n" for i in range(3)))
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    first_ids = set(results(out))
    sent_before = sim.state.requests_total
    write("tasks:\n" + "".join(f"  - {{kind: generate, prompt: picture {i}}}\n" for i in (4, 2, 1, 0, 3)))
    assert cli("run", manifest, "--out", out, env=env_for(sim)).code == 0
    new_records = sim.state.records[sent_before:]
    assert len(new_records) == 2
    assert {r.task_id for r in new_records}.isdisjoint(first_ids)
    assert len(results(out)) == 5


def test_a_refused_task_fails_alone_exit_1_and_is_not_resent(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("""
        tasks:
          - {kind: generate, id: fine, prompt: a calm lake}
          - {kind: generate, id: refused, prompt: something forbidden}
          - {kind: chat, id: talk, model: gemini-2.5-flash, prompt: hello}
    """)
    out = tmp_path / "out"
    outcome = cli("run", manifest, "--out", out, *FAST, env=env_for(sim))
    assert outcome.code == 1
    assert "2 succeeded, 1 failed" in outcome.out
    refused = results(out)["refused"]
    assert refused["status"] == "failed"
    assert refused["attempts"] == 1  # a 400 is not retried
    assert refused["error"]["status"] == 400
    assert refused["error"]["type"] == "moderation_blocked"
    assert "safety system" in refused["error"]["message"]
    assert refused["usage"] is None and refused["files"] == []
    sent = sim.state.requests_total
    again = cli("run", manifest, "--out", out, env=env_for(sim))
    assert again.code == 1  # the manifest still has a failed task
    assert "(1 of them failed)" in again.out
    assert sim.state.requests_total == sent


def test_transient_errors_and_garbled_answers_are_retried_until_success(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write(
        "tasks:\n" + "".join(f"  - {{kind: generate, id: t{i}, prompt: p {i}}}\n" for i in range(12))
    )
    faults = {"not_json": 0.2, "truncate": 0.2, "html200": 0.1, "reset": 0.1}
    config = SimConfig(
        api_key=KEY,
        error_rate=0.2,
        rate_429=0.1,
        retry_after=0,
        faults=faults,
        fault_once_per_task=True,
        seed=3,
    )
    with simulator_in_thread(config) as sim:
        outcome = cli(
            "run", manifest, "--out", tmp_path / "out", *FAST, "--max-attempts", "10", env=env_for(sim)
        )
        billed = sim.state.billed_total_tokens
    assert outcome.code == 0, outcome.err + outcome.out
    done = results(tmp_path / "out")
    assert all(r["status"] == "succeeded" for r in done.values())
    assert any(r["attempts"] > 1 for r in done.values())
    lines = ledger(tmp_path / "out")
    # answers garbled on the way say no usage: they are 'maybe billed', never in the ledger twice
    assert sum(line["total_tokens"] for line in lines) <= billed
    for task_id, record in done.items():
        billed_for_task = sum(line["total_tokens"] for line in lines if line["task_id"] == task_id)
        assert record["usage"]["total_tokens"] == billed_for_task


def test_invalid_manifest_exits_65_with_located_messages_and_sends_nothing(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("""
        tasks:
          - {kind: generate, prompt: fine}
          - {kind: generate, prompt: bad, size: 800x600}
          - {kind: generate, prompt: worse, n: 12}
    """)
    outcome = cli("run", manifest, "--out", tmp_path / "out", env=env_for(sim))
    assert outcome.code == 65
    assert f"{manifest}:3: tasks[1]: size: must be one of" in outcome.err
    assert f"{manifest}:4: tasks[2]: n: must be between 1 and 10" in outcome.err
    assert "2 problems; nothing was sent" in outcome.err
    assert sim.state.requests_total == 0
    assert not (tmp_path / "out").exists()
    assert cli("validate", manifest).code == 65


def test_validate_counts_tasks_and_sends_nothing(cli: Callable[..., Outcome], sim: RunningSimulator) -> None:
    outcome = cli("validate", QUICKSTART, env=env_for(sim))
    assert outcome.code == 0
    assert "7 tasks, valid" in outcome.out
    assert "generate  gpt-image-1" in outcome.out and "       3   endpoint my-image-endpoint" in outcome.out
    assert sim.state.requests_total == 0


@pytest.mark.parametrize(
    "args",
    [
        ["run"],
        ["run", "x.yaml"],
        ["run", "x.yaml", "--out", "o", "--concurrency", "0"],
        ["run", "x.yaml", "--out", "o", "--bogus"],
        ["run", "x.yaml", "--out", "o", "--set", "novalue"],
        ["frobnicate"],
    ],
)
def test_bad_usage_exits_64(
    cli: Callable[..., Outcome], args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "x.yaml").write_text("tasks: []\n")
    monkeypatch.chdir(tmp_path)  # and back: a later test's child process starts in the cwd it finds
    outcome = cli(*args, env={"MAAS_API_KEY": KEY})
    assert outcome.code == 64, outcome.err


def test_refused_key_stops_the_run_with_77_and_a_good_key_resumes(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("tasks:\n" + "".join(f"  - {{kind: generate, prompt: p {i}}}\n" for i in range(20)))
    out = tmp_path / "out"
    outcome = cli("run", manifest, "--out", out, "--concurrency", "2", env=env_for(sim, MAAS_API_KEY="wrong"))
    assert outcome.code == 77
    assert "the API refused the key (HTTP 401)" in outcome.out
    assert sim.state.requests_total <= 2  # only what was in flight; nothing sent after the refusal
    assert results(out) == {}  # stopped tasks are pending, not failed
    assert "wrong" not in outcome.out + outcome.err
    resumed = cli("run", manifest, "--out", out, env=env_for(sim))
    assert resumed.code == 0
    assert len(results(out)) == 20


def test_missing_configuration_exits_78(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("tasks:\n  - {kind: generate, prompt: a}\n")
    no_key = cli("run", manifest, "--out", tmp_path / "o1", env={"MAAS_ENDPOINT": "ep"})
    assert no_key.code == 78 and "MAAS_API_KEY is not set" in no_key.err
    no_endpoint = cli(
        "run", manifest, "--out", tmp_path / "o2", env={"MAAS_API_KEY": KEY, "MAAS_BASE_URL": sim.base_url}
    )
    assert no_endpoint.code == 78 and "no endpoint for this generate task" in no_endpoint.err
    assert sim.state.requests_total == 0


def test_unknown_endpoint_404_stops_the_run_with_78(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("tasks:\n" + "".join(f"  - {{kind: generate, prompt: p {i}}}\n" for i in range(10)))
    with simulator_in_thread(SimConfig(api_key=KEY, endpoints=frozenset({"real-ep"}))) as sim:
        outcome = cli(
            "run",
            manifest,
            "--out",
            tmp_path / "out",
            "--concurrency",
            "1",
            env=env_for(sim, MAAS_ENDPOINT="typo-ep"),
        )
        assert sim.state.requests_total == 1
    assert outcome.code == 78
    assert "no such endpoint (HTTP 404)" in outcome.out


def test_locked_output_directory_exits_75_and_writes_nothing(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("tasks:\n  - {kind: generate, prompt: a}\n")
    holder = OutputDir(tmp_path / "out")
    holder.open()
    try:
        before = sorted(p.name for p in (tmp_path / "out").iterdir())
        outcome = cli("run", manifest, "--out", tmp_path / "out", env=env_for(sim))
        assert outcome.code == 75
        assert "another run is using" in outcome.err
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
        assert sim.state.requests_total == 0
    finally:
        holder.close()


def test_the_key_appears_in_no_output_and_no_file(
    cli: Callable[..., Outcome], sim: RunningSimulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    outcome = cli("run", QUICKSTART, "--out", out, "--verbose", env=env_for(sim))
    assert outcome.code == 0
    assert KEY not in outcome.out + outcome.err
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_python_dash_m_batch_is_the_same_command(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    helped = subprocess.run(
        [sys.executable, "-m", "batch", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert helped.returncode == 0
    assert "77  the API refused the key" in helped.stdout and "MAAS_ENDPOINT" in helped.stdout
    ran = subprocess.run(
        [sys.executable, "-m", "batch", "run", "examples/quickstart.yaml", "--out", "out", "--simulate"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    assert "7 succeeded" in ran.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  - {kind: generate, prompt: a, quality: best}\n")
    refused = subprocess.run(
        [sys.executable, "-m", "batch", "run", str(bad), "--out", "out2", "--simulate"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert refused.returncode == 65
    assert f"{bad}:2: tasks[0]: quality: must be one of auto, high, medium, low" in refused.stderr
    assert not (tmp_path / "out2").exists()


def test_images_inside_a_chat_answer_are_saved_as_files(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("""
        tasks:
          - {kind: chat, id: drawn, model: gemini-2.5-flash-image, prompt: draw a cat}
          - {kind: chat, id: drawn-streamed, model: gemini-2.5-flash-image, prompt: draw a dog, stream: true}
    """)
    out = tmp_path / "out"
    outcome = cli("run", manifest, "--out", out, env=env_for(sim))
    assert outcome.code == 0, outcome.err
    for task_id in ("drawn", "drawn-streamed"):
        record = results(out)[task_id]
        assert record["text"]
        assert record["files"] == [f"images/{task_id}.png"]
        with Image.open(out / record["files"][0]) as image:
            assert image.format == "PNG" and image.size == (1024, 1024)


def test_a_dozen_mistakes_are_all_reported_in_one_run_and_nothing_is_sent(
    cli: Callable[..., Outcome], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    from tests.conftest import make_image, make_mask

    make_image(tmp_path / "photo.png", size=(64, 64))
    make_mask(tmp_path / "small-mask.png", size=(32, 32))
    (tmp_path / "fake.jpg").write_text("not an image")
    write("fine prompt\n" + "x" * 32_001 + "\n", "prompts.txt")
    write("sku,title\nA-1,mug\n", "rows.csv")
    manifest = write("""
        defaults:
          generate: {quality: best}
        tasks:
          - {kind: generate, prompt: a, n: 11}
          - {kind: generate, prompt: b, size: 640x480}
          - {kind: generate, prompt: c, background: transparent, output_format: jpeg}
          - {kind: generate, prompt: d, output_compression: 40}
          - {kind: edit, prompt: e, image: fake.jpg}
          - {kind: edit, prompt: f, image: photo.png, mask: small-mask.png}
          - {kind: chat, model: m, messages: [{role: wizard, content: hi}]}
          - {kind: generate, prompts_file: prompts.txt}
          - {kind: chat, model: m, for_each: {csv: rows.csv}, prompt: "{titel}"}
          - {kind: generate, prompt: g, id: dup}
          - {kind: generate, prompt: h, id: dup}
          - {kind: paint, prompt: i}
    """)
    outcome = cli("run", manifest, "--out", tmp_path / "out", env=env_for(sim))
    assert outcome.code == 65
    expected = [
        "quality: must be one of auto, high, medium, low (set in defaults.generate)",
        "tasks[0]: n: must be between 1 and 10",
        "tasks[1]: size: must be one of",
        "tasks[2]: background: transparent needs output_format png or webp",
        "tasks[3]: output_compression: only applies to jpeg and webp",
        "tasks[4]: image: must be a PNG, WebP or JPEG file (by content)",
        "tasks[5]: mask: is 32x32 but the first image is 64x64",
        "tasks[6]: messages[0].role: must be one of system, user",
        "tasks[7] prompts.txt:2: prompt: is 32,001 characters long",
        "tasks[8] rows.csv:2: prompt: uses the unknown placeholder {titel}; did you mean {title}?",
        "tasks[10]: id: the id 'dup' is already used by tasks[9]",
        "tasks[11]: kind: is not a task kind",
    ]
    for text in expected:
        assert text in outcome.err, text
    assert "problems; nothing was sent" in outcome.err
    assert sim.state.requests_total == 0
    assert not (tmp_path / "out").exists()


def test_validate_show_prints_requests_as_sent_without_bytes_or_key(
    cli: Callable[..., Outcome], sim: RunningSimulator
) -> None:
    outcome = cli("validate", QUICKSTART, "--show", "7", env=env_for(sim))
    assert outcome.code == 0
    text = outcome.out
    assert f"POST {sim.base_url}/my-image-endpoint/images/edits" in text
    assert "Content-Type: multipart/form-data" in text
    assert "  image: meadow.png <image/png, 2,722 bytes, sha256 " in text
    assert "  image[]: desert.jpg <image/jpeg, " in text and "  mask: sky-mask.png <image/png, " in text
    assert '"url": "data:<image/png, 2,722 bytes, sha256 ' in text  # chat image inlined, shown by hash
    assert '"stream_options": {' in text  # a streamed chat asks for usage
    assert KEY not in text and "Bearer $MAAS_API_KEY" in text
    assert sim.state.requests_total == 0


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_under_stdout_does_not_change_the_runs_exit_code(
    sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """A cron job's log on a full disk (`>> run.log`): the summary cannot be printed; the run still exits
    with its own code, says why on stderr, and DIR holds everything."""
    manifest = write(ONE_CHAT_TASK, "t.jsonl")
    env = _child_env(sim)
    ran = _on_a_full_disk(["run", str(manifest), "--out", str(tmp_path / "out"), *FAST], env)
    assert ran.returncode == 0, ran.stderr
    assert "maas-batch: could not print the run's summary: no space left on the device" in ran.stderr
    assert "Traceback" not in ran.stderr
    assert results(tmp_path / "out")["a"]["status"] == "succeeded"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", [("validate", "{manifest}"), ("report", "{out}"), ("export", "{out}")])
def test_a_full_disk_under_stdout_ends_a_command_with_74_and_says_so(
    command: tuple[str, str], sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """`maas-batch report DIR >> report.txt` on a full disk: a message and 74, not a traceback and 1."""
    manifest = write(ONE_CHAT_TASK, "t.jsonl")
    out = tmp_path / "out"
    env = _child_env(sim)
    python = [sys.executable, "-m", "batch"]
    ran = subprocess.run(
        [*python, "run", str(manifest), "--out", str(out), *FAST], capture_output=True, env=env
    )
    assert ran.returncode == 0, ran.stderr
    name, target = command
    ended = _on_a_full_disk([name, target.format(manifest=manifest, out=out)], env)
    assert ended.returncode == 74, ended.stderr
    assert "maas-batch: cannot write to standard output: no space left on the device" in ended.stderr
    assert "Traceback" not in ended.stderr and "Exception ignored" not in ended.stderr


def test_a_failure_of_another_file_is_not_taken_for_stdouts_and_stdout_is_given_back(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a write to stdout is said to be stdout's; a program that calls `main` has its own stdout back."""
    from batch import cli
    from batch.cli import inspect

    def failing(args: object) -> int:
        print("half a report")
        raise OSError(5, "Input/output error")

    monkeypatch.setitem(inspect.__dict__, "show_status", failing)
    before = sys.stdout
    with pytest.raises(OSError) as raised:
        cli.main(["status", "somewhere"])
    assert raised.value.errno == 5 and not isinstance(raised.value, cli.StdoutError)
    assert sys.stdout is before
    assert capsys.readouterr().out == "half a report\n"


@pytest.mark.skipif(os.name != "posix", reason="closes the child's stdout before it starts")
def test_a_command_started_with_stdout_closed_writes_nothing_and_exits_as_it_would(
    sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """`maas-batch report DIR >&-` (a cron line that closes stdout): Python has no sys.stdout then, and
    print() writes nothing; the command must not take that for a failure of its own."""
    manifest = write(ONE_CHAT_TASK, "t.jsonl")
    out = tmp_path / "out"
    env = _child_env(sim)
    python = [sys.executable, "-m", "batch"]
    for command in (
        ["run", str(manifest), "--out", str(out), *FAST],
        ["report", str(out)],
        ["validate", str(manifest)],
    ):
        ended = subprocess.run(
            [*python, *command],
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=env,
            preexec_fn=lambda: os.close(1),
        )
        assert ended.returncode == 0, ended.stderr
        assert "Traceback" not in ended.stderr
    assert results(out)["a"]["status"] == "succeeded"


def test_a_program_whose_stdout_is_its_own_object_gets_what_main_prints(
    monkeypatch: pytest.MonkeyPatch, write: Callable[..., Path]
) -> None:
    """A program that calls `main` with a stdout of its own (a tee whose write returns None, as plain
    Python objects do) gets the output; main's wrapper around stdout asks nothing more of it."""
    from batch import cli

    class Tee:
        def __init__(self) -> None:
            self.parts: list[str] = []

        def write(self, text: str) -> None:
            self.parts.append(text)

        def flush(self) -> None:
            pass

    tee = Tee()
    monkeypatch.setattr(sys, "stdout", tee)
    manifest = write(ONE_CHAT_TASK, "t.jsonl")
    monkeypatch.setenv("MAAS_ENDPOINT", "ep")
    assert cli.main(["validate", str(manifest)]) == 0
    assert sys.stdout is tee and "1 task" in "".join(tee.parts)


def test_a_reader_gone_from_stdout_leaves_the_commands_exit_code_as_it_is(
    sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """`maas-batch run ... | head -1` where the run stops at its budget: the summary meets a closed pipe,
    and the run still ends 3, not 0."""
    manifest = write(ONE_CHAT_TASK, "t.jsonl")
    command = [sys.executable, "-m", "batch", "run", str(manifest), "--out", str(tmp_path / "out")]
    child = subprocess.Popen(
        [*command, "--max-tokens", "1", *FAST],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(sim),
    )
    assert child.stdout is not None
    child.stdout.close()  # the reader is gone before anything is written
    _, errors = child.communicate(timeout=120)
    assert child.returncode == 3, errors.decode()
    assert b"Traceback" not in errors


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_simulator_whose_stdout_is_full_says_so_not_that_it_cannot_listen(tmp_path: Path) -> None:
    with open("/dev/full", "w") as full:
        ended = subprocess.run(
            [sys.executable, "-m", "batch", "simulate", "--port", "0"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    assert ended.returncode == 74, ended.stderr
    assert "cannot write to standard output: no space left on the device" in ended.stderr
    assert "cannot listen" not in ended.stderr and "Traceback" not in ended.stderr
