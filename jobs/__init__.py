"""The task kinds, one module each. A new kind is a new module here and a line in KINDS."""

from __future__ import annotations

from batch.kind import Registry, TaskKind
from jobs import chat, edit, generate

KINDS: tuple[TaskKind, ...] = (generate, edit, chat)


def registry() -> Registry:
    """Kind name -> kind."""
    return {kind.name: kind for kind in KINDS}


__all__ = ["KINDS", "registry"]
