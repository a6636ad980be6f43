"""Phase 1's end: a whole manifest loaded and validated (or its plan remembered in DIR taken instead), as
`run`, `validate`, `submit` and the reports need it. Light: no HTTP stack, so `validate` starts fast."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch.kind import Registry
from batch.manifest import plancache
from batch.manifest.plan import Plan, check_manifest
from batch.manifest.plancache import Sources
from batch.manifest.read import Manifest, load
from batch.manifest.tasks import BuildSettings, TaskBuilder


@dataclass
class CheckedManifest:
    manifest: Manifest
    builder: TaskBuilder
    plan: Plan
    cache_key: dict[str, Any] | None = None  # what a remembered plan depends on (None: no cache)
    sources: Sources | None = None  # the files the tasks were made from, as validated
    cached: bool = False  # the plan came from DIR's cache: the manifest was not walked again
    changed: plancache.Changed | None = None  # what the run that remembered the plan found changed


def check(
    source: Path | Manifest, build: BuildSettings, registry: Registry, cache: Path | None = None
) -> CheckedManifest:
    """Load (from a file) and validate a whole manifest. Raises ManifestError for a file that is not a
    manifest; other problems are in `plan.problems`. With `cache` (a folder in DIR), a plan remembered
    there is used when nothing it depends on changed (for a manifest file; one built in code is checked
    each time)."""
    path = source if isinstance(source, Path) else None
    manifest = load(path) if path is not None else source
    assert isinstance(manifest, Manifest)
    sources = Sources()
    builder = TaskBuilder(manifest, registry, build, sources=sources)
    if path is None:
        cache = None
    cache_key = plancache.key(path, dataclasses.asdict(build)) if cache is not None and path else None
    if cache is not None and cache_key is not None and not builder.problems:
        remembered = plancache.load(cache, cache_key)
        if remembered is not None:
            plan = Plan(
                manifest.name,
                total=remembered.total,
                counts=remembered.counts,
                order=remembered.order,
                requests=remembered.requests,
                estimates=remembered.estimates,
                marks=remembered.marks,
            )  # its id set is made from the order if asked for (a fresh run never asks)
            builder.trust()
            return CheckedManifest(
                manifest,
                builder,
                plan,
                cache_key,
                remembered.sources,
                cached=True,
                changed=remembered.changed,
            )
    if path is not None:
        sources.file(path, expanded=True)
    plan = check_manifest(manifest, builder)
    builder.trust()
    return CheckedManifest(manifest, builder, plan, cache_key, sources)
