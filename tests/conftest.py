"""Shared fixtures: manifests and images written into a temporary folder."""

from __future__ import annotations

import errno
import inspect
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from batch.jobs import registry
from PIL import Image

from batch.cli import main
from batch.manifest.checked import CheckedManifest, check
from batch.manifest.tasks import BuildSettings
from batch.simulator import RunningSimulator, SimConfig, simulator_in_thread


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_image(
    path: Path,
    size: tuple[int, int] = (64, 64),
    fmt: str = "PNG",
    mode: str = "RGB",
    color: tuple[int, ...] = (200, 40, 40),
) -> Path:
    """A small real image file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color[: len(mode)] if mode != "L" else color[0]).save(path, fmt)
    return path


def make_mask(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    """A PNG mask with an alpha channel: opaque, with a fully transparent square to edit."""
    image = Image.new("RGBA", size, (0, 0, 0, 255))
    image.paste((0, 0, 0, 0), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "PNG")
    return path


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """Write a (dedented) text file under tmp_path and return its path."""

    def _write(text: str, name: str = "job.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write


def checked(path: Path, *, env_endpoint: str | None = "ep", **overrides: object) -> CheckedManifest:
    """Load and validate a manifest the way `run` does."""
    return check(path, BuildSettings(overrides=overrides, env_endpoint=env_endpoint), registry())


def messages(result: CheckedManifest) -> list[str]:
    return [str(problem) for problem in result.plan.problems]


KEY = "sk-test-canary-4f1c9e"
FAST = ["--backoff", "0", "--backoff-max", "0"]


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    with simulator_in_thread(SimConfig(api_key=KEY, retry_after=0)) as running:
        yield running


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Outcome]:
    """Run `maas-batch ARGS` in this process with the given environment (and nothing else of ours)."""

    def run(*args: str, env: dict[str, str] | None = None) -> Outcome:
        for name in ("MAAS_API_KEY", "MAAS_BASE_URL", "MAAS_ENDPOINT"):
            monkeypatch.delenv(name, raising=False)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


# Files of long tests that collect last (the top level's): run first, so that neither of pytest-xdist's
# workers is left alone at the end with mypy's 6 s (more on a clean clone) while the other waits.
FIRST = ("tests/test_lint.py", "tests/test_bench_peers.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.nodeid.partition("::")[0] not in FIRST)  # stable: the rest as they were


def env_for(sim: RunningSimulator, **extra: str) -> dict[str, str]:
    return {"MAAS_API_KEY": KEY, "MAAS_BASE_URL": sim.base_url, "MAAS_ENDPOINT": "ep-default", **extra}


def measured_apart(measure: Callable[[], int]) -> int:
    """`measure()`, a module-level function of a test module that returns bytes counted with tracemalloc,
    run in a Python process of its own. tracemalloc counts every thread's allocations, and a pytest worker
    may hold a thread an earlier test left to end: one such measurement once came out 146 KB over."""
    root = Path(__file__).resolve().parents[1]
    module = ".".join(Path(inspect.getfile(measure)).resolve().relative_to(root).with_suffix("").parts)
    code = "import importlib, sys; m, f = sys.argv[1:]; print(getattr(importlib.import_module(m), f)())"
    done = subprocess.run(
        [sys.executable, "-c", code, module, measure.__qualname__],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=root,
        check=True,
    )
    return int(done.stdout)


class FailingReads:
    """An open file whose reads fail as a failing disk's do (EIO), after its first `good` lines."""

    def __init__(self, handle: BinaryIO, good: int = 0) -> None:
        self.handle, self.good = handle, good

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def __enter__(self) -> FailingReads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def read(self, size: int = -1) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    def readline(self, size: int = -1) -> bytes:
        if self.good <= 0:
            raise OSError(errno.EIO, "Input/output error")
        self.good -= 1
        return bytes(self.handle.readline(size))


def chat_lines(numbers: Iterable[int]) -> str:
    """JSONL chat tasks t<i> (`q <i>`), one a line, for each of `numbers`."""
    line = '{{"kind": "chat", "id": "t{0}", "model": "gemini-2.5-flash", "prompt": "q {0}"}}\n'
    return "".join(line.format(i) for i in numbers)


def results(out: Path) -> dict[str, dict[str, Any]]:
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert len({r["id"] for r in records}) == len(records), "one line per task"
    return {r["id"]: r for r in records}


def ledger(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "usage.jsonl").read_text(encoding="utf-8").splitlines()]


ROOT = Path(__file__).resolve().parents[1]


class Run:
    """The command in a subprocess, its stdout and stderr going to files that can be read as it runs."""

    def __init__(
        self, manifest: Path, out: Path | str, sim: RunningSimulator, *args: str, logs: Path | None = None
    ) -> None:
        """`out` a DIR, or a URL (then stdout and stderr go to files under `logs`)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
        env.update(MAAS_API_KEY=KEY, MAAS_BASE_URL=sim.base_url, MAAS_ENDPOINT="ep", PYTHONPATH=str(ROOT))
        folder, name = (out.parent, out.name) if isinstance(out, Path) else (logs or manifest.parent, "run")
        self.stdout = folder / f"{name}.{id(self)}.out"
        self.stderr = folder / f"{name}.{id(self)}.err"
        with self.stdout.open("w") as stdout, self.stderr.open("w") as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "batch",
                    "run",
                    str(manifest),
                    "--out",
                    str(out),
                    "--no-progress",
                    *args,
                ],
                env=env,
                stdout=stdout,
                stderr=stderr,
            )

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_for_log(self, text: str, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while text not in self.stderr.read_text():
            assert time.monotonic() < deadline, f"no {text!r} in: {self.stderr.read_text()}"
            assert self.process.poll() is None, self.stderr.read_text()
            time.sleep(0.01)

    def finish(self, within: float = 60) -> tuple[int, str, str]:
        code = self.process.wait(timeout=within)
        return code, self.stdout.read_text(), self.stderr.read_text()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)


from tests.azure_server import azure, azure_endpoint  # noqa: E402, F401  (fixtures: Azurite on loopback)
from tests.s3_server import S3, s3, s3_endpoint  # noqa: E402, F401  (fixtures: a moto S3 on loopback)


@pytest.fixture(params=["s3", "az"])
def store(request: pytest.FixtureRequest) -> S3:
    """An object store of the test's own, each kind supported: S3 (moto), then Azure Blob (Azurite)."""
    found: S3 = request.getfixturevalue("s3" if request.param == "s3" else "azure")
    return found
