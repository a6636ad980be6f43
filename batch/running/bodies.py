"""What comes back from a server, as bytes: bodies inflated under the size cap (gzip and deflate, a piece at
a time), server-sent events split into their data, error bodies read into a message, and the API key
scrubbed out of all of it before anything is parsed, cut, logged or kept. No network here: the client
(`running/client.py`) feeds these the pieces it reads.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import AsyncIterator, Mapping
from html import unescape
from typing import Any

import anyio

from batch import codec
from batch.errors import BrokenAnswerError
from batch.output import store
from batch.output.store import MAX_DEPTH, too_deep

ERROR_BODY_LIMIT = 64 * 2**10
THREAD_DECODE_BYTES = 256 * 2**10  # JSON bigger than this is decoded off the event loop
ACCEPT_ENCODING = "gzip, deflate"  # what Inflater can decode within the cap; never br or zstd
REDACTED = store.REDACTED.decode()  # what a key is replaced by, in what a server sends and in DIR's lines
PARTIAL_KEY = store.SECRET_MIN  # so many of the key's first (or last) characters are a piece of it


class Scrubber:
    """Takes the API key out of whatever a server sends back: it must never reach a log or a file."""

    def __init__(self, key: str) -> None:
        # A "key" of a few characters is no secret (tests, a local proxy): scrubbing it would only mangle
        # every answer that happens to contain those characters.
        self.key = key if len(key) >= PARTIAL_KEY else ""
        self._key_bytes = self.key.encode()

    def text(self, value: str) -> str:
        """`value` (a message, a header: short) without the key, nor a piece of it cut where an excerpt
        began or ended (PARTIAL_KEY of its first or last characters and more, anywhere: aiohttp cuts the
        line it quotes in a parse error at some 100 bytes)."""
        key = self.key
        if not key:
            return value
        value = value.replace(key, REDACTED)
        head, tail = key[:PARTIAL_KEY], key[-PARTIAL_KEY:]
        if head not in value and tail not in value:
            return value
        start = value.find(head)
        while start >= 0:  # a head: as much of the key as follows
            end = start + PARTIAL_KEY
            while end < len(value) and end - start < len(key) and value[end] == key[end - start]:
                end += 1
            value = value[:start] + REDACTED + value[end:]
            start = value.find(head, start + len(REDACTED))
        end = value.find(tail)
        while end >= 0:  # a tail: as much of the key as comes before
            start, stop = end, end + PARTIAL_KEY
            size = len(key) - PARTIAL_KEY
            while start > 0 and stop - start < len(key) and value[start - 1] == key[size - 1]:
                start -= 1
                size -= 1
            value = value[:start] + REDACTED + value[stop:]
            end = value.find(tail, start + len(REDACTED))
        return value

    def bytes(self, value: bytes, cut: bool = False) -> bytes:
        if not self.key or (not cut and self._key_bytes not in value):
            return value  # the common case: one scan, no copy
        value = value.replace(self._key_bytes, REDACTED.encode())
        if cut:
            for size in range(len(self.key) - 1, min(PARTIAL_KEY, len(self.key)) - 1, -1):
                if value.endswith(self._key_bytes[:size]):
                    return value[:-size] + REDACTED.encode()
        return value


def too_large(limit: int, size: str = "") -> BrokenAnswerError:
    said = f" is {size};" if size else " is over"
    return BrokenAnswerError(
        f"the answer{said} the limit of {limit:,} bytes (--max-answer-mb), counted after decompression",
        error_type="answer_too_large",
    )


ERROR_MESSAGE_LIMIT = 2000  # characters of a server's error message kept
# Content-codings an answer may name in its message (RFC 9110's registry and common ones): any other value
# is not repeated back, since a server can put anything there (the key it was sent)
_KNOWN_CODINGS = frozenset({"br", "zstd", "compress", "x-compress", "dcb", "dcz", "exi", "pack200-gzip"})


GZIP_MAGIC = b"\x1f\x8b"


class Inflater:
    """Content-Encoding gzip or deflate, inflated a piece at a time and never past `limit` bytes. A gzip
    body of several members (RFC 1952 allows it) is inflated member after member."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.encoding = encoding.strip().lower()
        self.limit = limit
        self.produced = 0
        self._zlib: Any = None
        if self.encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.encoding == "deflate":
            self._zlib = zlib.decompressobj()
        # a coding not asked for: its bytes are read as they are (under the cap), for `refusal`
        self.unknown = self.encoding not in ("", "identity", "gzip", "x-gzip", "deflate")
        self._first = True

    def refusal(self, raw: bytes) -> BrokenAnswerError:
        """The failure of an answer in a coding not asked for: it arrived, so it may have been paid for,
        and asking again would buy it again, encoded the same way. `raw`: its bytes, for DIR/answers/."""
        named = repr(self.encoding) if self.encoding in _KNOWN_CODINGS else "a coding it did not ask for"
        return BrokenAnswerError(
            f"the answer is encoded as {named} (Accept-Encoding: {ACCEPT_ENCODING})",
            error_type="unreadable_answer",
            raw=raw,
        )

    @property
    def active(self) -> bool:
        return self._zlib is not None

    def feed(self, data: bytes) -> bytes:
        if self._zlib is None:
            self.produced += len(data)
            if self.produced > self.limit:
                raise too_large(self.limit)
            return data
        if (
            self._first
            and data
            and self.encoding != "deflate"
            and not data.startswith(GZIP_MAGIC[: len(data)])
        ):
            # labelled gzip, sent as it is (a gateway's mislabel): read as it is, under the same cap. It was
            # taken for a corrupt body and bought again, each time the same
            self._zlib = None
            return self.feed(data)
        try:
            out = self._zlib.decompress(data, self.limit - self.produced + 1)
        except zlib.error:
            if not (self._first and self.encoding == "deflate"):
                raise BrokenAnswerError("the answer's compressed body is corrupt", retry=True) from None
            self._first = False
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)  # "deflate" sent raw, as some servers do
            return self.feed(data)
        self._first = False
        self.produced += len(out)
        if self.produced > self.limit or self._zlib.unconsumed_tail:
            raise too_large(self.limit)
        if not (self._zlib.eof and self._zlib.unused_data and self.encoding != "deflate"):
            return bytes(out)
        pieces = [bytes(out)]
        while self._zlib.eof and self._zlib.unused_data:  # the next gzip member (a loop: there may be many)
            rest = self._zlib.unused_data
            if not rest.strip(b"\0 \t\r\n"):  # zeros or a line end after the last member: padding
                break
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                more = self._zlib.decompress(rest, self.limit - self.produced + 1)
            except zlib.error:
                raise BrokenAnswerError("the answer's compressed body is corrupt", retry=True) from None
            self.produced += len(more)
            if self.produced > self.limit or self._zlib.unconsumed_tail:
                raise too_large(self.limit)
            pieces.append(more)
        return b"".join(pieces)

    def finish(self) -> bytes:
        if self._zlib is None:
            return b""
        out = self._zlib.flush()
        self.produced += len(out)
        return bytes(out)


