"""maas-batch: resumable, unattended batches against the MaaS generative API.

As a library (see batch.api, and the README's "From Python"):

    import batch
    summary = batch.run("job.yaml", "out", concurrency=8, max_cost=20)
    async for result in batch.stream(batch.from_tasks([...]), "out"): ...

The public names are loaded on first use, so that the command line starts fast.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


class _KindsFinder:  # a meta path finder: find_spec is all Python asks of one (no ABC: a fast start)
    """`batch.jobs`, the built-in task kinds: installed as batch/jobs/, found there by Python itself; in the
    source tree they are the top-level folder jobs/ (the project's fixed layout), found here. Never the
    name `jobs`, which a program using this library may well have for a package of its own."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> ModuleSpec | None:
        if fullname != "batch.jobs":
            return None  # its modules are found through the package's __path__
        import importlib.util  # only when the kinds are imported from a source tree

        folder = Path(__file__).resolve().parent.parent / "jobs"
        init = folder / "__init__.py"
        if not init.is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[str(folder)]
        )


if not any(isinstance(finder, _KindsFinder) for finder in sys.meta_path):
    sys.meta_path.append(_KindsFinder())  # after the usual finders: an installed batch/jobs/ comes first

# public name -> the module that defines it
_EXPORTS = {
    "run": "batch.api",
    "stream": "batch.api",
    "validate": "batch.api",
    "from_tasks": "batch.api",
    "Result": "batch.recorded",
    "results": "batch.recorded",
    "ResultStream": "batch.api",
    "Options": "batch.config",
    "RunSummary": "batch.running.summary",
    "Manifest": "batch.manifest.read",
    "Event": "batch.events",
    "RunStarted": "batch.events",
    "TaskStarted": "batch.events",
    "TaskFinished": "batch.events",
    "AttemptFailed": "batch.events",
    "Billed": "batch.events",
    "Heartbeat": "batch.events",
    "RunStopping": "batch.events",
    "BatchError": "batch.errors",
    "ManifestError": "batch.errors",
    "MissingConfigError": "batch.errors",
    "ConfigError": "batch.errors",
    "OutputError": "batch.errors",
    "DirLockedError": "batch.errors",
    "UsageError": "batch.errors",
    "Problem": "batch.errors",
}

__all__ = [  # the names of _EXPORTS (a test checks), written out for readers and linters
    "AttemptFailed",
    "BatchError",
    "Billed",
    "ConfigError",
    "DirLockedError",
    "Event",
    "Heartbeat",
    "Manifest",
    "ManifestError",
    "MissingConfigError",
    "Options",
    "OutputError",
    "Problem",
    "Result",
    "ResultStream",
    "RunStarted",
    "RunStopping",
    "RunSummary",
    "TaskFinished",
    "TaskStarted",
    "UsageError",
    "__version__",
    "from_tasks",
    "results",
    "run",
    "stream",
    "validate",
]

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

    from batch.api import ResultStream, from_tasks, run, stream, validate
    from batch.config import Options
    from batch.errors import (
        BatchError,
        ConfigError,
        DirLockedError,
        ManifestError,
        MissingConfigError,
        OutputError,
        Problem,
        UsageError,
    )
    from batch.events import (
        AttemptFailed,
        Billed,
        Event,
        Heartbeat,
        RunStarted,
        RunStopping,
        TaskFinished,
        TaskStarted,
    )
    from batch.manifest.read import Manifest
    from batch.recorded import Result, results
    from batch.running.summary import RunSummary


# submodules the README names by attribute (`batch.kind.TaskKind`): imported on first use, as the rest
_SUBMODULES = frozenset({"kind", "events", "errors"})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"batch.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'batch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
