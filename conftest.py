"""Loaded by pytest before tests/conftest.py: a Python without the project's requirements gets one clear
message saying what is missing and the command that installs it, instead of an ImportError."""

from __future__ import annotations

import re
import sys
from importlib import metadata

import pytest


def missing_requirements() -> list[str]:
    """What `pip install -e '.[test]'` puts into this Python and is not there (from the installed
    metadata, so that the list is pyproject.toml's own)."""
    try:
        requirements = metadata.requires("maas-batch") or []
    except metadata.PackageNotFoundError:
        return ["maas-batch itself"]
    missing = []
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
        if name is None or (extra is not None and extra.group(1) != "test"):
            continue
        try:
            metadata.version(name.group())
        except metadata.PackageNotFoundError:
            missing.append(name.group())
    return missing


if missing := missing_requirements():
    pytest.exit(
        f"this Python ({sys.executable}) lacks {', '.join(missing)}. The tests need the project installed "
        "with its test tools; from the repository's root:\n"
        "  python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest",
        returncode=pytest.ExitCode.USAGE_ERROR,
    )
