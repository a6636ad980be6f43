"""batch.codec reads and writes JSON as the standard library does, faster: json is the oracle for every
text, including those orjson reads differently or refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from batch import codec

TEXTS = [
    b'{"id": "t1", "usage": {"prompt_tokens": 10, "total_tokens": 36}, "cost": 6.8e-05}',
    b'{"a": 1, "a": 2}',  # the last of two keys wins
    b"[1.0, -0.0, 1E2, 0.1, 1e-07, 5e-324, 1.7976931348623157e308]",
    b"[9223372036854775807, -9223372036854775808, 18446744073709551615]",  # 64 bits: orjson reads them
    b"[18446744073709551616]",  # one past 64 bits: orjson reads a float
    b"[-9223372036854775809]",  # one below: 19 digits after a minus sign
    b'{"seed": 123456789012345678901234567890}',
    b"[1e400, -1e400]",  # json: infinity; orjson: refused
    b"[NaN, Infinity, -Infinity]",
    b'["\\ud800"]',  # a lone surrogate
    b'"\\u00e9 \xc3\xa9 \\u0000"',
    b"\xef\xbb\xbf{}",  # a byte-order mark: json refuses it in a str only
    '{"prompt": "a red fox"}'.encode("utf-16"),
    b"  {}  ",
]
NOT_JSON = [b"", b"{", b"{'a': 1}", b"[1,]", b"\xff\xfe\xfd", b"nul", b"[" * 100_000 + b"]" * 100_000]


@pytest.mark.parametrize("text", TEXTS)
def test_loads_reads_what_json_reads(text: bytes) -> None:
    expected = json.loads(text)
    found = codec.loads(text)
    assert repr(found) == repr(expected)  # equal values of the same types: an int stays an int


@pytest.mark.parametrize("text", NOT_JSON)
def test_loads_refuses_what_json_refuses(text: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)) as expected:
        json.loads(text)
    with pytest.raises(type(expected.value)):
        codec.loads(text)


VALUES: list[Any] = [
    {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "é <b> \u2028"}], "n": 2},
    {"temperature": 1e-05, "top_p": 0.95, "big": 1e16, "neg": -0.0},
    {"seed": 2**70},  # beyond 64 bits: json writes it
    {1: "a", "b": [True, False, None]},  # a key that is not a string: json writes "1"
    (1, [2, (3,)]),
]


@pytest.mark.parametrize("value", VALUES)
def test_dumps_writes_what_json_reads_back_as_json_writes_it(value: Any) -> None:
    written = codec.dumps(value)
    assert isinstance(written, bytes)
    assert json.loads(written) == json.loads(json.dumps(value))


def test_dumps_writes_the_bytes_json_writes_compact_when_there_is_no_float() -> None:
    value = {"model": "m", "messages": [{"role": "user", "content": 'é <b> \u2028 \\ "'}], "n": [2, None]}
    assert codec.dumps(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def test_dumps_refuses_what_json_cannot_write() -> None:
    with pytest.raises(TypeError):
        codec.dumps({"when": object()})
