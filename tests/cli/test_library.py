"""`import batch`: run, stream and validate from Python, with the CLI's checkpoint, ledger and budgets."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import batch
from batch.manifest.plan import iter_tasks
from batch.simulator import RunningSimulator, SimConfig, simulator_in_thread
from tests.conftest import KEY, Outcome, env_for, ledger, make_image, results

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def api_env(monkeypatch: pytest.MonkeyPatch, sim: RunningSimulator) -> RunningSimulator:
    """The environment a program importing batch would have: key, base URL, endpoint."""
    for name, value in env_for(sim).items():
        monkeypatch.setenv(name, value)
    return sim


def generate_tasks(count: int) -> list[dict[str, object]]:
    return [{"kind": "generate", "id": f"t{i:02d}", "prompt": f"picture {i}"} for i in range(count)]


def test_public_names_are_listed_and_all_resolve() -> None:
    assert sorted(batch.__all__) == sorted(["__version__", *batch._EXPORTS]) and len(
        set(batch.__all__)
    ) == len(batch.__all__)
    for name in batch.__all__:
        value = getattr(batch, name)
        assert value is not None
        if name != "__version__" and name != "Event":
            assert value.__doc__, f"batch.{name} has no docstring"
    assert callable(batch.run) and callable(batch.stream) and callable(batch.from_tasks)
    with pytest.raises(AttributeError):
        _ = batch.no_such_name  # type: ignore[attr-defined]
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## From Python")
    section = readme[start : readme.index("\n## ", start + 1)]
    missing = [
        n
        for n in batch.__all__
        if n != "__version__" and f"`{n}" not in section and f"batch.{n}" not in section
    ]
    assert not missing, f"not documented in the README's 'From Python': {missing}"


def test_import_batch_stays_light() -> None:
    code = "import sys, batch; print(sorted(m for m in ('aiohttp', 'PIL', 'batch.api') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_run_a_manifest_file_then_the_cli_finds_nothing_left(
    api_env: RunningSimulator, cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = batch.run(ROOT / "examples" / "quickstart.yaml", out, concurrency=3)
    assert (summary.succeeded, summary.failed, summary.exit_code) == (7, 0, 0)
    assert summary.cost > 0 and summary.total_tokens == api_env.state.billed_total_tokens
    assert len(results(out)) == 7 and len(ledger(out)) == 7
    assert (out / "index.html").is_file()
    sent = api_env.state.requests_total
    again = cli("run", ROOT / "examples" / "quickstart.yaml", "--out", out, env=env_for(api_env))
    assert again.code == 0 and "7 already done" in again.out
    assert api_env.state.requests_total == sent


def test_stream_yields_each_result_as_it_is_saved(api_env: RunningSimulator, tmp_path: Path) -> None:
    make_image(tmp_path / "cat.png")
    tasks = batch.from_tasks(
        [
            *generate_tasks(5),
            {
                "kind": "chat",
                "id": "cat",
                "model": "gemini-2.5-flash",
                "prompt": "what is it?",
                "images": ["cat.png"],
                "meta": {"row": 7},
            },
            {"kind": "generate", "id": "refused", "prompt": "something forbidden"},
        ],
        defaults={"size": "1024x1024", "quality": "low"},
        folder=tmp_path,
    )
    out = tmp_path / "out"
    seen: list[batch.Result] = []

    async def consume() -> batch.RunSummary:
        stream = batch.stream(tasks, out, concurrency=2)
        async for result in stream:
            # each result is already in results.jsonl when it arrives
            assert result.id in results(out)
            seen.append(result)
        return stream.summary

    summary = asyncio.run(consume())
    assert sorted(r.id for r in seen) == sorted([f"t{i:02d}" for i in range(5)] + ["cat", "refused"])
    by_id = {r.id: r for r in seen}
    assert all(f.is_absolute() and f.is_file() for r in seen for f in r.files)
    assert by_id["t00"].succeeded and by_id["t00"].files == (out / "images" / "t00.png",)
    assert by_id["cat"].text and by_id["cat"].meta == {"row": 7} and by_id["cat"].cost
    assert not by_id["refused"].succeeded and by_id["refused"].error["type"] == "moderation_blocked"  # type: ignore[index]
    assert by_id["t01"].record == results(out)["t01"]
    assert (summary.succeeded, summary.failed, summary.exit_code) == (6, 1, 1)
    # the same tasks again: nothing is sent, nothing is yielded
    sent = api_env.state.requests_total

    async def again() -> list[batch.Result]:
        return [r async for r in batch.stream(tasks, out)]

    assert asyncio.run(again()) == [] and api_env.state.requests_total == sent


def test_tasks_in_code_are_validated_whole_before_anything_is_sent(
    api_env: RunningSimulator, tmp_path: Path
) -> None:
    tasks = batch.from_tasks(
        [
            {"kind": "generate", "prompt": "fine"},
            {"kind": "generate", "prompt": "x", "size": "999x999"},
            {"kind": "chat", "model": "gemini-2.5-flash"},
            {"kind": "paint", "prompt": "y"},
        ],
        name="my-tasks",
    )
    with pytest.raises(batch.ManifestError) as raised:
        batch.stream(tasks, tmp_path / "out")
    problems = [str(p) for p in raised.value.problems]
    assert len(problems) == 3, problems
    assert any(p.startswith("my-tasks: tasks[1]") and "size" in p for p in problems)
    assert any("tasks[2]" in p for p in problems) and any("tasks[3]" in p and "paint" in p for p in problems)
    assert "tasks[1]" in str(raised.value)  # the message itself lists them
    assert api_env.state.requests_total == 0 and not (tmp_path / "out").exists()
    checked = batch.validate(batch.from_tasks(generate_tasks(3)))
    assert checked.plan.total == 3


def test_budget_and_options_are_the_clis(api_env: RunningSimulator, tmp_path: Path) -> None:
    tasks = batch.from_tasks(
        generate_tasks(10), defaults={"model": "gpt-image-1", "size": "1024x1024", "quality": "low"}
    )
    out = tmp_path / "out"
    one = (2 * 5 + 272 * 40) / 1e6  # "picture N" is two tokens of text
    summary = batch.run(tasks, out, max_cost=3.5 * one)
    assert summary.exit_code == 3 and summary.succeeded == 3 and "budget" in (summary.stop_reason or "")
    assert batch.run(tasks, out, max_cost=1).succeeded == 7
    with pytest.raises(TypeError):
        batch.run(tasks, out, max_kost=1)  # a misspelt option is an error, not ignored
    with pytest.raises(batch.UsageError, match="deadline"):
        batch.run(tasks, out, deadline="7am")


def test_leaving_a_stream_early_stops_the_run_and_leaves_it_resumable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = batch.from_tasks(generate_tasks(40))
    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY, latency=0.05)) as sim:
        for name, value in env_for(sim).items():
            monkeypatch.setenv(name, value)

        async def first_three() -> batch.ResultStream:
            stream = batch.stream(tasks, out, concurrency=2)
            async with stream:
                async for result in stream:
                    if len(results(out)) >= 3:
                        break
                    assert result.succeeded
            return stream

        stream = asyncio.run(first_three())
        summary = stream.summary
        assert summary.exit_code == 75 and "stopped reading" in (summary.stop_reason or "")
        done = results(out)
        assert 3 <= len(done) < 40 and all(r["status"] == "succeeded" for r in done.values())
        sent = sim.state.requests_total
        assert sent == len(done)  # in-flight requests were let finish and were saved
        rest = batch.run(tasks, out, concurrency=8)
        assert rest.exit_code == 0 and rest.finished_before == len(done) and rest.succeeded == 40 - len(done)
        assert sim.state.requests_total == 40


def test_without_a_key_the_run_refuses_and_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAAS_API_KEY", raising=False)
    monkeypatch.setenv("MAAS_ENDPOINT", "ep")
    with pytest.raises(batch.ConfigError, match="MAAS_API_KEY"):
        batch.run(batch.from_tasks(generate_tasks(1)), tmp_path / "out")


def test_a_locked_directory_is_an_error_of_the_call(api_env: RunningSimulator, tmp_path: Path) -> None:
    from batch.output.lock import acquire

    out = tmp_path / "out"
    out.mkdir()
    lock = acquire(out)
    try:
        with pytest.raises(batch.DirLockedError):
            batch.run(batch.from_tasks(generate_tasks(1)), out)
    finally:
        os.close(lock)
    assert api_env.state.requests_total == 0


def test_run_works_from_inside_an_event_loop(api_env: RunningSimulator, tmp_path: Path) -> None:
    async def inside() -> batch.RunSummary:
        return batch.run(batch.from_tasks(generate_tasks(2)), tmp_path / "out")

    assert asyncio.run(inside()).succeeded == 2


def test_a_run_leaves_anyios_default_thread_limiter_alone(api_env: RunningSimulator, tmp_path: Path) -> None:
    import anyio.to_thread

    seen: list[float] = []

    def on_event(event: batch.Event) -> None:  # called in the run's thread, inside its event loop
        if isinstance(event, batch.TaskFinished):
            seen.append(anyio.to_thread.current_default_thread_limiter().total_tokens)

    summary = batch.run(
        batch.from_tasks(generate_tasks(2)), tmp_path / "out", concurrency=64, on_event=on_event
    )
    assert summary.succeeded == 2
    assert seen == [40, 40]  # anyio's default: the run's blocking work has a limiter of its own


@pytest.fixture
def no_maas_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("MAAS_API_KEY", "MAAS_BASE_URL", "MAAS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    yield


def test_the_library_example_runs_and_resumes(no_maas_env: None, tmp_path: Path) -> None:
    out = tmp_path / "labels"
    command = [sys.executable, str(ROOT / "examples" / "library.py"), str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")} | {"PYTHONPATH": str(ROOT)}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    assert (
        "3 labels: 3 labeled now, 0 before" in first.stdout
        and "again: 3 already done, 0 sent; exit code 0" in first.stdout
        and "recorded: MUG-001, LAMP-014, CHAIR-203" in first.stdout  # the manifest's order
    )
    records = results(out)
    assert sorted(records) == ["CHAIR-203", "LAMP-014", "MUG-001"]
    assert records["MUG-001"]["meta"] == {"title": "Blue ceramic mug 350 ml"}
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    # resumed, the pipeline still gets every label: the finished ones come first
    assert second.returncode == 0 and "3 labels: 0 labeled now, 3 before" in second.stdout
    assert second.stdout.count("-> ") == 3
    assert json.loads((out / "results.jsonl").read_text().splitlines()[0])["id"] in records


def test_results_yields_every_recorded_result_in_manifest_order_without_orphans(
    api_env: RunningSimulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = batch.from_tasks(
        [*generate_tasks(4), {"kind": "generate", "id": "refused", "prompt": "forbidden"}]
    )
    batch.run(first, out, concurrency=4)
    written = [json.loads(line)["id"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r.id for r in batch.results(out)] == written  # without a manifest: as written
    # a later manifest: t02 dropped, the order changed, t09 new (not run yet: no result)
    later = batch.from_tasks(
        [generate_tasks(4)[i] for i in (3, 0, 1)]
        + [{"kind": "generate", "id": "t09", "prompt": "new"}]
        + [{"kind": "generate", "id": "refused", "prompt": "forbidden"}]
    )
    found = list(batch.results(out, later))
    assert [r.id for r in found] == ["t03", "t00", "t01", "refused"]
    assert found[0].succeeded and found[0].files == (out / "images" / "t03.png",)
    assert not found[-1].succeeded and found[-1].error is not None
    assert (
        batch.results(tmp_path / "empty", later) is not None and list(batch.results(tmp_path / "empty")) == []
    )


def test_stream_with_include_finished_yields_the_whole_set_on_resume(
    api_env: RunningSimulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    batch.run(batch.from_tasks(generate_tasks(3)), out)
    sent = api_env.state.requests_total
    tasks = batch.from_tasks(generate_tasks(5))

    async def consume(**options: object) -> list[str]:
        return [r.id async for r in batch.stream(tasks, out, **options)]  # type: ignore[arg-type]

    got = asyncio.run(consume(include_finished=True))
    assert got[:3] == ["t00", "t01", "t02"] and sorted(got[3:]) == ["t03", "t04"]
    assert api_env.state.requests_total == sent + 2, "the finished ones are read, not sent"
    assert asyncio.run(consume()) == [], "without it: only what finishes in this call"
    assert asyncio.run(consume(include_finished=True)) == [f"t{i:02d}" for i in range(5)]


INTERRUPTED = """
import sys
import batch

