"""`maas-batch simulate`: serve the MaaS API simulator."""

from __future__ import annotations

import argparse

from batch.errors import UsageError
from batch.exitcodes import EXIT_OK
from batch.simulator import config_from_args, serve


def simulate(args: argparse.Namespace) -> int:
    if not args.host:
        raise UsageError("--host: give an address to listen on (127.0.0.1, 0.0.0.0, ::1)")
    try:
        config = config_from_args(args)
    except ValueError as exc:  # --api-key-env NAME with NAME unset, a setting out of range
        raise UsageError(str(exc)) from None
    try:
        serve(config, args.host, args.port)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    return EXIT_OK
