"""Help and logs a person can use: each command's --help describes it with its own exit codes, and a log
file marks where each run starts."""

from __future__ import annotations

import gc
import os
import re
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.cli.grammar import build_parser
from batch.simulator import RunningSimulator
from tests.conftest import Outcome, env_for

Cli = Callable[..., Outcome]


def help_of(cli: Cli, *command: str) -> str:
    shown = cli(*command, "--help")
    assert shown.code == 0
    return shown.out


def exit_codes(text: str) -> set[int]:
    table = text.split("exit codes:", 1)[1]
    return {int(code) for code in re.findall(r"^  (\d+) ", table, re.MULTILINE)}


def test_every_command_has_a_description(cli: Cli) -> None:
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, parser in commands.items():
        assert parser.description, f"{name} --help has no description"


def test_validate_lists_its_own_exit_codes_not_runs(cli: Cli) -> None:
    shown = help_of(cli, "validate")
    assert exit_codes(shown) == {0, 64, 65, 74, 78}
    assert "budget" not in shown.split("exit codes:", 1)[1]
    assert {0, 1, 3, 4, 64, 65, 69, 74, 75, 77, 78} <= exit_codes(help_of(cli, "run"))


@pytest.mark.parametrize(
    ("command", "codes"),
    [
        ("status", {0, 64, 65, 74}),
        ("report", {0, 64, 65, 74}),
        ("export", {0, 64, 65, 74}),
        ("gallery", {0, 64, 65, 74, 75}),
    ],
)
def test_the_readers_of_a_directory_list_their_own_exit_codes(
    cli: Cli, command: str, codes: set[int]
) -> None:
    assert exit_codes(help_of(cli, command)) == codes


def test_simulate_on_a_port_in_use_is_a_usage_error_not_a_traceback(cli: Cli) -> None:
    assert exit_codes(help_of(cli, "simulate")) == {0, 64, 74}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        refused = cli("simulate", "--port", str(taken.getsockname()[1]))
    assert refused.code == 64
    assert "cannot listen on 127.0.0.1:" in refused.err and "Traceback" not in refused.err
    for bad in ("99999", "-5"):  # bind() would raise OverflowError: a traceback and 1
        outside = cli("simulate", "--port", bad)
        assert outside.code == 64 and "must be a port, 0 to 65535" in outside.err, outside.err
    # a key variable that is not set, and an empty host: a traceback and 1, or a server on ":PORT"
    for flags, says in (
        (("--api-key-env", "MAAS_TEST_UNSET_KEY"), "environment variable MAAS_TEST_UNSET_KEY is not set"),
        (("--forbidden-key-env", "MAAS_TEST_UNSET_KEY"), "MAAS_TEST_UNSET_KEY is not set"),
        (("--host", ""), "--host: give an address"),
    ):
        outcome = cli("simulate", "--port", "0", *flags, env={"MAAS_TEST_UNSET_KEY": ""})
        assert outcome.code == 64 and says in outcome.err and "Traceback" not in outcome.err, outcome.err


