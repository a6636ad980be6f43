"""Declarative rules for request fields: the vocabulary the task kinds in ``jobs/`` state their API limits in.

Pure functions over plain data, so that every rule of the API can be checked before anything is sent and
tested without a server.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MISSING: Any = object()


@dataclass(frozen=True)
class FieldIssue:
    """A field's value breaks a rule. `value` is MISSING when the field is absent."""

    field: str
    message: str
    value: Any = MISSING
    guess: bool = False  # the field or value looks like a typo of a known one; --allow-unknown sends it as is


@dataclass(frozen=True)
class Rule:
    """Base rule: a named field, optionally required. Subclasses check the value's type and range."""

    name: str
    required: bool = False

    def check(self, value: Any) -> str | None:
        """A message saying what is wrong with `value`, or None when it is fine."""
        return None


@dataclass(frozen=True)
class Text(Rule):
    max_len: int | None = None
    non_empty: bool = False

    def check(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return f"must be a string, not {type_name(value)}"
        if self.non_empty and not value.strip():
            return "must not be empty"
        if self.max_len is not None and len(value) > self.max_len:
            return f"is {len(value):,} characters long; the limit is {self.max_len:,}"
        return None


@dataclass(frozen=True)
class Choice(Rule):
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> str | None:
        if not isinstance(value, str) or value not in self.choices:
            return "must be one of " + ", ".join(self.choices)
        return None


@dataclass(frozen=True)
class IntRange(Rule):
    low: int | None = None
    high: int | None = None

    def check(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, not {type_name(value)}"
        return _range_message(value, self.low, self.high)


@dataclass(frozen=True)
class NumberRange(Rule):
    low: float | None = None
    high: float | None = None

    def check(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, not {type_name(value)}"
        return _range_message(value, self.low, self.high)


@dataclass(frozen=True)
class Boolean(Rule):
    def check(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else f"must be true or false, not {type_name(value)}"


@dataclass(frozen=True)
class Anything(Rule):
    """A field the project passes through unchecked."""


def _range_message(value: float, low: float | None, high: float | None) -> str | None:
    if low is not None and high is not None and not low <= value <= high:
        return f"must be between {low} and {high}"
    if low is not None and value < low:
        return f"must be at least {low}"
    if high is not None and value > high:
        return f"must be at most {high}"
    return None


class RuleSet(tuple[Rule, ...]):
    """A kind's rules, as a tuple, that remembers which of them have something to say of a task's fields
    by the fields' names (the tasks of a manifest mostly share them): check_rules then goes over those
    rules alone, in order, rather than over each of a dozen for every task (about 6,000 instructions less
    a chat task). The others are passed over without a word either way: absent and not required."""

    KEEP = 256  # sets of field names remembered; past it, worked out each time

    def __init__(self, rules: Iterable[Rule]) -> None:
        self._met: dict[tuple[Any, ...], tuple[Rule, ...]] = {}

    def met(self, fields: Mapping[str, Any]) -> tuple[Rule, ...]:
        """The rules of the fields `fields` has, and the required ones it lacks, in order."""
        names = tuple(fields)
        found = self._met.get(names)
        if found is None:
            found = tuple(rule for rule in self if rule.required or rule.name in fields)
            if len(self._met) < self.KEEP:
                self._met[names] = found
        return found


def type_name(value: Any) -> str:
    """The YAML/JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return type(value).__name__


def check_rules(
    fields: Mapping[str, Any],
    rules: Sequence[Rule],
    *,
    allow_unknown: bool = False,
    also_known: Iterable[str] = (),
    hint: str = "",
) -> list[FieldIssue]:
    """Every issue of `fields` against `rules`: missing required fields, bad values, and (unless
    `allow_unknown`) fields no rule names, with a suggestion for a likely typo and the kind's `hint` (what
    to do with a field it does not know)."""
    issues: list[FieldIssue] = []
    for rule in rules.met(fields) if isinstance(rules, RuleSet) else rules:
        if rule.name not in fields:
            if rule.required:
                issues.append(FieldIssue(rule.name, "is required"))
            continue
        message = rule.check(fields[rule.name])
        if message:
            issues.append(FieldIssue(rule.name, message, fields[rule.name]))
    if not allow_unknown:
        known = {rule.name for rule in rules} | set(also_known)
        for name in fields:
            if name not in known:
                issues.append(FieldIssue(name, unknown_field_message(name, known, hint), fields[name]))
    return issues


def closest(name: str, known: Iterable[str], cutoff: float = 0.75) -> str | None:
    """The known name `name` most likely misspells, if one is close enough."""
    found = difflib.get_close_matches(name, sorted(known), n=1, cutoff=cutoff)
    return found[0] if found else None


def unknown_field_message(name: str, known: Iterable[str], hint: str = "") -> str:
    """'is not a known field', with a did-you-mean when a known name is close, and `hint` in brackets."""
    close = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.75)
    guess = f"; did you mean {close[0]!r}?" if close else ""
    return f"is not a known field{guess}" + (f" ({hint})" if hint else "")
