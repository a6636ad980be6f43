"""A run's manifest check in a child process, while the run itself imports its HTTP stack (issue 16).

Nothing is sent before the whole manifest has been checked, and nothing can be sent before aiohttp and
the engine are imported (0.2-0.3 s). The two do not depend on each other, and a machine with a second
core can do both at once: `start` forks a child (multiprocessing's fork context) that checks the manifest
while the run imports, and `CheckAside.take` gets what it found. A valid plan comes back through the plan
cache's own files (plancache: checked against the manifest's bytes, the settings and the files the tasks
were made from, as a remembered plan is), a refused one as the problems the run then reports. With
anything else (the child killed, a file that is not a manifest, a manifest changed meanwhile) the run
checks the manifest itself, as it would have without the child.

Only where it pays: a JSONL manifest of ASIDE_FROM bytes or more (a YAML manifest would be parsed twice),
a DIR with no remembered plan (a resume takes that instead), a POSIX system, and a process with no other
thread yet (a fork copies only the thread that made it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.manifest import plancache

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from batch.kind import Registry
    from batch.manifest.checked import CheckedManifest
    from batch.manifest.plan import Plan
    from batch.manifest.tasks import BuildSettings

log = logging.getLogger(__name__)

ASIDE_FROM = 64 * 1024  # bytes of JSONL (some 600 chat tasks): below, the check takes less than a fork
READY, REFUSED = 0, 3  # the child's exit codes: a plan in its folder, or the problems that refuse it
REFUSAL = "refused.pickle"  # (problems, more, report): what ManifestError is made of
INPUTS = "inputs.pickle"  # the input files the child inspected (digest, image header), not read again


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A manifest the child refused: what the run raises (batch.errors.manifest_error)."""

    problems: list[Any]
    more: int
    report: list[str]


class CheckAside:
    """A manifest being checked in a child process (`start`); `take` waits for it, `close` ends it."""

    def __init__(self, path: Path, settings: BuildSettings, process: BaseProcess, folder: Path) -> None:
        self.path = path
        self.settings = settings
        self.process = process
        self.folder = folder  # the child's, private (mkdtemp); removed by close()

    def take(self, settings: BuildSettings, registry: Registry) -> CheckedManifest | Refusal | None:
        """The checked manifest; the child's Refusal; or None: check it here (the child gave up, or the
        run's settings are not the ones the child was given)."""
        from batch.manifest.checked import check

        self.process.join()
        code = self.process.exitcode
        if settings != self.settings:
            return None
        try:
            if code == REFUSED:
                problems, more, report = pickle.loads((self.folder / REFUSAL).read_bytes())
                return Refusal(problems, more, report)
            if code != READY:
                log.debug("the manifest's check aside ended with %s: checking it here", code)
                return None
            inputs = pickle.loads((self.folder / INPUTS).read_bytes())
        except (OSError, ValueError, pickle.UnpicklingError, EOFError) as exc:
            log.debug("the manifest's check aside left nothing usable (%s): checking it here", exc)
            return None
        # the plan cache's key check: a manifest (or a file its tasks read) changed since the child read
        # it is walked again here, in full
        checked = check(self.path, settings, registry, self.folder)
        shutil.rmtree(self.folder, ignore_errors=True)  # the plan's order is in a file of its own now
        checked.builder.inspector.remember(inputs)
        checked.cached = False  # checked by this run (in its child): remembered in DIR as a fresh plan
        return checked

    def close(self) -> None:
        """End the child if it still runs (the run stopped before it took the plan), and remove its
        folder."""
        if self.process.exitcode is None:
            with contextlib.suppress(OSError):
                self.process.kill()
            self.process.join()
        shutil.rmtree(self.folder, ignore_errors=True)


def start(
    path: Path, settings: BuildSettings, out: Path, describe: Callable[[Plan, str], list[str]]
) -> CheckAside | None:
    """A child checking the manifest at `path` with `settings`, or None where one does not pay (see the
    module's doc). `out`: the run's DIR (a remembered plan there is used instead); `describe`: how the
    command line prints a refused plan's problems."""
    if not worth_it(path, out):
        return None
    import multiprocessing

    folder = Path(tempfile.mkdtemp(prefix="maas-batch-check-"))
    process = multiprocessing.get_context("fork").Process(
        target=_child,
        args=(path, settings, folder, describe, os.getpid()),
        name="maas-batch-check",
        daemon=True,
    )
    try:
        process.start()
    except OSError as exc:  # no memory or process slot for a fork: the run checks it itself
        log.debug("cannot check the manifest aside: %s", exc)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    log.debug("the manifest is checked in a child process (pid %s) while the run starts", process.pid)
    return CheckAside(path, settings, process, folder)


def worth_it(path: Path, out: Path) -> bool:
    if os.name != "posix" or threading.active_count() > 1:
        return False
    if path.suffix.lower() not in (".jsonl", ".ndjson") or (out / plancache.FOLDER / plancache.PLAN).exists():
        return False
    try:
        return path.stat().st_size >= ASIDE_FROM
    except (OSError, ValueError):
        return False  # the run's own check says what is wrong with it


def _child(
    path: Path, settings: BuildSettings, folder: Path, describe: Callable[[Plan, str], list[str]], parent: int
) -> None:
    """The check, in the child; its exit code says what it left in `folder`."""
    # Ctrl-C or a TERM ends the child at once, and the run removes its folder; the run's own handler
    # (KeyboardInterrupt) would unwind through the walk for nothing
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = 1
    try:
        code = _check(path, settings, folder, describe)
    except BaseException as exc:  # whatever it is, the run checks the manifest itself
        log.debug("the manifest's check aside: %s: %s", type(exc).__name__, exc)
    if os.getppid() != parent:  # the run is gone (killed): nobody will take the folder
        shutil.rmtree(folder, ignore_errors=True)
    sys.exit(code)


def _check(
    path: Path, settings: BuildSettings, folder: Path, describe: Callable[[Plan, str], list[str]]
) -> int:
    from batch.kind import builtin_registry
    from batch.manifest.checked import check

    plan_key = plancache.key(path, dataclasses.asdict(settings))  # before the walk, as check() takes it
    checked = check(path, settings, builtin_registry())
    plan = checked.plan
    if not plan.ok:
        refusal = (plan.problems, plan.unshown, describe(plan, str(path)))
        (folder / REFUSAL).write_bytes(pickle.dumps(refusal))
        return REFUSED
    assert checked.sources is not None
    plancache.save_plan(folder, plan_key, checked.sources, plan)
    (folder / INPUTS).write_bytes(pickle.dumps(checked.builder.inspector.known()))
    return READY
