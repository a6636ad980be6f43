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
from typing import Any

import orjson

# An integer beyond 64 bits has 19 digits or more (20, or 19 after a minus sign): a text without 19 digits
# in a row holds none. They are looked for as 19 zeros once every digit is a zero, four times faster than a
# regular expression.
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def loads(raw: bytes) -> Any:
    """`json.loads(raw)`, faster. Raises what `json.loads` raises (ValueError, RecursionError)."""
    if _LONG_NUMBER not in raw.translate(_DIGITS_AS_ZEROS):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # for json to take (NaN, a lone surrogate, UTF-16) or to refuse with its own message
    return json.loads(raw)


def dumps(value: Any) -> bytes:
    """Compact JSON of `value`, UTF-8, as `json.dumps(value, ensure_ascii=False, separators=(",", ":"))`
    means it: a float may be spelt differently (`0.00001` for `1e-05`), and NaN or Infinity, which json
    spells as the invalid `NaN`, is `null`. Raises what json raises for what neither can write."""
    try:
        return orjson.dumps(value)
    except TypeError:  # non-string keys, an integer beyond 64 bits, nesting deeper than orjson's 254 levels
        return _compact(value).encode()
