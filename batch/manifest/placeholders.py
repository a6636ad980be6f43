"""Placeholders: `{name}` in a task's values, filled from an expansion's values (`{{` and `}}` for literal
braces), and the readable slugs that generated task ids are made of."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_](?:[\w .-]*[\w.-])?)\}")
SLUG_SPLIT = re.compile(r"[^A-Za-z0-9]+")
CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")  # where anyascii joined two syllables of a word


def placeholders_in(value: Any) -> set[str]:
    """Every placeholder name used in a value (strings inside lists and mappings included)."""
    return set(placeholders_in_order(value))


def placeholders_in_order(value: Any) -> list[str]:
    """placeholders_in, each name once, in the order they first appear: a mapping's values in its own
    order, a list's items, a string from left to right."""
    found: dict[str, None] = {}
    if isinstance(value, str):
        found.update(dict.fromkeys(m.group(1) for m in PLACEHOLDER.finditer(value) if m.group(1)))
    elif isinstance(value, Mapping | list):
        for item in value.values() if isinstance(value, Mapping) else value:
            found.update(dict.fromkeys(placeholders_in_order(item)))
    return list(found)


class MissingPlaceholder(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def render(value: Any, values: Mapping[str, Any]) -> Any:
    """`value` with its placeholders filled from `values`. Raises MissingPlaceholder."""
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole and whole.group(1):
            return _lookup(values, whole.group(1))
        return PLACEHOLDER.sub(lambda m: _fill(m, values), value)
    if isinstance(value, Mapping):
        return {key: render(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, values) for item in value]
    return value


def _fill(match: re.Match[str], values: Mapping[str, Any]) -> str:
    text = match.group(0)
    if text == "{{":
        return "{"
    if text == "}}":
        return "}"
    found = _lookup(values, match.group(1))
    return found if isinstance(found, str) else _text(found)


def _text(value: Any) -> str:
    """A value that is not a string, as JSON writes it: an int (a matrix's 0..999) as str() writes it,
    the same text at a twentieth of json.dumps's cost (a bool is not one: JSON writes true)."""
    return str(value) if type(value) is int else json.dumps(value, ensure_ascii=False)


def _lookup(values: Mapping[str, Any], name: str) -> Any:
    if name not in values:
        raise MissingPlaceholder(name)
    return values[name]


def slug(value: Any, limit: int = 40, transliterate: bool = False) -> str:
    """A short, file-name-safe, readable form of a value for ids: 'A black fox!' -> 'a-black-fox'. With
    `transliterate`, every script is written in Latin letters first (anyascii): 'Café crème' ->
    'cafe-creme', '一只狐狸' -> 'yi-zhi-hu-li'; without it (the ids of directories made before), letters
    beyond ASCII are dropped."""
    text = value if isinstance(value, str) else _text(value)
    if transliterate and not text.isascii():
        from anyascii import anyascii  # only for text beyond ASCII

        text = CAMEL.sub("-", anyascii(text))  # 'YiZhiHuLi' -> 'Yi-Zhi-Hu-Li'
    words = [w for w in SLUG_SPLIT.split(text.lower()) if w]
    out = ""
    for word in words:
        candidate = f"{out}-{word}" if out else word
        if len(candidate) > limit:
            return out or word[:limit]
        out = candidate
    return out
