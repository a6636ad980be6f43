"""Flags more than one command takes, and the readers of their values (text to a number, a duration, a
time) as argparse types. Whether a run can use a value is checked once, by batch.Options."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from batch.defaults import DEFAULT_LOG_EVERY

if TYPE_CHECKING:
    from batch.values import StoreUrl


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="[KIND.]FIELD=VALUE",
        help="set a request field for every task (that knows it), over the manifest; "
        "e.g. --set quality=low --set chat.temperature=0. The value reads as YAML (a number, true, "
        "null), but one with a # is taken as written. Repeatable",
    )
    parser.add_argument(
        "--endpoint",
        dest="endpoints",
        action="append",
        default=[],
        metavar="[KIND|MODEL=]ENDPOINT",
        help="send tasks of a kind or model (or, without a '=', all tasks) to this endpoint, "
        "over the manifest; e.g. --endpoint chat=my-gemini --endpoint generate=my-images",
    )
    parser.add_argument(
        "--allow-unknown",
        action="store_true",
        help="send chat fields and models that look like typos of known ones (temprature, "
        "gpt-image1) as they are, instead of refusing the manifest",
    )


def add_prices(parser: Any, help: str | None = None) -> None:
    parser.add_argument(
        "--prices",
        type=path,
        default=None,
        metavar="FILE",
        help=help
        or "prices per million tokens, {model: {text_input, image_input, output}} in YAML or "
        "JSON; over the manifest's prices: and the built-in list prices",
    )


def add_scope(parser: argparse.ArgumentParser) -> None:
    """--manifest and --include-orphaned: which tasks a reading of DIR is about (batch.output.scope)."""
    parser.add_argument(
        "--manifest",
        type=path,
        default=None,
        metavar="FILE",
        help="count the tasks of this manifest (expanded and validated as `run` would) instead of the "
        "one the last run used",
    )
    parser.add_argument(
        "--include-orphaned",
        action="store_true",
        help="count, too, the result lines of tasks no longer in the manifest (orphaned: a prompt "
        "fixed, a quality raised since); without it they are counted apart",
    )


def add_output_options(parser: argparse.ArgumentParser) -> None:
    log = parser.add_argument_group("what it prints")
    group = log.add_mutually_exclusive_group()
    group.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="show a progress bar (default when stderr is a terminal)",
    )
    group.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no bar: a status line every --log-every seconds, and a line per failure",
    )
    log.add_argument(
        "--log-every",
        type=interval,  # the command's own: it becomes Options.heartbeat unless a bar shows
        default=DEFAULT_LOG_EVERY,
        metavar="SECONDS",
        help="without a bar, print done, failed, retrying, rate, ETA, tokens and cost this often "
        f"(default {DEFAULT_LOG_EVERY:g}; 0: never)",
    )
    log.add_argument(
        "--log-file",
        type=path,
        default=None,
        metavar="FILE",
        help="also append the log lines to FILE (its folder is made if missing)",
    )
    log.add_argument("--quiet", "-q", action="store_true", help="only warnings and the summary")
    log.add_argument("--verbose", "-v", action="store_true", help="a line per task and per retry, and debug")


def whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def port(text: str) -> int:
    """A TCP port: 0 (any free one) to 65535."""
    value = whole(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port, 0 to 65535, not {text}")
    return value


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def redis_url(text: str) -> str:
    """A Redis URL redis-py can open (`notaurl` was taken, and refused at connection as a Redis down: 78)."""
    from batch.values import check_redis_url

    try:
        check_redis_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def seconds(text: str) -> float:
    """A finite number of seconds, more than 0."""
    value = number(text)
    if not 0 < value < math.inf:  # NaN too
        raise argparse.ArgumentTypeError(f"must be a number of seconds more than 0, not {text}")
    return value


def interval(text: str) -> float:
    """A finite number of seconds, or 0 (never): `--log-every inf` was refused as `--heartbeat`'s."""
    value = number(text)
    if not 0 <= value < math.inf:  # NaN too
        raise argparse.ArgumentTypeError(f"must be 0 (never) or a number of seconds, not {text}")
    return value


def count(text: str) -> int:
    """A whole number, 0 or more."""
    value = whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def zero_or_more(text: str) -> float:
    value = number(text)
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def path(text: str) -> Path:
    """A file's path; an empty one (`--log-file "$UNSET"`) is refused, not taken for the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: name a file")
    return Path(text)


def output_location(text: str) -> StoreUrl | Path:
    """--out and DIR: batch.values.output_location (a path, or a store's URL), imported when a command
    reads one, so that `maas-batch --help` does without batch.values and the error tree."""
    from batch.values import output_location as read

    return read_with(read)(text)


def concurrency(text: str) -> int | str:
    """A whole number of requests in flight, or `auto`."""
    return "auto" if text.strip().lower() == "auto" else whole(text)


T = TypeVar("T")


def read_with(parse: Callable[[str], T]) -> Callable[[str], T]:
    """A batch.values reader as an argparse type: its ValueError's message is the flag's error."""

    def read(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    read.__name__ = parse.__name__
    return read
