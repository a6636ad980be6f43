"""`maas-batch simulate`: serve the MaaS API simulator."""

from __future__ import annotations

import argparse

from batch.errors import UsageError
from batch.exitcodes import EXIT_OK
from batch.simulator import config_from_args, serve


def simulate(args: argparse.Namespace) -> int:
    try:
        serve(config_from_args(args), args.host, args.port)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    return EXIT_OK
