"""Lint and types are part of the test command, so that style does not rot between changes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> list[str]:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return [found]


@pytest.mark.timeout(120)
def test_ruff_check() -> None:
    done = subprocess.run([*_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(120)
def test_ruff_format() -> None:
    done = subprocess.run(
        [*_tool("ruff"), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(240)
def test_mypy_strict() -> None:
    done = subprocess.run([*_tool("mypy")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_python_without_a_requirement_is_told_which(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    from importlib import metadata

    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    assert spec is not None and spec.loader is not None
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)  # here everything is installed: it does not exit
    assert guard.missing_requirements() == []
    version = metadata.version

    def without(name: str) -> str:
        if name.lower() in ("pillow", "pytest-timeout"):
            raise metadata.PackageNotFoundError(name)
        return version(name)

    monkeypatch.setattr(metadata, "version", without)
    assert guard.missing_requirements() == ["pillow", "pytest-timeout"]
