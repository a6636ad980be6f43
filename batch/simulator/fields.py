"""Checks of single request fields, each failing with the 400 the real API gives for that field.

JSON values must have the right type already (`"n": "3"` and `"n": true` are refused); multipart values are
strings, which `form_int` parses first.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

from .errors import ApiError, invalid

_FORBIDDEN_WORD = re.compile(r"\bforbidden\b", re.IGNORECASE)
_INTEGER = re.compile(r"[+-]?\d+")


def is_blocked(text: str) -> bool:
    """The simulated safety system: refuses any text containing the word `forbidden`."""
    return _FORBIDDEN_WORD.search(text) is not None


def reject_unknown(body: Mapping[str, object], known: Collection[str]) -> None:
    """400 for the first field the endpoint does not take."""
    for name in body:
        if name not in known:
            raise invalid(name, f"Unrecognized request argument supplied: {name}", "unknown_parameter")


def missing(param: str) -> ApiError:
    return invalid(param, f"Missing required parameter: '{param}'.", "missing_required_parameter")


def wrong_type(param: str, expected: str) -> ApiError:
    return invalid(param, f"Invalid type for '{param}': expected {expected}.", "invalid_type")


def optional_str(body: Mapping[str, object], param: str) -> str | None:
    """A string field that may be absent (or null)."""
    value = body.get(param)
    if value is None:
        return None
    if not isinstance(value, str):
        raise wrong_type(param, "a string")
    return value


def required_str(body: Mapping[str, object], param: str) -> str:
    value = optional_str(body, param)
    if value is None:
        raise missing(param)
    return value


def choice(body: Mapping[str, object], param: str, allowed: tuple[str, ...], default: str) -> str:
    """A string that must be one of `allowed`."""
    value = optional_str(body, param)
    if value is None:
        return default
    if value not in allowed:
        listed = ", ".join(f"'{option}'" for option in allowed)
        raise invalid(param, f"Invalid value: '{value}'. Supported values are: {listed}.")
    return value


def integer(
    body: Mapping[str, object], param: str, low: int, high: int | None, default: int | None
) -> int | None:
    """An int within [low, high]; bools and floats are wrong types, as in the real API."""
    value = body.get(param)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type(param, "an integer")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise invalid(param, f"Invalid value for '{param}': {value}; it must be {bound}.")
    return value


def number(body: Mapping[str, object], param: str, low: float, high: float) -> float | None:
    """A float (or int) within [low, high]."""
    value = body.get(param)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise wrong_type(param, "a number")
    if not low <= value <= high:
        raise invalid(param, f"Invalid value for '{param}': {value}; it must be between {low} and {high}.")
    return float(value)


def form_int(fields: dict[str, object], param: str) -> None:
    """Turn a multipart string into an int in place, so the JSON rules apply to it after."""
    value = fields.get(param)
    if value is None:
        return
    if not isinstance(value, str) or not _INTEGER.fullmatch(value.strip()):
        raise wrong_type(param, "an integer")
    fields[param] = int(value.strip())
