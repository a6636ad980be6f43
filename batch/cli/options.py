"""The flags of `run` and `validate` as the library's Options: one way, from the argparse namespace to a
frozen Options that checks each value once."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from batch.config import Options
from batch.errors import OptionError
from batch.values import parse_endpoints, parse_overrides

# Options' fields whose flags are repeated items, read into a mapping
_FROM_ITEMS: dict[str, Callable[[Sequence[str]], Any]] = {
    "endpoints": parse_endpoints,
    "overrides": parse_overrides,
}


def options_from(args: argparse.Namespace) -> Options:
    """Each field of Options from the flag whose `dest` is its name (the rest keep Options' defaults).
    A value Options refuses is reported as argparse reports a bad flag: usage, the flag, exit 64."""
    given = vars(args)
    values = {field.name: given[field.name] for field in fields(Options) if field.name in given}
    for name, read in _FROM_ITEMS.items():
        if name in values:
            values[name] = read(values[name])
    if "log_every" in given:  # status lines are heartbeats: when no bar shows, or for a --log-file
        bar_alone = show_bar(args) and given.get("log_file") is None
        values["heartbeat"] = 0.0 if bar_alone else args.log_every  # --quiet: for a --log-file
    try:
        return Options(**values)
    except OptionError as exc:
        parser: argparse.ArgumentParser = args.command_parser
        parser.error(f"argument --{exc.name.replace('_', '-')}: {exc.problem}")


def show_bar(args: argparse.Namespace) -> bool:
    """A progress bar: asked for, or by default when stderr is a terminal (and not --quiet)."""
    return not args.quiet and (args.progress if args.progress is not None else sys.stderr.isatty())
