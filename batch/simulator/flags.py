"""Command-line flags for every simulator knob, for the CLI's `simulate` command and `--simulate` runs.

Keys never travel on the command line (they would land in shell history and `ps`): the flags name an
environment variable that holds them. `--answer SHAPE` (repeatable) turns on an answer shape of
`config.ANSWER_SHAPES`: image URLs, tool calls, reasoning, odd streams and usage, as real gateways send them.
"""

from __future__ import annotations

import argparse
import os

from .config import (
    ANSWER_SHAPES,
    DEFAULT_ERROR_STATUSES,
    DEFAULT_HUGE_BYTES,
    DEFAULT_RETRY_AFTER,
    DEFAULT_SLOW_SECONDS,
    DEFAULT_THINKING_TOKENS,
    ERROR_STATUSES,
    FAULT_NAMES,
    SimConfig,
)


def _fault(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=PROBABILITY, got {text!r}")
    name = name.strip()
    if name not in FAULT_NAMES:
        raise argparse.ArgumentTypeError(f"unknown fault {name!r}; known: {', '.join(FAULT_NAMES)}")
    try:
        probability = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"fault probability must be a number, got {value!r}") from None
    if not 0.0 <= probability <= 1.0:
        raise argparse.ArgumentTypeError(f"fault probability must be between 0 and 1, got {value!r}")
    return name, probability


def _answer_shape(text: str) -> str:
    name = text.strip()
    if name not in ANSWER_SHAPES:
        raise argparse.ArgumentTypeError(f"unknown answer shape {name!r}; known: {', '.join(ANSWER_SHAPES)}")
    return name


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's behaviour flags (not --host/--port, which belong to the calling command)."""
    group = parser.add_argument_group("simulator behaviour")
    group.add_argument("--latency", type=_non_negative, default=0.0, help="seconds per request (default 0)")
    group.add_argument(
        "--latency-jitter", type=_fraction, default=0.0, help="uniform +/- fraction of the latency"
    )
    group.add_argument(
        "--error-rate",
        type=_fraction,
        default=0.0,
        help="fraction answered 500/502/503/504 at random (or the --error-status codes)",
    )
    group.add_argument("--rate-429", type=_fraction, default=0.0, help="fraction answered 429 at random")
    group.add_argument(
        "--storm-429",
        type=_non_negative,
        default=0.0,
        metavar="SECONDS",
        help="answer every request 429 (with --retry-after) for SECONDS from the first request: a storm",
    )
    group.add_argument(
        "--error-status",
        type=int,
        choices=ERROR_STATUSES,
        action="append",
        default=None,
        metavar="STATUS",
        help="a status of --error-rate's errors (repeatable; of 408, 409, 500, 502, 503, 504; "
        "default 500, 502, 503, 504)",
    )
    group.add_argument(
        "--retry-after", type=_non_negative, default=DEFAULT_RETRY_AFTER, help="Retry-After of random 429s"
    )
    group.add_argument(
        "--error-retry-after",
        type=_non_negative,
        default=None,
        metavar="SECONDS",
        help="a Retry-After on --error-rate's errors (in seconds, or a date with --retry-after-date); "
        "default none",
    )
    group.add_argument(
        "--google-errors",
        action="store_true",
        help='write error bodies as Google\'s APIs do: [{"error": {"code", "message", "status"}}]',
    )
    group.add_argument(
        "--retry-after-date",
        action="store_true",
        help="write every 429's Retry-After as an HTTP date (whole seconds), not as seconds",
    )
    group.add_argument("--rpm", type=int, default=None, help="requests per minute per key (sliding window)")
    group.add_argument("--rps", type=int, default=None, help="requests per second per key (sliding window)")
    group.add_argument(
        "--tpm", type=int, default=None, help="billed tokens per minute per key (sliding window)"
    )
    group.add_argument(
        "--max-inflight", type=int, default=None, help="concurrent requests above this get 429 at once"
    )
    group.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="NAME=P",
        help=f"inject a fault with probability P (repeatable); names: {', '.join(FAULT_NAMES)}",
    )
    group.add_argument(
        "--fault-once-per-task", action="store_true", help="give each task (request id) at most one fault"
    )
    group.add_argument(
        "--slow-seconds", type=_non_negative, default=DEFAULT_SLOW_SECONDS, help="delay of the slow fault"
    )
    group.add_argument(
        "--huge-bytes", type=int, default=DEFAULT_HUGE_BYTES, help="body size of the huge fault"
    )
    group.add_argument(
        "--answer",
        type=_answer_shape,
        action="append",
        default=[],
        metavar="SHAPE",
        help=f"answer in this shape, as some gateways do (repeatable); shapes: {', '.join(ANSWER_SHAPES)}",
    )
    group.add_argument(
        "--files-host",
        default=None,
        metavar="HOST",
        help="host name in the image URLs of --answer url (default: the other loopback name)",
    )
    group.add_argument(
        "--thinking-tokens",
        type=int,
        default=DEFAULT_THINKING_TOKENS,
        help="hidden thinking tokens of --answer thinking_in_total",
    )
    group.add_argument("--seed", type=int, default=None, help="seed all randomness for a reproducible run")
    group.add_argument(
        "--image-mode",
        choices=("drawn", "realistic"),
        default="drawn",
        help="drawn: small pictures of the prompt; realistic: 1.5-3 MB images like a real model's",
    )
    group.add_argument(
        "--api-key-env",
        metavar="VAR",
        default=None,
        help="environment variable holding the only accepted key (default: accept any key)",
    )
    group.add_argument(
        "--forbidden-key-env",
        metavar="VAR",
        action="append",
        default=[],
        help="environment variable holding a key answered 403 (repeatable)",
    )
    group.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="NAME",
        help="an endpoint (deployment) that exists (repeatable; default: any)",
    )


def _key_from_env(variable: str) -> str:
    value = os.environ.get(variable, "")
    if not value:
        raise ValueError(f"environment variable {variable} is not set or empty")
    return value


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Build a SimConfig from flags added by `add_arguments`; raises ValueError for a missing key variable."""
    api_key = _key_from_env(args.api_key_env) if args.api_key_env else None
    return SimConfig(
        api_key=api_key,
        forbidden_keys=frozenset(_key_from_env(variable) for variable in args.forbidden_key_env),
        endpoints=frozenset(args.endpoint),
        latency=args.latency,
        latency_jitter=args.latency_jitter,
        error_rate=args.error_rate,
        rate_429=args.rate_429,
        storm_429=args.storm_429,
        error_statuses=tuple(args.error_status or DEFAULT_ERROR_STATUSES),
        retry_after=args.retry_after,
        error_retry_after=args.error_retry_after,
        retry_after_date=args.retry_after_date,
        google_errors=args.google_errors,
        rpm=args.rpm,
        rps=args.rps,
        tpm=args.tpm,
        max_inflight=args.max_inflight,
        faults=dict(args.fault),
        fault_once_per_task=args.fault_once_per_task,
        slow_seconds=args.slow_seconds,
        huge_bytes=args.huge_bytes,
        seed=args.seed,
        answers=frozenset(args.answer),
        files_host=args.files_host,
        thinking_tokens=args.thinking_tokens,
        image_mode=args.image_mode,
    )