@pytest.mark.parametrize(
    "words",
    [
        ("run", "{manifest}", "--out", ""),
        ("run", "", "--out", "{out}"),
        ("run", "{manifest}", "--out", "{out}", "--log-file", ""),
        ("validate", "{manifest}", "--prices", ""),
        ("status", ""),
        ("export", "{out}", "--output", ""),
    ],
)
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(
    cli: Cli,
    write: Callable[..., Path],
    tmp_path: Path,
    words: tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--out "$UNSET"` wrote a run's results and page into whatever folder cron started in."""
    manifest = write("tasks:\n  - {kind: generate, prompt: a fox}\n")
    monkeypatch.chdir(tmp_path)  # where the code before wrote
    argv = [word.format(manifest=manifest, out=tmp_path / "out") for word in words]
    outcome = cli(*argv, "--simulate") if words[0] in ("run", "validate") else cli(*argv)
    assert outcome.code == 64 and "an empty path" in outcome.err, outcome.err
    assert not (tmp_path / "results.jsonl").exists()


@pytest.mark.parametrize("quiet", [False, True])
def test_a_log_file_marks_each_runs_start_with_manifest_directory_and_pid(
    cli: Cli, write: Callable[..., Path], tmp_path: Path, sim: RunningSimulator, quiet: bool
) -> None:
    manifest = write("tasks:\n  - {kind: generate, prompt: a fox}\n")
    log = tmp_path / "runs" / "night.log"  # as the README's cron line: a folder no run has made yet
    flags = ["--quiet"] if quiet else []
    for _ in range(2):
        done = cli("run", manifest, "--out", tmp_path / "out", "--log-file", log, *flags, env=env_for(sim))
        assert done.code == 0
    starts = [line for line in log.read_text().splitlines() if " run: manifest " in line]
    assert len(starts) == 2, log.read_text()
    assert re.search(
        rf"INFO maas-batch \S+ run: manifest {manifest}, directory {tmp_path / 'out'}, pid \d+$", starts[0]
    )


@pytest.mark.parametrize("display", [["--quiet"], ["--progress"], ["--no-progress"]])
def test_a_failure_is_a_warning_on_stderr_and_in_the_log_file_whatever_the_display(
    cli: Cli, write: Callable[..., Path], tmp_path: Path, sim: RunningSimulator, display: list[str]
) -> None:
    """--quiet (\"only warnings and the summary\") dropped the failures' warnings, and the log file's INFO
    lines; a bar wrote its failure lines to stdout, and none reached the log file."""
    manifest = write(
        "tasks:\n  - {kind: generate, id: ok, prompt: a fox}\n  - {kind: generate, id: nope, prompt: forbidden}\n"
    )
    log = tmp_path / "night.log"
    done = cli("run", manifest, "--out", tmp_path / "out", "--log-file", log, *display, env=env_for(sim))
    assert done.code == 1
    failed = "generate nope failed"
    assert failed in log.read_text() and "2 tasks: 0 already finished, 2 to run" in log.read_text()
    if display == ["--progress"]:
        assert "failed nope:" in done.err and failed not in done.err  # the bar's own line, on stderr
    else:
        assert failed in done.err
    assert "failed nope" not in done.out  # stdout: the summary only
    if display == ["--quiet"]:
        assert "INFO" not in done.err


def test_a_log_file_on_a_full_disk_is_said_once_not_a_traceback_a_line(
    cli: Cli, write: Callable[..., Path], tmp_path: Path, sim: RunningSimulator
) -> None:
    """The cron recipe's --log-file on a full disk: the stdlib's FileHandler printed "--- Logging error
    ---" and a traceback for every line; the run itself is not the log's to fail."""
    manifest = write("tasks:\n" + "".join(f"  - {{kind: generate, prompt: fox {i}}}\n" for i in range(3)))
    done = cli("run", manifest, "--out", tmp_path / "out", "--log-file", "/dev/full", env=env_for(sim))
    assert done.code == 0
    assert done.err.count("cannot write the log file /dev/full: No space left on device") == 1, done.err
    assert "Traceback" not in done.err and "Logging error" not in done.err
    # and a program that calls main again: the failed file's handler closes without raising
    assert cli("validate", manifest, "--simulate").code == 0


def test_a_flag_with_nothing_to_act_on_is_said(
    cli: Cli, write: Callable[..., Path], tmp_path: Path, sim: RunningSimulator
) -> None:
    """--stage with a local --out, --max-concurrency without --concurrency auto: accepted, then ignored."""
    manifest = write("tasks:\n  - {kind: generate, prompt: a fox}\n")
    stage = tmp_path / "stage"
    done = cli(
        "run",
        manifest,
        "--out",
        tmp_path / "out",
        "--stage",
        stage,
        "--max-concurrency",
        "8",
        env=env_for(sim),
    )
    assert done.code == 0
    assert "--stage is for an --out on a store" in done.err
    assert "--max-concurrency is the ceiling of --concurrency auto" in done.err
    assert not stage.exists()
    quiet = cli(
        "run", manifest, "--out", tmp_path / "auto", "-c", "auto", "--max-concurrency", "8", env=env_for(sim)
    )
    assert quiet.code == 0 and "--max-concurrency" not in quiet.err


def test_two_flags_that_contradict_each_other_are_said(
    cli: Cli, write: Callable[..., Path], tmp_path: Path, sim: RunningSimulator
) -> None:
    """--quiet with --verbose, --no-fsync with --sync-interval 0: one of each pair wins, now with a word."""
    manifest = write("tasks:\n  - {kind: generate, prompt: a fox}\n")
    out = tmp_path / "out"
    both = cli(
        "run", manifest, "--out", out, "-q", "-v", "--no-fsync", "--sync-interval", "0", env=env_for(sim)
    )
    assert both.code == 0, both.err
    assert "--quiet and --verbose were both given: --verbose wins" in both.err
    assert "no line is fsync'd" in both.err
    alone = cli("run", manifest, "--out", tmp_path / "alone", "-v", "--sync-interval", "0", env=env_for(sim))
    assert alone.code == 0 and "wins" not in alone.err and "fsync'd" not in alone.err


def test_a_log_line_that_cannot_be_encoded_does_not_stop_the_log_file(tmp_path: Path) -> None:
    """A surrogate in a line (a file name that is not UTF-8) made --log-file's handler stop writing the
    file, as if the disk were full: it is written with a backslash, and the next lines too."""
    import argparse
    import logging

    from batch.cli import configure_logging

    path = tmp_path / "night.log"
    configure_logging(argparse.Namespace(log_file=path, quiet=True, verbose=False))
    try:
        logging.getLogger("batch.cli").info("manifest /data/caf\udce9.yaml")
        logging.getLogger("batch.cli").info("the next line")
    finally:
        for handler in logging.getLogger("batch").handlers:
            handler.close()
        logging.getLogger("batch").handlers.clear()
    lines = [line.split(" INFO ", 1)[1] for line in path.read_text().splitlines()]
    assert lines == ["manifest /data/caf\\udce9.yaml", "the next line"]


HEAVY = ("aiohttp", "PIL", "yaml", "redis", "dramatiq", "tqdm", "batch.running.job", "batch.cluster.queue")


@pytest.mark.parametrize("command", [[], ["run"], ["validate"], ["submit"], ["worker"], ["status"]])
def test_help_imports_none_of_the_heavy_modules(command: list[str]) -> None:
    """`maas-batch --help` (and each command's) starts fast: no HTTP stack, no image library, no queue."""
    code = (
        "import sys\nfrom batch.cli import main\ntry:\n    main([*sys.argv[1:], '--help'])\n"
        "except SystemExit:\n    pass\n"
        f"print('loaded:', sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "loaded: []"


def test_the_command_list_loads_only_the_grammar() -> None:
    """`maas-batch --help` builds no command's parser and loads neither the error tree nor logging."""
    code = (
        "import sys\nfrom batch.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('loaded:', sorted(m for m in sys.modules if m.startswith('batch.') or m in "
        "('dataclasses', 'logging', 'batch.cli.cluster')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = done.stdout.strip().splitlines()[-1]
    assert (
        loaded
        == "loaded: ['batch.cli', 'batch.cli.flags', 'batch.cli.grammar', 'batch.defaults', 'batch.exitcodes']"
    )


def test_a_jsonl_manifest_is_read_without_pyyaml(tmp_path: Path) -> None:
    """PyYAML is for YAML manifests, --prices files and --set values: a JSONL manifest starts without it."""
    manifest = tmp_path / "tasks.jsonl"
    manifest.write_text('{"kind": "generate", "prompt": "a fox"}\n', encoding="utf-8")
    code = (
        "import sys\nfrom batch.cli import main\n"
        "code = main(['validate', sys.argv[1], '--simulate'])\n"
        "print('exit', code, 'yaml' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(manifest)], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "exit 0 False"


def test_validate_loads_no_http_stack(write: Callable[..., Path]) -> None:
    """`validate` sends nothing: it does without aiohttp (whose import builds TLS contexts) and the engine."""
    manifest = write("tasks:\n  - {kind: generate, prompt: a fox}\n")
    code = (
        "import sys\nfrom batch.cli import main\ntry:\n    main(['validate', sys.argv[1], '--simulate'])\n"
        "except SystemExit:\n    pass\n"
        "print('loaded:', sorted(m for m in ('aiohttp', 'batch.running.job') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(manifest)], capture_output=True, text=True, check=True
    )
    assert "1 tasks, valid" in done.stdout or "1 task" in done.stdout, done.stdout
    assert done.stdout.strip().splitlines()[-1] == "loaded: []"


def test_a_run_without_redis_loads_no_redis_client(write: Callable[..., Path], tmp_path: Path) -> None:
    """redis and pyrate-limiter are for a run that shares its limits (--redis): others start without them."""
    manifest = write("tasks:\n  - {kind: generate, prompt: a fox}\n")
    code = (
        "import sys\nfrom batch.cli import main\n"
        "code = main(['run', sys.argv[1], '--out', sys.argv[2], '--simulate', '--no-progress', '--quiet'])\n"
        "print('exit', code, 'loaded:', sorted(m for m in ('redis', 'pyrate_limiter', 'dramatiq') if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    done = subprocess.run(
        [sys.executable, "-c", code, str(manifest), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "exit 0 loaded: []", done.stdout + done.stderr


def test_a_chat_run_without_a_terminal_loads_neither_pillow_nor_tqdm(
    sim: RunningSimulator, write: Callable[..., Path], tmp_path: Path
) -> None:
    """Pillow is for images (answers, inputs, thumbnails) and tqdm for a terminal's bar: a chat run under
    cron starts without either, and still writes its page."""
    manifest = write("tasks:\n  - {kind: chat, model: gemini-2.5-flash, prompt: hello}\n")
    code = (
        "import sys\nfrom batch.cli import main\n"
        "code = main(['run', sys.argv[1], '--out', sys.argv[2]])\n"
        "print('exit', code, 'loaded:', sorted(m for m in ('PIL', 'tqdm') if m in sys.modules))"
    )
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}, **env_for(sim)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(manifest), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    assert done.stdout.strip().splitlines()[-1] == "exit 0 loaded: []", done.stdout + done.stderr
    assert (tmp_path / "out" / "index.html").is_file()


COMMANDS = (
    "run",
    "validate",
    "status",
    "report",
    "export",
    "gallery",
    "retry-failed",
    "simulate",
    "submit",
    "worker",
)
RUN_FLAGS = [
    "--allow-unknown",
    "--backoff",
    "--backoff-max",
    "--concurrency",
    "-c",
    "--deadline",
    "--dry-run",
    "--endpoint",
    "--grace",
    "--help",
    "--log-every",
    "--log-file",
    "--max-answer-mb",
    "--max-attempts",
    "--max-concurrency",
    "--max-cost",
    "--max-duration",
    "--max-tokens",
    "--no-fsync",
    "--no-gallery",
    "--no-progress",
    "--out",
    "-o",
    "--outage-limit",
    "--prices",
    "--progress",
    "--quiet",
    "-q",
    "--redis",
    "--retry-failed",
    "--rpm",
    "--set",
    "--simulate",
    "--stage",
    "--sync-interval",
    "--task-deadline",
    "--timeout",
    "--tpm",
    "--verbose",
    "-v",
]


def test_the_command_list_names_every_command_though_their_parsers_are_built_on_use(cli: Cli) -> None:
    shown = help_of(cli)
    listed = re.findall(r"^    (\S+)", shown.split("COMMAND\n", 1)[1].split("\n\n", 1)[0], re.MULTILINE)
    assert tuple(listed) == COMMANDS
    for name in COMMANDS:  # each command's own help is there too, with its usage line
        assert help_of(cli, name).startswith(f"usage: maas-batch {name} ")


def test_run_help_still_has_every_flag(cli: Cli) -> None:
    shown = help_of(cli, "run")
    for flag in RUN_FLAGS:
        assert re.search(rf"(^|[\s\[,]){flag}[\s,\]]", shown), flag


@pytest.mark.parametrize("command", ["run", "validate", "status", "export", "simulate", "worker"])
def test_a_lazily_built_parser_refuses_an_unknown_flag_with_64(cli: Cli, command: str) -> None:
    given = {"run": ["m.yaml", "--out", "o"], "validate": ["m.yaml"], "status": ["o"], "export": ["o"]}
    refused = cli(command, *given.get(command, []), "--no-such-flag")
    assert refused.code == 64
    assert "maas-batch: error: unrecognized arguments: --no-such-flag" in refused.err


def test_an_unknown_command_is_refused_with_64_and_the_list_of_commands(cli: Cli) -> None:
    refused = cli("frobnicate")
    assert refused.code == 64
    assert "invalid choice: 'frobnicate' (choose from " + ", ".join(f"'{c}'" for c in COMMANDS) in refused.err


def test_the_parsers_of_every_command_can_be_looked_up_and_listed() -> None:
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert tuple(commands) == COMMANDS
    assert [parser.prog for parser in commands.values()] == [f"maas-batch {c}" for c in COMMANDS]


# An atexit handler registered first runs last: after main, before the interpreter's shutdown.
EXIT_PROBE = (
    "import atexit, gc, sys\n"
    "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0, file=sys.stderr))\n"
)
ENTRIES = {
    "console script": "from batch.cli import command\ncommand()\n",
    "python -m batch": "import runpy\nrunpy.run_module('batch', run_name='__main__', alter_sys=True)\n",
}


@pytest.mark.parametrize("entry", ENTRIES.values(), ids=list(ENTRIES))
@pytest.mark.parametrize(("line", "expected"), [('{"prompt": "a fox"}', 0), ('{"prompt": 3}', 65)])
def test_the_command_ends_without_freeing_its_modules_one_by_one(
    entry: str, line: str, expected: int, tmp_path: Path
) -> None:
    """The command freezes what is alive before Python's shutdown, whose collections then skip freeing
    every module's objects (0.1 s after an aiohttp import); its exit code is still main's."""
    manifest = tmp_path / "tasks.jsonl"
    manifest.write_text(f'{{"kind": "chat", "model": "gemini-2.5-flash", {line[1:]}\n', encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", EXIT_PROBE + entry, "validate", str(manifest), "--simulate"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],  # this tree's batch, whatever another test left as the cwd
    )
    assert done.returncode == expected, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "frozen at exit: True"


def test_main_called_by_a_program_leaves_its_objects_collectable(
    cli: Cli, write: Callable[..., Path]
) -> None:
    """A program that calls main goes on after it: nothing is frozen there."""
    manifest = write('{"kind": "chat", "model": "gemini-2.5-flash", "prompt": "a fox"}\n', "tasks.jsonl")
    assert cli("validate", str(manifest), "--simulate").code == 0
    assert gc.get_freeze_count() == 0


def test_the_console_script_is_the_command_not_main() -> None:
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["scripts"]["maas-batch"] == "batch.cli:command"


def test_a_redis_url_that_is_not_one_or_a_bad_heartbeat_is_said_not_a_traceback(
    cli: Cli, write: Callable[..., Path], tmp_path: Path
) -> None:
    """The cluster commands gave a traceback (exit 1) for a --redis that is no Redis URL, and took a
    --heartbeat-timeout of nan (a traceback), 0 or -1 (1 ms: every other worker taken for dead). A --redis
    that is no Redis URL is a usage error, as argparse says it (64; it was refused at connection, 78)."""
    manifest = write("tasks:\n  - {kind: generate, prompt: a fox}\n")
    for argv in (
        ("worker", "--redis", "notaurl", "--burst"),
        ("submit", manifest, "--out", tmp_path / "out", "--redis", "notaurl"),
        ("worker", "--redis", "redis://me:secretpw@127.0.0.1:notaport/0", "--burst"),
        (
            "run",
            manifest,
            "--out",
            tmp_path / "run",
            "--simulate",
            "--redis",
            "redis://me:secretpw@h:notaport/0",
        ),
    ):
        outcome = cli(*argv)
        assert outcome.code == 64 and "argument --redis:" in outcome.err, outcome.err
        assert "Traceback" not in outcome.err and "secretpw" not in outcome.err
    for timeout in ("nan", "inf", "0", "-1"):
        outcome = cli("worker", "--redis", "redis://127.0.0.1:1/0", "--heartbeat-timeout", timeout)
        assert outcome.code == 64 and "must be a number of seconds more than 0" in outcome.err, outcome.err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--log-every", "inf"), "argument --log-every: must be 0 (never) or a number of seconds"),
        (("--endpoint", "=foo"), "needs the kind or model, not '=foo'"),
        (("--show", "-1"), "argument --show: must be 0 or more"),
    ],
)
def test_odd_values_name_their_own_flag(
    cli: Cli, write: Callable[..., Path], tmp_path: Path, flags: tuple[str, ...], says: str
) -> None:
    """--log-every inf was refused as '--heartbeat', --endpoint =foo named a blank key, --show -1 passed."""
    manifest = write("tasks:\n  - {kind: generate, prompt: a fox}\n")
    command = (
        ("run", manifest, "--out", tmp_path / "out") if flags[0] == "--log-every" else ("validate", manifest)
    )
    outcome = cli(*command, "--simulate", *flags)
    assert outcome.code == 64 and says in outcome.err, outcome.err


def test_a_prices_file_that_is_a_fifo_or_a_device_is_refused_not_read(
    cli: Cli, write: Callable[..., Path], tmp_path: Path
) -> None:
    """--prices FIFO blocked for ever; --prices /dev/zero filled memory until the system killed it."""
    manifest = write("tasks:\n  - {kind: generate, prompt: a fox}\n")
    fifo = tmp_path / "prices.fifo"
    os.mkfifo(fifo)
    for named in (fifo, Path("/dev/zero")):
        outcome = cli("validate", manifest, "--simulate", "--prices", named)
        assert outcome.code == 65 and f"{named}: cannot be read: is not a regular file" in outcome.err


def test_log_every_reaches_a_log_file_when_a_bar_shows(tmp_path: Path) -> None:
    """With a progress bar the status lines were off, a --log-file's too: a night's log had no line of
    progress, though `--log-every` was given for it."""
    from batch.cli.options import options_from

    def heartbeat(*flags: str) -> float:
        args = build_parser().parse_args(["run", "m.yaml", "--out", str(tmp_path / "out"), *flags])
        return options_from(args).heartbeat

    assert heartbeat("--progress", "--log-every", "5", "--log-file", str(tmp_path / "x.log")) == 5
    assert heartbeat("--progress", "--log-every", "5") == 0  # the bar alone: it shows the same
    assert heartbeat("--no-progress", "--log-every", "5") == 5
