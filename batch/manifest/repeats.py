"""A key written twice in one JSON object (`{"prompt": "x", "prompt": "y"}`): JSON parsers keep the last
without a word, so the first value would be dropped and a task sent with the other. Each JSONL line read
(a manifest's tasks, a for_each's records) is checked, and a repeat is a located problem.

The check is on the hot path of validation (a million lines), so a line whose keys cannot repeat is let
through by counting bytes. Every key written ends in a colon after a quote or a blank (`"prompt":`,
`"prompt" :`): when the parsed value holds as many keys as the line has such colons, none was lost. Only
a line with more of them than keys (JSON quoted inside a prompt) is parsed again, slowly, to find out.
"""

from __future__ import annotations

import json
from typing import Any

REPEATED = "is written twice on the line (JSON keeps the last and drops the first without a word)"


def repeated_key(raw: bytes, value: dict[str, Any]) -> str | None:
    """The first key written twice in the JSON text `raw` (which parsed to `value`), as a path
    (`prompt`, `body.messages`, `messages[1].content`); None when no key repeats."""
    top = len(value)
    colons = raw.count(b":")
    if colons <= top:  # most lines: no colon but the keys'
        return None
    ends = raw.count(b'":')
    if ends < colons:  # a colon not after a quote: inside a string, or a key's after a space or a tab
        ends += raw.count(b" :")
        if b"\t" in raw:  # JSON's other blanks, rare (a string holds them escaped)
            ends += raw.count(b"\t:")
        if b"\r" in raw:
            ends += raw.count(b"\r:")
    if b"\\" in raw and b'\\\\"' not in raw:
        # `\":` is an escaped quote inside a string (JSON in a prompt), unless the backslash before the
        # quote is itself escaped (a key ending in a backslash): then it is counted as a key's end
        ends -= raw.count(b'\\":')
    if ends <= top or ends <= _keys(value):
        return None
    return _first_repeat(raw)


def _keys(value: dict[str, Any]) -> int:
    """How many keys `value` holds, at every depth."""
    count = len(value)
    for item in value.values():
        if type(item) is dict:
            count += _keys(item)
        elif type(item) is list:
            count += _keys_in_list(item)
    return count


def _keys_in_list(items: list[Any]) -> int:
    count = 0
    for item in items:
        if type(item) is dict:
            count += _keys(item)
        elif type(item) is list:
            count += _keys_in_list(item)
    return count


class _Read(dict[str, Any]):
    """An object as read, with the first of its keys that was written twice."""

    repeated: str | None = None


def _read_pairs(pairs: list[tuple[str, Any]]) -> _Read:
    read = _Read()
    for key, item in pairs:
        if key in read and read.repeated is None:
            read.repeated = key
        read[key] = item
    return read


def _first_repeat(raw: bytes) -> str | None:
    try:
        value = json.loads(raw, object_pairs_hook=_read_pairs)
    except (ValueError, RecursionError):  # read already by the caller: not met
        return None
    return _path_of_repeat(value, "")


def _path_of_repeat(value: Any, path: str) -> str | None:
    """The path of the first repeated key in `value`, objects before what they hold."""
    if isinstance(value, _Read):
        if value.repeated is not None:
            return f"{path}.{value.repeated}" if path else value.repeated
        items = ((f"{path}.{key}" if path else key, item) for key, item in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for where, item in items:
        found = _path_of_repeat(item, where)
        if found is not None:
            return found
    return None