async def inflated(pieces: AsyncIterator[bytes], inflater: Inflater, raw: bytearray) -> AsyncIterator[bytes]:
    """The decoded pieces of a body, kept in `raw` too, never more than the inflater's limit."""
    async for piece in pieces:
        out = inflater.feed(piece)
        raw += out
        yield out
    out = inflater.finish()
    if inflater.produced > inflater.limit:
        raise too_large(inflater.limit)
    raw += out
    yield out


async def decode_json(raw: bytes, content_type: str) -> Any:
    try:
        if len(raw) > THREAD_DECODE_BYTES:
            body = await anyio.to_thread.run_sync(codec.loads_answer, raw)
        else:
            body = codec.loads_answer(raw)
        refuse_deep(raw, body)
        return body
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        beyond = beyond_reading(exc)
        if beyond is not None:  # whole, but past what can be read: asked again, it comes the same
            raise BrokenAnswerError(
                f"the answer is JSON that cannot be read here: {beyond}",
                error_type="unreadable_answer",
                raw=raw,
            ) from None
        # Not an answer of the API's (a gateway's page, a body cut short): the request goes again.
        raise BrokenAnswerError(
            f"the answer is not JSON ({content_type or 'no content type'}): {snippet(raw)}",
            retry=True,
            raw=raw,
        ) from None


