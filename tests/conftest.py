"""Shared fixtures: manifests and images written into a temporary folder."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from batch.job import CheckedManifest, check
from batch.tasks import BuildSettings
from jobs import registry


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