tasks = batch.from_tasks([{"kind": "generate", "id": f"t{i:02d}", "prompt": f"p {i}"} for i in range(40)])
try:
    batch.run(tasks, sys.argv[1], concurrency=2)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
print("finished")
"""


def test_ctrl_c_in_run_lets_the_requests_in_flight_finish_then_raises(tmp_path: Path) -> None:
    import signal
    import time

    out = tmp_path / "out"
    script = tmp_path / "night.py"
    script.write_text(INTERRUPTED)
    with simulator_in_thread(SimConfig(api_key=KEY, latency=0.3)) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
        env |= env_for(sim) | {"PYTHONPATH": str(ROOT)}
        process = subprocess.Popen(
            [sys.executable, str(script), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # as a program started from a terminal: a suite run in the background (`.ci/run &`) passes on
            # SIGINT ignored, and Python then installs no KeyboardInterrupt for it
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 60
            while sim.state.requests_total == 0:  # the run has started sending
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
        assert process.returncode == 130, stderr.decode()
        assert stdout.decode().strip() == "interrupted"
        done = results(out)
        # every request sent was let finish and was saved; nothing more was sent
        assert 0 < len(done) == sim.state.requests_total < 40
        assert all(r["status"] == "succeeded" for r in done.values())


def test_a_relative_out_gives_absolute_files(
    api_env: RunningSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    seen: list[batch.Result] = []
    summary = batch.run(batch.from_tasks(generate_tasks(3)), "out", on_result=seen.append)
    assert summary.succeeded == 3 and len(seen) == 3
    for result in seen:
        assert result.files and all(f.is_absolute() for f in result.files)
        assert all(f.parent == tmp_path / "out" / "images" and f.is_file() for f in result.files)


def test_a_callback_that_raises_stops_the_run_and_its_error_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Full(Exception):
        pass

    def on_result(result: batch.Result) -> None:
        raise Full(f"no room for {result.id}")

    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY, latency=0.05)) as sim:
        for name, value in env_for(sim).items():
            monkeypatch.setenv(name, value)
        with pytest.raises(Full, match="no room for t"):
            batch.run(batch.from_tasks(generate_tasks(30)), out, concurrency=2, on_result=on_result)
        done = results(out)
        assert 0 < len(done) == sim.state.requests_total < 30  # stopped; in-flight ones were saved


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("max_cost", float("nan"), "max_cost"),
        ("max_cost", -1, "max_cost"),
        ("concurrency", 0, "concurrency"),
        ("concurrency", "many", "concurrency"),
        ("max_attempts", 1.5, "max_attempts"),
        ("rpm", True, "rpm"),
    ],
)
def test_bad_options_are_usage_errors_before_anything_starts(
    tmp_path: Path, option: str, value: object, named: str
) -> None:
    with pytest.raises(batch.UsageError, match=named):
        batch.run(batch.from_tasks(generate_tasks(1)), tmp_path / "out", **{option: value})
    assert not (tmp_path / "out").exists()


def test_heartbeats_of_a_retry_count_only_the_failed_tasks_as_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    first = generate_tasks(12)
    beats: list[batch.Heartbeat] = []

    def observe(event: batch.Event) -> None:
        if isinstance(event, batch.Heartbeat):
            beats.append(event)

    def use(sim: RunningSimulator) -> None:
        for name, value in env_for(sim).items():
            monkeypatch.setenv(name, value)

    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        use(sim)
        assert batch.run(batch.from_tasks(first[:10]), out).succeeded == 10
    with simulator_in_thread(SimConfig(api_key=KEY, error_rate=1.0, retry_after=0)) as sim:
        use(sim)
        assert batch.run(batch.from_tasks(first), out, max_attempts=1).failed == 2
    grown = [*first, *({"kind": "generate", "id": f"new-{i}", "prompt": f"more {i}"} for i in range(20))]
    with simulator_in_thread(SimConfig(api_key=KEY, latency=0.3)) as sim:
        use(sim)
        summary = batch.run(batch.from_tasks(grown), out, retry_failed=True, heartbeat=0.02, on_event=observe)
        assert (summary.succeeded, summary.left_alone, summary.not_run) == (2, 20, 0)
        assert sim.state.requests_total == 2
    assert beats and all(beat.left <= 2 for beat in beats), [b.left for b in beats]


def test_a_raising_callback_gives_the_requests_in_flight_grace_then_cancels_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def on_result(result: batch.Result) -> None:
        raise RuntimeError("stop here")

    out = tmp_path / "out"
    # answers spread over 0-4 s: when the first arrives, the others are still on their way
    config = SimConfig(api_key=KEY, latency=2.0, latency_jitter=1.0, seed=3)
    with simulator_in_thread(config) as sim:
        for name, value in env_for(sim).items():
            monkeypatch.setenv(name, value)
        with pytest.raises(RuntimeError, match="stop here"):
            batch.run(batch.from_tasks(generate_tasks(8)), out, concurrency=8, grace=0, on_result=on_result)
        assert 1 <= len(results(out)) < sim.state.requests_total == 8


@pytest.mark.parametrize("url", ["s3://bucket/x", "gs://bucket/x", "az://container/x"])
def test_an_output_on_a_store_is_refused_not_written_to_a_folder_named_after_it(
    api_env: RunningSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """Path("s3://bucket/x") is a folder `s3:` in the current directory: a run went there, exit 0."""
    monkeypatch.chdir(tmp_path)
    tasks = batch.from_tasks(generate_tasks(1))
    for call in (
        lambda: batch.run(tasks, url),
        lambda: batch.stream(tasks, url),
        lambda: list(batch.results(url)),
    ):
        with pytest.raises(batch.UsageError, match="an output on a store is the command line's"):
            call()
    assert not any(tmp_path.iterdir()) and api_env.state.requests_total == 0
    summary = batch.run(tasks, f"file://{tmp_path / 'local'}")  # fsspec's form of a local path
    assert summary.exit_code == 0 and (tmp_path / "local" / "results.jsonl").is_file()


def test_results_without_a_manifest_still_refuses_a_misspelt_option(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        list(batch.results(tmp_path, simulat=True))  # type: ignore[call-arg]
    with pytest.raises(batch.UsageError):
        list(batch.results(tmp_path, concurrency="x"))  # type: ignore[arg-type]


def test_every_event_a_run_sends_is_a_public_name(api_env: RunningSimulator, tmp_path: Path) -> None:
    seen: set[type] = set()
    batch.run(batch.from_tasks(generate_tasks(2)), tmp_path / "out", on_event=lambda e: seen.add(type(e)))
    assert batch.TaskStarted in seen
    assert {getattr(batch, kind.__name__) for kind in seen} == seen


def test_a_kind_that_is_not_a_task_kind_instance_is_a_usage_error(tmp_path: Path) -> None:
    """kinds=[MyKind] (the class) failed deep in the run with a TypeError of normalize()."""
    from batch.kind import TaskKind

    class Mine(TaskKind):
        name = "mine"

    tasks = batch.from_tasks(generate_tasks(1))
    for wrong in (Mine, "chat"):
        with pytest.raises(batch.UsageError, match="is not a task kind; give instances"):
            batch.validate(tasks, kinds=[wrong])  # type: ignore[list-item]


def test_validate_refuses_the_settings_run_refuses(api_env: RunningSimulator, tmp_path: Path) -> None:
    """`checks a whole manifest as run would`: prices with a mistake, a budget with an unpriced model and
    a deadline it cannot read passed validate, then run refused them."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpt-image-1: {foo: 1}\n")
    tasks = batch.from_tasks(generate_tasks(1))
    unpriced = batch.from_tasks([{"kind": "chat", "model": "my-house-model", "prompt": "q"}])
    for call, error in (
        (lambda: batch.validate(tasks, prices=bad), batch.ManifestError),
        (lambda: batch.validate(tasks, prices=tmp_path / "none.yaml"), batch.ManifestError),
        (lambda: batch.validate(unpriced, max_cost=1, allow_unknown=True), batch.ConfigError),
        (lambda: batch.validate(tasks, deadline="7am"), batch.UsageError),
    ):
        with pytest.raises(error):
            call()
    priced = batch.from_tasks([{"kind": "generate", "model": "gpt-image-1", "prompt": "a fox"}])
    assert batch.validate(priced, max_cost=1, deadline="23:59").plan.total == 1
    assert api_env.state.requests_total == 0


def test_overrides_take_sets_kind_dot_field_form(tmp_path: Path) -> None:
    """`overrides` (like --set): {"chat.temperature": 0} was 'not a field of any task kind'."""
    tasks = batch.from_tasks([{"kind": "chat", "model": "gemini-2.5-flash", "prompt": "q"}])
    checked = batch.validate(tasks, overrides={"chat.temperature": 0.25}, endpoint="ep")
    [spec] = list(iter_tasks(checked.manifest, checked.builder))
    assert spec.fields["temperature"] == 0.25


def test_the_modules_the_readme_names_by_attribute_resolve_from_a_bare_import() -> None:
    code = "import batch; print(batch.kind.TaskKind.__name__, batch.events.TaskStarted.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["TaskKind", "TaskStarted"], done.stderr
