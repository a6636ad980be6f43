"""The commands that read an output directory: `status`, `report`, `export` and `gallery`; on an s3://
output too, through a local view of it."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from batch.cli import cluster
from batch.cluster.plan import is_sharded
from batch.config import env, price_table
from batch.errors import ManifestError, OutputError, UsageError
from batch.exitcodes import EXIT_OK
from batch.manifest import plancache
from batch.output.export import Selection
from batch.output.files import TMP_SUFFIX
from batch.output.format import FORMAT
from batch.output.lock import LOCK, acquire
from batch.output.report import as_json, format_report, format_status, report, status
from batch.output.report import export as export_rows
from batch.output.scope import Scope, scope_of
from batch.output.store import ANSWERS, IMAGES, RESULTS, RETRIED, RUNS, THUMBS, USAGE

log = logging.getLogger("batch.cli")


def existing(root: Path) -> Path:
    """DIR, if it is a directory (a mistyped one is a usage error, not an empty report)."""
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory maas-batch has written")
    return root


def run_directory(root: Path) -> Path:
    """DIR, if a run wrote it: any other folder is a usage error (not an empty report, and no
    index.html written into it)."""
    existing(root)
    if not any((root / name).exists() for name in (RESULTS, USAGE, RUNS)):
        raise UsageError(
            f"{root} is not a run directory (no {RESULTS}, {USAGE} or {RUNS}/ in it): "
            "give the --out DIR of a `maas-batch run`"
        )
    return root


def scope(args: argparse.Namespace, root: Path) -> Scope:
    """Which tasks the command is about: --manifest, else the last run's manifest (output.scope); on a
    sharded DIR, the submitted manifest over every shard (batch.cluster.view)."""
    if is_sharded(root):
        return cluster.batch_scope(args, root)
    endpoint = env("MAAS_ENDPOINT") if args.manifest is not None else None  # as `run` would take it
    return scope_of(root, args.manifest, include_orphaned=args.include_orphaned, endpoint=endpoint)


def _manifest_prices(chosen: Scope) -> Any:
    """The `prices:` of the manifest the report is about ({} when none is known, or it is unreadable now:
    the report says what it reads, and the run's own figures stand)."""
    from batch.manifest.read import load

    path = chosen.manifest_path or (Path(chosen.manifest) if chosen.manifest else None)
    if path is None or not path.is_file():
        return {}
    try:
        return load(path).prices
    except ManifestError:
        return {}


def reading(root: Path) -> Path:
    """DIR, if a run wrote it or it holds a submitted batch (see run_directory)."""
    return existing(root) if is_sharded(root) else run_directory(root)


def shown(args: argparse.Namespace) -> str:
    """What the reader was asked about: DIR, or the store's URL (not the view read in its place)."""
    return str(getattr(args, "url", None) or args.out)


def show_status(args: argparse.Namespace) -> int:
    if is_sharded(args.out):  # a batch in shards, run by workers: batch.cli.cluster
        return cluster.show_status(args)
    root = run_directory(args.out)
    remote = getattr(args, "remote", None)  # a store: it has no lock, but says when a run last wrote
    written = None if remote is None else lambda run: remote.last_written(f"{RUNS}/{run}")
    here = None
    if remote is not None:  # a run on this machine may hold the store
        from batch.output.remote import holder_here

        here = holder_here(remote)
    found = {**status(root, scope(args, root), written=written, held_here=here), "directory": shown(args)}
    print(as_json(found) if args.json else format_status(found))
    return EXIT_OK


def show_report(args: argparse.Namespace) -> int:
    root = reading(args.out)
    chosen = scope(args, root)
    try:
        # priced anew as a run would: --prices FILE over the manifest's prices: over the built-in list (a
        # model the manifest prices was repriced at its list price, ten times what the run recorded)
        manifest_prices = _manifest_prices(chosen) if args.prices is not None else {}
        prices = price_table(manifest_prices, args.prices)
    except ManifestError as exc:  # a --prices file's mistakes, as they are: a report sends nothing anyway
        raise ManifestError(exc.problems, exc.more, report=[str(p) for p in exc.problems]) from exc
    if chosen.parts:  # a sharded batch: each shard's report, summed
        from batch.cluster.view import cluster_report, format_shard_reports

        found = {
            **cluster_report(root, chosen, prices, reprice=args.prices is not None),
            "directory": shown(args),
        }
        text = format_report(found) + "\n" + format_shard_reports(found)
    else:
        found = {
            **report(root, prices, reprice=args.prices is not None, scope=chosen),
            "directory": shown(args),
        }
        text = format_report(found)
    print(as_json(found) if args.json else text)
    return EXIT_OK


def _check_kinds(kinds: list[str]) -> None:
    """--kind: a typo of a built-in kind (`chatt`) would export nothing and exit 0. A name far from every
    built-in one passes: a program's own kind (batch.kind) writes its name into DIR too."""
    from batch.kind import builtin_registry
    from batch.manifest.fields import closest

    known = builtin_registry()
    for kind in kinds:
        if kind in known:
            continue
        # `gen` for generate: a beginning of one kind's name alone is that kind misspelt too
        starts = [name for name in known if len(kind) >= 3 and name.startswith(kind)]
        near = closest(kind, known) or (starts[0] if len(starts) == 1 else None)
        if near is not None:
            raise UsageError(f"--kind {kind!r} is not a task kind; did you mean {near!r}?")


def _unmatched_kinds(kinds: list[str], selection: Selection, where: object) -> None:
    """A --kind that is neither a built-in kind nor the kind of any task of DIR exported nothing: said on
    stderr (after the rows: which kinds DIR holds is known once it was read)."""
    from batch.kind import builtin_registry

    known = builtin_registry()
    for kind in kinds:
        if kind not in known and kind not in selection.seen:
            held = ", ".join(sorted(selection.seen)) or "none"
            log.warning(
                "--kind %r matched no task: no task of %s is of that kind (its kinds: %s)", kind, where, held
            )


def export(args: argparse.Namespace) -> int:
    root = reading(args.out)
    if args.format == "sqlite" and args.output is None:
        raise UsageError("export --format sqlite writes a file: give it --output FILE")
    _check_kinds(args.kinds)
    if args.output is not None:
        not_into_dir(root, args.output, "--output")
    chosen = scope(args, root)
    selection = Selection(frozenset(args.statuses), frozenset(args.kinds))
    if args.output is None:
        export_rows(root, args.format, sys.stdout, chosen, selection, _fetch(args))
        _unmatched_kinds(args.kinds, selection, args.out)
        return EXIT_OK
    try:
        if args.format == "sqlite":
            from batch.output.database import write_database

            rows = write_database(root, args.output, chosen, selection)
        else:
            fetch = _fetch(args)
            rows = _replaced(
                args.output, lambda stream: export_rows(root, args.format, stream, chosen, selection, fetch)
            )
    except OSError as exc:
        raise OutputError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    print(f"{rows:,} rows written to {args.output}", file=sys.stderr)
    _unmatched_kinds(args.kinds, selection, args.out)
    return EXIT_OK


def _replaced(output: Path, write: Callable[[TextIO], int]) -> int:
    """`write` into a temporary file beside `output`, renamed over it once whole: an export stopped part
    way (Ctrl-C, a full disk) left the last one cut to nothing; it is now as it was. A FIFO or a device
    (/dev/stdout) is written in place; a link, through: its target is replaced, the link stays."""
    try:
        output = output.resolve()
    except RuntimeError as exc:  # a loop of links (3.11): the write fails as it would (74)
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from exc
    if output.exists() and not output.is_file():
        with output.open("w", encoding="utf-8", newline="") as stream:
            return write(stream)
    temporary = output.with_name(f".{output.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        with temporary.open("w", encoding="utf-8", newline="") as stream:
            rows = write(stream)
        if output.exists():
            shutil.copymode(output, temporary)  # a file the user made readable by a group stays so
        os.replace(temporary, output)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return rows


# what a run keeps in DIR (and a batch in shards: cluster/ and shards/): an export written over one of them
# replaced the results or the ledger with its own rows, and the next run trusted them
_DIRS_OWN = frozenset(
    (RESULTS, USAGE, RETRIED, RUNS, IMAGES, ANSWERS, THUMBS, LOCK, FORMAT, plancache.FOLDER)
) | frozenset(("index.html", "cluster", "shards"))  # the page (gallery.PAGE, whose module loads Pillow)


def not_into_dir(root: Path, output: Path, flag: str) -> None:
    """Refuse an --output (or --log-file) that is a file of DIR's own, or inside one of its folders; a
    new file beside them (DIR/export.csv) is fine."""
    try:
        inside = output.resolve().relative_to(root.resolve())
    except ValueError:
        return  # elsewhere
    except (OSError, RuntimeError):  # a loop of links (RuntimeError on 3.11): the write says so (74)
        return
    if inside.parts and inside.parts[0] in _DIRS_OWN:
        raise UsageError(f"{flag} {output} is {root}'s own {inside.parts[0]}: write it elsewhere")


def _fetch(args: argparse.Namespace) -> Callable[[str], bytes | None] | None:
    """How export --format openai reads an image: from the store, on an s3:// output."""
    remote = getattr(args, "remote", None)
    return None if remote is None else remote.read


def gallery(args: argparse.Namespace) -> int:
    from batch.output import gallery as gallery_page  # Pillow, for this command only: `status` starts faster

    root = reading(args.out)
    if getattr(args, "remote", None) is not None:  # the page and its thumbnails go into the store
        started = time.monotonic()
        url = gallery_page.build_in_store(root, args.remote, scope(args, root))
        print(f"{url} written in {time.monotonic() - started:.1f} s")
        return EXIT_OK
    lock = acquire(root)  # not beside a run that is writing DIR
    try:
        started = time.monotonic()
        page = gallery_page.build(root, scope(args, root))
    finally:
        os.close(lock)
    print(f"{page} written in {time.monotonic() - started:.1f} s")
    return EXIT_OK


def on_store(reader: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """A reader on an s3:// output: the store's segments assembled into a temporary, read-only view of a
    DIR (no images), then read as a DIR is; the images, where a reader needs them, from the store. Over a
    store, a request some worker has in flight now counts as maybe billed: nothing there says the worker
    is alive."""
    from batch.output.remote import open_store
    from batch.output.remote import view as view_of

    with view_of(args.out) as view:
        if not (
            (view / "cluster").is_dir()
            or any((view / RUNS).iterdir())
            or any((view / name).stat().st_size for name in (RESULTS, USAGE))
        ):
            raise UsageError(f"{args.out} holds no output of maas-batch")
        remote = open_store(args.out)  # for the images: export --format openai, the gallery
        read = {"out": view, "url": str(args.out), "remote": remote}
        return reader(argparse.Namespace(**{**vars(args), **read}))
