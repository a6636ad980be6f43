"""The task kinds, one module each. A new kind is a new module here and a line in KINDS; a program can
also run kinds of its own, without a module here: `batch.run(..., kinds=[MyKind()])`."""

from __future__ import annotations

from collections.abc import Iterable

from batch.kind import Registry, TaskKind

from . import chat, edit, generate

KINDS: tuple[TaskKind, ...] = (generate.KIND, edit.KIND, chat.KIND)


def registry(extra: Iterable[TaskKind] = ()) -> Registry:
    """Kind name -> kind: the kinds above, then `extra` (a kind there replaces one of the same name)."""
    return {kind.name: kind for kind in (*KINDS, *extra)}


__all__ = ["KINDS", "registry"]
