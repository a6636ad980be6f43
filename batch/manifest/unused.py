"""Settings that would change nothing are errors, not silences: a `--set` or `--endpoint` key that reaches
no task of the manifest, and a model name one typo away from a known one.

A `--set qualty=low` used to be dropped without a word (no kind knows `qualty`), and so was
`--set quality=high` on a manifest of chat tasks only: a night of drafts for one typo. Each such key is a
Problem here, located at `--set` or `--endpoint` (not at a manifest line), with a did-you-mean when a
known name is close.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from batch.errors import Problem
from batch.kind import Registry
from batch.manifest.fields import closest

_DIGITS = re.compile(r"\d+")
MODEL_CUTOFF = 0.9  # how close an unknown model name must be to a known one to be taken for a typo


def _guess(name: str, known: Iterable[str]) -> str:
    near = _near(name, known)
    return f"; did you mean {near!r}?" if near else ""


def _near(name: str, known: Iterable[str]) -> str | None:
    """A close name, or the one `name` abbreviates (`gen` for generate)."""
    known = sorted(known)
    starts = [candidate for candidate in known if name and candidate.startswith(name)]
    return closest(name, known) or (starts[0] if len(starts) == 1 else None)


def unused_overrides(overrides: Mapping[str, Any], registry: Registry, kinds: set[str]) -> list[Problem]:
    """`--set` keys that reach no task: a field no kind knows, a kind that is not one, a kind or a field
    that no task of this manifest has. `kinds`: the kinds the manifest's tasks are of. (A kind's own
    field, `--set chat.temprature=0`, is checked by the kind with the task's other fields.)"""
    problems = []
    all_known = set().union(*(kind.known_fields for kind in registry.values()))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and key not in registry:  # `--set gen.quality=low`
            near = _near(key, registry)
            guess = f"; did you mean {near}.{next(iter(value), '')}?" if near else ""
            message = f"{key!r} is not a task kind (one of {', '.join(registry)}){guess}"
            problems.append(_set(", ".join(f"{key}.{name}" for name in value), message))
            continue
        if isinstance(value, Mapping):  # kind.field=value
            if key not in kinds:
                problems.append(_set(key, f"this manifest has no {key} tasks (its tasks: {_listed(kinds)})"))
            continue
        if key not in all_known:
            scoped = key in registry  # `--set chat=3`: a kind given a value, not a field
            message = (
                f"is a task kind; set one of its fields with --set {key}.FIELD=VALUE"
                if scoped
                else "is not a field of any task kind" + _guess(key, all_known)
            )
            problems.append(_set(key, message))
            continue
        takers = [name for name in kinds if key in registry[name].known_fields]
        if not takers:
            owners = sorted(name for name, kind in registry.items() if key in kind.known_fields)
            problems.append(
                _set(
                    key,
                    f"is a field of {_listed(owners)} tasks; this manifest has none "
                    f"(its tasks: {_listed(kinds)})",
                )
            )
    return problems


def unused_endpoints(
    endpoints: Mapping[str, str], registry: Registry, kinds: set[str], models: set[str] | None
) -> list[Problem]:
    """`--endpoint KEY=ID` keys that choose the endpoint of no task: KEY names a kind or a model of the
    manifest (or is `*`, every task)."""
    problems = []
    for key in endpoints:
        if key == "*" or key in kinds or (models is not None and key in models):
            continue
        if models is None and (key in registry or not _near(key, registry)):
            continue  # it may be a model of a task the plan could not build
        if key in registry:
            message = f"this manifest has no {key} tasks (its tasks: {_listed(kinds)})"
        else:
            listed = f"kinds: {_listed(kinds)}" + ("" if models is None else f"; models: {_listed(models)}")
            message = f"is neither a task kind nor a model of this manifest ({listed})" + _guess(
                key, {*registry, *(models or ())}
            )
        problems.append(Problem("--endpoint", None, message, field=key))
    return problems


def mistyped_keys(
    section: str,
    keys: Iterable[Any],
    known: set[str],
    kinds: set[str],
    models: set[str],
    where: tuple[str, Callable[[str, Any], int | None]],
) -> list[Problem]:
    """Keys of the manifest's `endpoints:` or `prices:` that name no kind or model of its tasks but are one
    typo away from one (`gemini-2.5-flsh`): that endpoint or price would reach no task, without a word.
    `known`: names a key may be all the same (the kinds, the priced models); `where`: the manifest's name
    and its line_of (or a --prices file's, whose models are keys of no `section`: "")."""
    name, line_of = where
    plain = {_plain(model): model for model in models}
    problems = []
    for key in map(str, keys):
        if key in kinds or key in models or key in known or key == "*":
            continue
        near = plain.get(_plain(key)) or closest(key, models, MODEL_CUTOFF) or closest(key, kinds)
        # a typo keeps the numbers: gemini-2.0-flash beside the tasks' gemini-2.5-flash is another model
        # (a block reused across manifests), gemini-2.5-flsh a typo
        if near is not None and _DIGITS.findall(key) == _DIGITS.findall(near):
            message = f"is no kind or model of this manifest's tasks; did you mean {near!r}?"
            field = f"{section}.{key}" if section else key
            problems.append(Problem(name, line_of(section, key), message, field=field))
    return problems


def unknown_model(model: str, known: Iterable[str]) -> str | None:
    """A message when `model` is not known but looks like a typo of a known one (`gpt-image1`); None when
    it is known or not close to any (a model this tool has no price for yet)."""
    known = set(known)
    if model in known:
        return None
    plain = {_plain(name): name for name in known}
    near = plain.get(_plain(model)) or closest(model, known, MODEL_CUTOFF)
    if near is None:
        return None
    return (
        f"is not a known model; did you mean {near!r}? (a new model: give its price under prices:, "
        "or pass --allow-unknown)"
    )


def _plain(name: str) -> str:
    """A model name without case or separators: `GPT_image-1` and `gpt-image1` are one name."""
    return re.sub(r"[^a-z0-9.]", "", name.lower())


def _set(key: str, message: str) -> Problem:
    return Problem("--set", None, message, field=key)


def _listed(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none"
