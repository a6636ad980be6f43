"""The HTTP client: one aiohttp session, requests as the kinds describe them, answers as parsed bodies.

This is the only module that knows aiohttp's exceptions; it translates them into ``batch.errors``. It reads
every body through a size cap that holds on the bytes after decoding (it inflates gzip and deflate itself,
so a small compressed bomb cannot exhaust memory), and it scrubs the API key out of every byte and header a
server sends back before anything is parsed, cut, logged or kept.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from html import unescape
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import anyio

from batch import __version__
from batch.defaults import DEFAULT_BASE_URL, DEFAULT_MAX_BODY, DEFAULT_TIMEOUT
from batch.errors import ApiStatusError, BrokenAnswerError, ConfigError, TransportError
from batch.kind import ApiRequest
from batch.running.retry import parse_retry_after

ERROR_BODY_LIMIT = 64 * 2**10
THREAD_DECODE_BYTES = 256 * 2**10  # JSON bigger than this is decoded off the event loop
REQUEST_ID_HEADER = "X-Client-Request-Id"
SERVER_REQUEST_ID_HEADER = "x-request-id"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ACCEPT_ENCODING = "gzip, deflate"  # what _Inflater can decode within the cap; never br or zstd
DOWNLOAD_REDIRECTS = 5
REDACTED = "[redacted]"
PARTIAL_KEY = 8  # a cut body ending in this many of the key's first characters has that tail redacted
_encode = json.JSONEncoder(ensure_ascii=False).encode  # built once, not per request


@dataclass(frozen=True)
class ClientConfig:
    base_url: str = DEFAULT_BASE_URL
    api_key: str = field(default="", repr=False)
    timeout: float = DEFAULT_TIMEOUT  # one attempt, seconds
    connect_timeout: float = 30.0
    max_body_bytes: int = DEFAULT_MAX_BODY
    connections: int = 100

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"the base URL must be an http(s) URL, not {self.base_url!r}")


@dataclass(frozen=True)
class Reply:
    """A 2xx answer: its body parsed (a JSON value, or the list of chunks of a stream), its raw bytes
    (decoded, key scrubbed) and whether it ended as it should (a stream's `data: [DONE]`)."""

    status: int
    body: Any
    seconds: float
    server_request_id: str | None = None
    raw: bytes = b""
    ended: bool = True


class Scrubber:
    """Takes the API key out of whatever a server sends back: it must never reach a log or a file."""

    def __init__(self, key: str) -> None:
        # A "key" of a few characters is no secret (tests, a local proxy): scrubbing it would only mangle
        # every answer that happens to contain those characters.
        self.key = key if len(key) >= PARTIAL_KEY else ""
        self._key_bytes = self.key.encode()

    def text(self, value: str, cut: bool = False) -> str:
        """`value` without the key; `cut`: it was cut short, so a key's head at its end goes too."""
        if not self.key:
            return value
        value = value.replace(self.key, REDACTED)
        if cut:
            for size in range(len(self.key) - 1, min(PARTIAL_KEY, len(self.key)) - 1, -1):
                if value.endswith(self.key[:size]):
                    return value[:-size] + REDACTED
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


class ApiClient:
    """Sends ApiRequests to `{base_url}/{endpoint}/{path}` over one connection pool."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.scrub = Scrubber(config.api_key)
        self._session: aiohttp.ClientSession | None = None
        base = urlsplit(config.base_url)
        self._origin = _origin(base.scheme, base.hostname, base.port)

    async def __aenter__(self) -> ApiClient:
        host = urlsplit(self.config.base_url).hostname or ""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.connections, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=self.config.timeout, connect=self.config.connect_timeout),
            # Proxies from the environment, except for a server on this machine (the simulator).
            trust_env=host not in LOOPBACK_HOSTS,
            headers={"User-Agent": f"maas-batch/{__version__}", "Accept-Encoding": ACCEPT_ENCODING},
            # Bodies are inflated here, under the size cap; aiohttp's own inflating knows no cap.
            auto_decompress=False,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, endpoint: str, path: str) -> str:
        return f"{self.config.base_url.rstrip('/')}/{quote(endpoint, safe='')}/{path}"

    async def send(self, endpoint: str, request: ApiRequest, request_id: str) -> Reply:
        """One attempt. Raises ApiStatusError, TransportError or BrokenAnswerError."""
        assert self._session is not None, "use ApiClient as an async context manager"
        headers = {"Authorization": f"Bearer {self.config.api_key}", REQUEST_ID_HEADER: request_id}
        data: bytes | aiohttp.FormData
        if request.form is not None:
            data = aiohttp.FormData()
            for part in request.form:
                data.add_field(part.name, part.value, filename=part.filename, content_type=part.content_type)
        else:
            data = _encode(request.json).encode()
            headers["Content-Type"] = "application/json"
        if request.stream:
            headers["Accept"] = "text/event-stream"
        started = time.monotonic()
        async with (
            self._translated(),
            self._session.post(
                self.url(endpoint, request.path), data=data, headers=headers, allow_redirects=False
            ) as response,
        ):
            body, raw, ended = await self._read(response, request.stream)
            server_id = response.headers.get(SERVER_REQUEST_ID_HEADER)
            return Reply(
                response.status,
                body,
                time.monotonic() - started,
                None if server_id is None else self.scrub.text(server_id)[:200],
                raw,
                ended,
            )
        raise AssertionError("unreachable")  # pragma: no cover (_translated re-raises)

    async def download(self, url: str) -> bytes:
        """The bytes behind an image `url` of an answer, under the same caps and timeouts as an answer.
        The key goes along only to the API's own origin, never to another host. Raises ApiStatusError,
        TransportError or BrokenAnswerError (not an http(s) URL, over the size cap)."""
        assert self._session is not None, "use ApiClient as an async context manager"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BrokenAnswerError(f"an image URL must be http(s), not {self.scrub.text(url)[:120]!r}")
        same_origin = _origin(parts.scheme, parts.hostname, parts.port) == self._origin
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if same_origin else {}
        async with (
            self._translated(),
            self._session.get(
                url,
                headers=headers,
                # A redirect could carry the key elsewhere: with the key, none is followed.
                allow_redirects=not same_origin,
                max_redirects=DOWNLOAD_REDIRECTS,
            ) as response,
        ):
            if not 200 <= response.status < 300:
                raw = await self._read_capped(response, ERROR_BODY_LIMIT, truncate=True)
                raise self._status_error(response, raw)
            return await self._read_capped(response, self.config.max_body_bytes)
        raise AssertionError("unreachable")  # pragma: no cover

    def _translated(self) -> _Translate:
        return _Translate(self)

    async def _read(self, response: aiohttp.ClientResponse, stream: bool) -> tuple[Any, bytes, bool]:
        if not 200 <= response.status < 300:
            raw = await self._read_capped(response, ERROR_BODY_LIMIT, truncate=True)
            raise self._status_error(response, raw)
        content_type = self.scrub.text(response.headers.get("Content-Type", ""))[:100]
        if stream and content_type.startswith("text/event-stream"):
            return await self._read_events(response)
        raw = await self._read_capped(response, self.config.max_body_bytes)
        body = await _decode_json(raw, content_type)
        if (
            isinstance(body, dict)
            and isinstance(body.get("error"), dict | str)
            and not body.get("data")
            and not body.get("choices")
        ):
            raise self._embedded_error(response, body["error"])
        return body, raw, True

    async def _read_capped(
        self, response: aiohttp.ClientResponse, limit: int, truncate: bool = False
    ) -> bytes:
        """The body, decoded and scrubbed, refusing (or for error pages, cutting) anything over `limit`
        bytes after decoding."""
        buffer = bytearray()
        try:
            inflater = _Inflater(response.headers.get("Content-Encoding", ""), limit)
            length = response.content_length
            if not inflater.active and length is not None and length > limit:
                raise _too_large(limit, f"{length:,} bytes")
            async for piece in response.content.iter_chunked(1 << 16):
                buffer += inflater.feed(piece)
                if len(buffer) > limit:
                    raise _too_large(limit)
            buffer += inflater.finish()
            if len(buffer) > limit:
                raise _too_large(limit)
        except BrokenAnswerError:
            if not truncate:
                raise
            return self.scrub.bytes(bytes(buffer[:limit]), cut=True)
        return self.scrub.bytes(bytes(buffer))

    async def _read_events(self, response: aiohttp.ClientResponse) -> tuple[list[Any], bytes, bool]:
        """The JSON payloads of a server-sent-event stream, up to `data: [DONE]` or the end of the stream
        (whether that end came too early is the kind's to judge, from the chunks)."""
        chunks: list[Any] = []
        raw = bytearray()
        inflater = _Inflater(response.headers.get("Content-Encoding", ""), self.config.max_body_bytes)
        async for data in _sse_data(_inflated(response.content.iter_any(), inflater, raw)):
            data = self.scrub.bytes(data)
            if data == b"[DONE]":
                return chunks, self.scrub.bytes(bytes(raw)), True
            try:
                chunk = json.loads(data)
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise BrokenAnswerError(
                    f"a stream event is not JSON: {_snippet(data)}",
                    usage=_last_usage(chunks),
                    retry=True,
                    raw=self.scrub.bytes(bytes(raw)),
                ) from None
            if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict | str):
                raise self._embedded_error(response, chunk["error"], in_stream=True)
            chunks.append(chunk)
        return chunks, self.scrub.bytes(bytes(raw)), False

    def _status_error(self, response: aiohttp.ClientResponse, raw: bytes) -> ApiStatusError:
        reason = self.scrub.text(response.reason or "")
        message, error_type, code = _error_details(raw, reason)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return ApiStatusError(
            response.status,
            self.scrub.text(message),
            error_type=_short(self.scrub.text(error_type)) if error_type else None,
            code=_short(self.scrub.text(code)) if code else None,
            retry_after=retry_after,
        )

    def _embedded_error(
        self, response: aiohttp.ClientResponse, error: Any, in_stream: bool = False
    ) -> ApiStatusError:
        """`{"error": ...}` sent with a 2xx (or inside a stream): the same error as with its own status."""
        details = error if isinstance(error, Mapping) else {"message": error}
        message = str(details.get("message") or details.get("status") or "no message")
        error_type = details.get("type")
        code = details.get("code")
        where = "inside the stream" if in_stream else f"with HTTP {response.status}"
        return ApiStatusError(
            _embedded_status(details),
            self.scrub.text(f"{message} (an error sent {where})"),
            error_type=None if error_type is None else _short(self.scrub.text(str(error_type))),
            code=None if code is None else _short(self.scrub.text(str(code))),
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )


class _Translate:
    """aiohttp's exceptions, and anything unexpected while reading an answer, into ``batch.errors``."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False  # done, or cancelled: let it through
        scrub, config = self.client.scrub, self.client.config
        if isinstance(exc, ApiStatusError | BrokenAnswerError | TransportError):
            return False
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            raise TransportError(
                f"could not connect within {config.connect_timeout:g} s", timeout=True
            ) from exc
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise TransportError(f"could not connect: {scrub.text(str(exc.os_error or exc))}") from exc
        if isinstance(exc, TimeoutError):
            raise TransportError(
                f"no complete answer within {config.timeout:g} s", timeout=True, maybe_billed=True
            ) from exc
        if isinstance(exc, aiohttp.ClientPayloadError):
            message = f"the answer was cut short: {scrub.text(str(exc))[:300]}"
            raise TransportError(message, maybe_billed=True) from exc
        if isinstance(exc, aiohttp.ClientError):
            message = scrub.text(str(exc)) or type(exc).__name__
            raise TransportError(f"connection failed: {message[:300]}", maybe_billed=True) from exc
        # Anything else (a parser's error on a hostile answer): this request's failure, never the run's.
        raise BrokenAnswerError(
            f"unreadable answer ({type(exc).__name__}: {scrub.text(str(exc))[:200]})", retry=True
        ) from exc


def _origin(scheme: str, host: str | None, port: int | None) -> tuple[str, str, int]:
    return scheme, (host or "").lower(), port or (443 if scheme == "https" else 80)


def _too_large(limit: int, size: str = "") -> BrokenAnswerError:
    said = f" is {size};" if size else " is over"
    return BrokenAnswerError(
        f"the answer{said} the limit of {limit:,} bytes (--max-answer-mb), counted after decompression",
        error_type="answer_too_large",
    )


class _Inflater:
    """Content-Encoding gzip or deflate, inflated a piece at a time and never past `limit` bytes."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.encoding = encoding.strip().lower()
        self.limit = limit
        self.produced = 0
        self._zlib: Any = None
        if self.encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.encoding == "deflate":
            self._zlib = zlib.decompressobj()
        elif self.encoding not in ("", "identity"):
            raise BrokenAnswerError(
                f"the answer is encoded as {self.encoding[:40]!r}, which was not asked for "
                f"(Accept-Encoding: {ACCEPT_ENCODING})",
                retry=True,
            )
        self._first = True

    @property
    def active(self) -> bool:
        return self._zlib is not None

    def feed(self, data: bytes) -> bytes:
        if self._zlib is None:
            self.produced += len(data)
            if self.produced > self.limit:
                raise _too_large(self.limit)
            return data
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
            raise _too_large(self.limit)
        return bytes(out)

    def finish(self) -> bytes:
        if self._zlib is None:
            return b""
        out = self._zlib.flush()
        self.produced += len(out)
        return bytes(out)


async def _inflated(
    pieces: AsyncIterator[bytes], inflater: _Inflater, raw: bytearray
) -> AsyncIterator[bytes]:
    """The decoded pieces of a body, kept in `raw` too, never more than the inflater's limit."""
    async for piece in pieces:
        out = inflater.feed(piece)
        raw += out
        yield out
    out = inflater.finish()
    if inflater.produced > inflater.limit:
        raise _too_large(inflater.limit)
    raw += out
    yield out


async def _decode_json(raw: bytes, content_type: str) -> Any:
    try:
        if len(raw) > THREAD_DECODE_BYTES:
            return await anyio.to_thread.run_sync(json.loads, raw)
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # Not an answer of the API's (a gateway's page, a body cut short): the request goes again.
        raise BrokenAnswerError(
            f"the answer is not JSON ({content_type or 'no content type'}): {_snippet(raw)}",
            retry=True,
            raw=raw,
        ) from None


async def _sse_data(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The data of each event: `data:` lines joined, events separated by a blank line. Comments (`:`),
    `event:`, `id:` and `retry:` lines are skipped; lines end in LF or CRLF."""
    buffer = bytearray()
    data_lines: list[bytes] = []
    async for piece in pieces:
        buffer += piece
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:end]).rstrip(b"\r")
            start = end + 1
            if not line:
                if data_lines:
                    yield b"\n".join(data_lines)
                    data_lines = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data_lines.append(value[1:] if value.startswith(b" ") else value)
        del buffer[:start]
    line = bytes(buffer).rstrip(b"\r")
    if line.startswith(b"data:"):
        data_lines.append(line[6:] if line.startswith(b"data: ") else line[5:])
    if data_lines:
        yield b"\n".join(data_lines)


def _last_usage(chunks: list[Any]) -> dict[str, Any] | None:
    for chunk in reversed(chunks):
        if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
            usage: dict[str, Any] = chunk["usage"]
            return usage
    return None


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


def _embedded_status(error: Mapping[str, Any]) -> int:
    """The HTTP status an error body sent with a 2xx stands for: its own number if it gives one, else
    what its type, code or status name means; a request the API refused (400) if nothing says more."""
    for key in ("status", "code", "http_status"):
        value = error.get(key)
        if isinstance(value, str) and value.isdigit():
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


def _error_details(raw: bytes, reason: str) -> tuple[str, str | None, str | None]:
    """(message, type, code) from an OpenAI-style error body, or a readable message from anything else."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            error_type = error.get("type")
            return (
                str(error.get("message") or reason)[:2000],
                None if error_type is None else str(error_type),
                None if code is None else str(code),
            )
        if isinstance(error, str):
            return error[:2000], None, None
        if isinstance(body.get("message"), str):
            return body["message"][:2000], None, None
    text = raw.decode("utf-8", "replace")
    title = re.search(r"<title[^>]*>(.*?)</title>", text[:ERROR_BODY_LIMIT], re.IGNORECASE | re.DOTALL)
    if title:
        return f"{reason} (an HTML page: {unescape(title.group(1)).strip()[:120]})".strip(), None, None
    return (f"{reason}: {_snippet(raw)}" if raw.strip() else reason or "no message"), None, None


def _short(value: str, limit: int = 80) -> str:
    """An error's type or code, as a short identifier (it names the failure in result lines)."""
    return " ".join(value.split())[:limit]


def _snippet(raw: bytes, limit: int = 120) -> str:
    text = " ".join(raw[: limit * 2].decode("utf-8", "replace").split())
    return repr(text[:limit] + ("..." if len(raw) > limit else ""))
