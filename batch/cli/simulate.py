"""`maas-batch simulate`: serve the MaaS API simulator."""

from __future__ import annotations

import argparse

from batch.cli import StdoutError
from batch.errors import UsageError
from batch.exitcodes import EXIT_OK
from batch.simulator import config_from_args, serve


def simulate(args: argparse.Namespace) -> int:
    try:
        serve(config_from_args(args), args.host, args.port)
    except StdoutError:  # its one line could not be printed (a full disk): main says so, 74
        raise
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    return EXIT_OK