def beyond_reading(exc: BaseException) -> str | None:
    """What makes JSON that arrived whole unreadable here (nesting past the parser's recursion limit, an
    integer of more than 4,300 digits), or None for JSON that is not JSON (garbled on the way). A body cut
    or garbled in transit does not come out as either: the first was bought 12 times in a minute, each
    retry taken for an outage, and nothing kept."""
    if isinstance(exc, RecursionError):
        return f"nested too deeply to read ({MAX_DEPTH} levels are kept)"
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return "an integer of more digits than Python reads (4,300)"
    return None


def refuse_deep(raw: bytes, value: Any) -> None:
    """An answer nested deeper than the journals keep (store.MAX_DEPTH): it arrived whole, so it is kept
    in answers/ and its task fails, not bought again; written into results.jsonl, every reader would
    have skipped the line."""
    if isinstance(value, dict | list) and too_deep(value):
        raise BrokenAnswerError(
            f"the answer is nested more than {MAX_DEPTH} levels deep: more than can be kept",
            error_type="unreadable_answer",
            raw=raw,
        )


BOM = b"\xef\xbb\xbf"
_LINE_END = re.compile(rb"\r\n|\r|\n")
_BLANK = b" \t\r\n"


def is_event_stream(raw: bytes) -> bool:
    """Whether a body reads as server-sent events (sent under another content type): its first line that
    is not blank is a field of one."""
    return raw.removeprefix(BOM).lstrip(_BLANK).startswith((b"data:", b":", b"event:", b"id:", b"retry:"))


def is_json_object(raw: bytes | bytearray) -> bool:
    return bytes(raw[:64]).removeprefix(BOM).lstrip(_BLANK).startswith(b"{")


