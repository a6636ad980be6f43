"""`maas-batch simulate`: serve the MaaS API simulator."""

from __future__ import annotations

import argparse

from batch.exitcodes import EXIT_OK
from batch.simulator import config_from_args, serve


def simulate(args: argparse.Namespace) -> int:
    serve(config_from_args(args), args.host, args.port)
    return EXIT_OK
