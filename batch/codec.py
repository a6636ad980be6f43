"""JSON read and written through orjson where the bytes are not a contract: answers, manifest lines and the
lines of DIR read back, request bodies, the gallery's data. orjson parses a 500-byte line in a quarter of
the standard library's time and writes one in a tenth (BENCHMARKS.md).

The standard library stays the judge of what JSON is, so that every value reads and writes as it did:
- orjson refuses to read NaN or Infinity, a lone surrogate, a byte-order mark or UTF-16, and to write an
  integer beyond 64 bits or a key that is not a string: `loads` and `dumps` then hand the text or the value
  to `json`, which takes or refuses it as before;
- orjson reads an integer beyond 64 bits as a float, silently: a text with 19 digits in a row (where such
  an integer would be) is read by `json` alone.
The journals' own lines (results.jsonl, usage.jsonl, the run logs) are still written by `json`: their
spacing (`", "`, `": "`) is what users grep for and what the checkpoint's fast scan reads.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# An integer beyond 64 bits has 19 digits or more (20, or 19 after a minus sign): a text without 19 digits
# in a row holds none. They are looked for as 19 zeros once every digit is a zero, four times faster than a
# regular expression.
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(raw: bytes) -> Any:
    """`json.loads(raw)`, faster. Raises what `json.loads` raises (ValueError, RecursionError)."""
    return _loads(raw)[0]


def loads_answer(raw: bytes) -> Any:
    """`loads` for a server's JSON: a lone surrogate (half of a UTF-16 pair: a string cut in the middle
    of an emoji), which json reads but no UTF-8 file can hold, becomes U+FFFD, so that whatever the answer
    holds can be written to DIR. orjson refuses lone surrogates: only what json read is looked at (all of
    it: a surrogate may come escaped, as UTF-8 bytes json passes through, or in a UTF-16 body)."""
    value, by_json = _loads(raw)
    return without_surrogates(value) if by_json else value  # json's path is rare: walk all it read


def _loads(raw: bytes) -> tuple[Any, bool]:
    """The value, and whether json (not orjson) read it."""
    if _LONG_NUMBER not in raw.translate(_DIGITS_AS_ZEROS):
        try:
            return orjson.loads(raw), False
        except orjson.JSONDecodeError:
            pass  # for json to take (NaN, a lone surrogate, UTF-16) or to refuse with its own message
    return json.loads(raw), True


def clean_text(text: str) -> str:
    """`text` with each lone surrogate (from JSON, or a header byte that is not UTF-8, which aiohttp reads
    as one) replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def without_surrogates(value: Any) -> Any:
    """A JSON value with clean_text applied to every string in it, keys too (no recursion: a value nested
    as deep as json could read is walked as well)."""
    if isinstance(value, str):
        return clean_text(value)
    if not isinstance(value, dict | list):
        return value
    stack: list[dict[str, Any] | list[Any]] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            pairs = list(item.items())
            item.clear()
            for key, child in pairs:
                if isinstance(child, str):
                    child = clean_text(child)
                elif isinstance(child, dict | list):
                    stack.append(child)
                item[clean_text(key) if isinstance(key, str) else key] = child
        else:
            for index, child in enumerate(item):
                if isinstance(child, str):
                    item[index] = clean_text(child)
                elif isinstance(child, dict | list):
                    stack.append(child)
    return value


def dumps(value: Any) -> bytes:
    """Compact JSON of `value`, UTF-8, as `json.dumps(value, ensure_ascii=False, separators=(",", ":"))`
    means it: a float may be spelt differently (`0.00001` for `1e-05`), and NaN or Infinity, which json
    spells as the invalid `NaN`, is `null`. Raises what json raises for what neither can write."""
    try:
        return orjson.dumps(value)
    except TypeError:  # non-string keys, an integer beyond 64 bits, nesting deeper than orjson's 254 levels
        return _compact(value).encode()
