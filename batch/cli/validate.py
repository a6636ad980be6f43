"""`maas-batch validate`: check a manifest, count and estimate its tasks, show requests as they would be
sent. Sends nothing."""

from __future__ import annotations

import argparse
import itertools

from batch.config import Options, base_url_for, checked_manifest, endpoint_for, price_table, redis_url_for
from batch.exitcodes import EXIT_OK
from batch.kind import builtin_registry as registry
from batch.manifest.checked import CheckedManifest
from batch.manifest.inputs import read_file
from batch.manifest.plan import iter_tasks
from batch.manifest.preview import describe_request
from batch.output.report import format_plan


def validate(args: argparse.Namespace, options: Options) -> int:
    # the base URL and Redis a run would refuse at its start (78): refused here too
    base_url = "http://127.0.0.1:<port>/v1/ai" if options.simulate else base_url_for(options)
    redis_url_for(options)  # --simulate too: its runs share their limits through MAAS_REDIS_URL
    checked = checked_manifest(args.manifest, options, endpoint_for(options))
    prices = price_table(checked.manifest.prices, options.prices)
    print("\n".join(format_plan(str(args.manifest), checked.plan, prices)))
    if args.show > 0:
        _show(checked, args.show, base_url)
    return EXIT_OK


def _show(checked: CheckedManifest, count: int, base_url: str) -> None:
    kinds = registry()
    for spec in itertools.islice(iter_tasks(checked.manifest, checked.builder), count):
        print()
        print(describe_request(spec, kinds[spec.kind], base_url, read_file))
