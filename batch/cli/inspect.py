"""The commands that read an output directory: `status`, `report`, `export` and `gallery`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from batch.cli import cluster
from batch.cluster.plan import is_sharded
from batch.config import price_table
from batch.errors import OutputError, UsageError
from batch.exitcodes import EXIT_OK
from batch.output.lock import acquire
from batch.output.report import export as export_rows
from batch.output.report import format_report, format_status, report, status


def existing(root: Path) -> Path:
    """DIR, if it is a directory (a mistyped one is a usage error, not an empty report)."""
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory maas-batch has written")
    return root


def show_status(args: argparse.Namespace) -> int:
    if is_sharded(args.out):  # a batch in shards, run by workers: batch.cli.cluster
        return cluster.show_status(args)
    found = status(existing(args.out))
    print(json.dumps(found, indent=2) if args.json else format_status(found))
    return EXIT_OK


def show_report(args: argparse.Namespace) -> int:
    found = report(existing(args.out), price_table({}, args.prices), reprice=args.prices is not None)
    print(json.dumps(found, indent=2) if args.json else format_report(found))
    return EXIT_OK


def export(args: argparse.Namespace) -> int:
    root = existing(args.out)
    if args.output is None:
        export_rows(root, args.format, sys.stdout)
        return EXIT_OK
    try:
        with args.output.open("w", encoding="utf-8", newline="") as stream:
            rows = export_rows(root, args.format, stream)
    except OSError as exc:
        raise OutputError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    print(f"{rows:,} rows written to {args.output}", file=sys.stderr)
    return EXIT_OK


def gallery(args: argparse.Namespace) -> int:
    from batch.output import gallery as gallery_page  # Pillow, for this command only: `status` starts faster

    root = existing(args.out)
    lock = acquire(root)  # not beside a run that is writing DIR
    try:
        started = time.monotonic()
        page = gallery_page.build(root)
    finally:
        os.close(lock)
    print(f"{page} written in {time.monotonic() - started:.1f} s")
    return EXIT_OK
