"""The engine (`batch/`, the simulator aside) never names a task kind: it asks the registry.

Read from the source with `ast`, so that nothing has to run for a kind's name to be found: a string equal
to a kind's name (`"chat"` as a selector, as a URL table's value, in a comparison), a name or attribute
called like one (`chat.parse_answer`), or any import of the kinds' package (`jobs`, `batch.jobs`): the
engine reaches them only through `batch.kind.builtin_registry`, by the package's name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from batch.kind import builtin_registry as registry

ENGINE = Path(__file__).resolve().parents[1] / "batch"
SKIPPED = ("simulator",)  # the simulator is a server of its own: it speaks the API, endpoint by endpoint
KINDS_PACKAGES = ("jobs", "batch.jobs")  # what the engine never imports

# Still naming a kind, left to the module's owner; each entry must keep matching (no stale exemptions).
KNOWN: dict[str, set[str]] = {}


def engine_modules() -> Iterator[Path]:
    for path in sorted(ENGINE.rglob("*.py")):
        if path.relative_to(ENGINE).parts[0] not in SKIPPED:
            yield path


def mentions(tree: ast.AST, kinds: set[str]) -> set[str]:
    """What in `tree` names one of `kinds` or reaches into `jobs` beyond its entry point."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in kinds:
            found.add(f"string {node.value!r}")
        elif isinstance(node, ast.Name) and node.id in kinds:
            found.add(f"name {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in kinds:
            found.add(f"attribute .{node.attr}")
        elif isinstance(node, ast.Import):
            found |= {f"import {a.name}" for a in node.names if _kinds_package(a.name)}
        elif isinstance(node, ast.ImportFrom) and _kinds_package(node.module or ""):
            names = tuple(alias.name for alias in node.names)
            found.add(f"from {node.module} import {', '.join(names)}")
    return found


def _kinds_package(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in KINDS_PACKAGES)


def violations() -> dict[str, set[str]]:
    kinds = set(registry())
    found = {}
    for path in engine_modules():
        named = mentions(ast.parse(path.read_text(encoding="utf-8"), str(path)), kinds)
        if named:
            found[path.relative_to(ENGINE).as_posix()] = named
    return found


def test_the_engine_names_no_kind_and_imports_only_the_registry() -> None:
    assert violations() == KNOWN


def test_the_scan_finds_what_it_looks_for() -> None:
    """The scan itself can fail: each way of naming a kind, or of importing the kinds, is caught."""
    source = (
        "from batch.jobs import registry\n"
        "from jobs import chat\n"
        "import jobs.edit\n"
        "URLS = {'chat/completions': 'chat'}\n"
        "if kind == 'generate': edit.check(x)\n"
        "chat.parse_answer(body)\n"
    )
    assert mentions(ast.parse(source), {"generate", "edit", "chat"}) == {
        "from batch.jobs import registry",
        "from jobs import chat",
        "import jobs.edit",
        "string 'chat'",
        "string 'generate'",
        "name edit",
        "name chat",
    }
    assert (
        mentions(ast.parse("from batch.kind import builtin_registry\nk = builtin_registry()\n"), {"chat"})
        == set()
    )