async def sse_data(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The data of each event: `data:` lines joined, events separated by a blank line. Comments (`:`),
    `event:`, `id:` and `retry:` lines are skipped; lines end in LF, CRLF or CR, and a byte order mark
    that begins the stream is dropped (the event-stream format's rules: a first event read with it was
    passed by, and an answer lost its first words)."""
    buffer = bytearray()
    data_lines: list[bytes] = []
    first = True
    async for piece in pieces:
        buffer += piece
        if first:
            if len(buffer) < len(BOM) and BOM.startswith(bytes(buffer)):
                continue  # the mark may be cut across pieces
            if buffer.startswith(BOM):
                del buffer[: len(BOM)]
            first = False
        start = 0
        for end in _LINE_END.finditer(buffer):
            if end.group() == b"\r" and end.end() == len(buffer):
                break  # the first half of a CRLF, perhaps: its line ends with the next piece
            line = bytes(buffer[start : end.start()])
            start = end.end()
            if not line:
                if data_lines:
                    yield b"\n".join(data_lines)
                    data_lines = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data_lines.append(value[1:] if value.startswith(b" ") else value)
        del buffer[:start]
    line = bytes(buffer.removeprefix(BOM) if first else buffer).rstrip(b"\r")
    if line.startswith(b"data:"):
        data_lines.append(line[6:] if line.startswith(b"data: ") else line[5:])
    if data_lines:
        yield b"\n".join(data_lines)


def last_usage(chunks: list[Any]) -> dict[str, Any] | None:
    for chunk in reversed(chunks):
        if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
            usage: dict[str, Any] = chunk["usage"]
            return usage
    return None


def running_usage(chunks: Any) -> bool:
    """Whether a stream's last usage came on a chunk of its choices (a gateway that sends the count so
    far on every chunk), not on a usage chunk of its own (`choices: []`, sent once the choices finished)."""
    if not isinstance(chunks, list):
        return False
    for chunk in reversed(chunks):
        if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
            return bool(chunk.get("choices"))
    return False


# Gemini's error statuses (google.rpc.Code names), for an error body that names no HTTP status.
_RPC_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
_TYPE_STATUS = (
    ("insufficient_quota", 429),
    ("rate_limit", 429),
    ("invalid_api_key", 401),
    ("authentication", 401),
    ("permission", 403),
    ("not_found", 404),
    ("overloaded", 503),
    ("unavailable", 503),
    ("timeout", 504),
    ("server_error", 500),
    ("internal", 500),
)


def embedded_status(error: Mapping[str, Any]) -> int:
    """The HTTP status an error body sent with a 2xx stands for: its own number if it gives one, else
    what its type, code or status name means; a request the API refused (400) if nothing says more."""
    for key in ("status", "code", "http_status"):
        value = error.get(key)
        if isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
            return value
    status = error.get("status")
    if isinstance(status, str) and status.upper() in _RPC_STATUS:
        return _RPC_STATUS[status.upper()]
    words = f"{error.get('type')} {error.get('code')}".lower()
    for word, code in _TYPE_STATUS:
        if word in words:
            return code
    return 400


def error_usage(raw: bytes) -> dict[str, Any] | None:
    """The `usage` an error body reports beside its error (what the server says it billed), or None."""
    if b'"usage"' not in raw:
        return None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    usage = body.get("usage") if isinstance(body, dict) else None
    return usage if isinstance(usage, dict) else None


def unwrapped_error(body: Any) -> Any:
    """An error body as Google's APIs (Gemini's OpenAI-compatible layer among them) write it, a list of one
    object, `[{"error": {"code": 429, "message": ..., "status": "RESOURCE_EXHAUSTED"}}]`: that object.
    Any other body as it is."""
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict) and "error" in body[0]:
        return body[0]
    return body


def error_details(raw: bytes, reason: str) -> tuple[str, str | None, str | None]:
    """(message, type, code) from an OpenAI-style error body (or Google's, a list of one), or a readable
    message from anything else."""
    try:
        body = unwrapped_error(json.loads(raw))
    except (ValueError, UnicodeDecodeError, RecursionError):
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            error_type = error.get("type")
            return (
                str(error.get("message") or reason)[:ERROR_MESSAGE_LIMIT],
                None if error_type is None else str(error_type),
                None if code is None else str(code),
            )
        if isinstance(error, str):
            return error[:ERROR_MESSAGE_LIMIT], None, None
        if isinstance(body.get("message"), str):
            return body["message"][:ERROR_MESSAGE_LIMIT], None, None
    text = raw.decode("utf-8", "replace")
    title = re.search(r"<title[^>]*>(.*?)</title>", text[:ERROR_BODY_LIMIT], re.IGNORECASE | re.DOTALL)
    if title:
        return f"{reason} (an HTML page: {unescape(title.group(1)).strip()[:120]})".strip(), None, None
    return (f"{reason}: {snippet(raw)}" if raw.strip() else reason or "no message"), None, None


def short(value: str, limit: int = 80) -> str:
    """An error's type or code, as a short identifier (it names the failure in result lines)."""
    return " ".join(value.split())[:limit]


def snippet(raw: bytes, limit: int = 120) -> str:
    text = " ".join(raw[: limit * 2].decode("utf-8", "replace").split())
    return repr(text[:limit] + ("..." if len(raw) > limit else ""))
