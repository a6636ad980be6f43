"""The HTTP client: one aiohttp session, requests as the kinds describe them, answers as parsed bodies.

This is the only module that knows aiohttp's exceptions; it translates them into ``batch.errors``. It never
puts the API key into an error, and it reads bodies with a size cap so a hostile answer cannot exhaust
memory.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html import unescape
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import anyio

from batch import __version__
from batch.defaults import DEFAULT_BASE_URL, DEFAULT_MAX_BODY, DEFAULT_TIMEOUT
from batch.errors import ApiStatusError, BrokenAnswerError, ConfigError, TransportError
from batch.kinds import ApiRequest
from batch.retry import parse_retry_after

ERROR_BODY_LIMIT = 64 * 2**10
THREAD_DECODE_BYTES = 256 * 2**10  # JSON bigger than this is decoded off the event loop
REQUEST_ID_HEADER = "X-Client-Request-Id"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
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
    """A 2xx answer: its body parsed (a JSON value, or the list of chunks of a stream)."""

    status: int
    body: Any
    seconds: float
    server_request_id: str | None = None


class ApiClient:
    """Sends ApiRequests to `{base_url}/{endpoint}/{path}` over one connection pool."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        host = urlsplit(self.config.base_url).hostname or ""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.connections, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=self.config.timeout, connect=self.config.connect_timeout),
            # Proxies from the environment, except for a server on this machine (the simulator).
            trust_env=host not in LOOPBACK_HOSTS,
            headers={"User-Agent": f"maas-batch/{__version__}"},
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
        try:
            async with self._session.post(
                self.url(endpoint, request.path), data=data, headers=headers, allow_redirects=False
            ) as response:
                body = await self._read(response, request.stream)
                return Reply(
                    response.status, body, time.monotonic() - started, response.headers.get("x-request-id")
                )
        except aiohttp.ConnectionTimeoutError as exc:
            raise TransportError(
                f"could not connect within {self.config.connect_timeout:g} s", timeout=True
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(f"could not connect: {self._scrub(str(exc.os_error or exc))}") from exc
        except TimeoutError as exc:
            raise TransportError(
                f"no complete answer within {self.config.timeout:g} s", timeout=True, maybe_billed=True
            ) from exc
        except aiohttp.ClientPayloadError as exc:
            raise TransportError(
                f"the answer was cut short: {self._scrub(str(exc))}", maybe_billed=True
            ) from exc
        except aiohttp.ClientError as exc:
            message = self._scrub(str(exc)) or type(exc).__name__
            raise TransportError(f"connection failed: {message}", maybe_billed=True) from exc

    async def _read(self, response: aiohttp.ClientResponse, stream: bool) -> Any:
        if not 200 <= response.status < 300:
            raw = await _read_capped(response, ERROR_BODY_LIMIT, truncate=True)
            raise self._status_error(response, raw)
        content_type = response.headers.get("Content-Type", "")
        if stream and content_type.startswith("text/event-stream"):
            return await _read_events(response, self.config.max_body_bytes)
        raw = await _read_capped(response, self.config.max_body_bytes)
        return await _decode_json(raw, content_type)

    def _status_error(self, response: aiohttp.ClientResponse, raw: bytes) -> ApiStatusError:
        message, error_type, code = _error_details(raw, response.reason or "")
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return ApiStatusError(
            response.status, self._scrub(message), error_type=error_type, code=code, retry_after=retry_after
        )

    def _scrub(self, text: str) -> str:
        """Never let the key through, even if a server echoes it."""
        key = self.config.api_key
        return text.replace(key, "[redacted]") if key else text


async def _read_capped(response: aiohttp.ClientResponse, limit: int, truncate: bool = False) -> bytes:
    """The body, refusing (or for error pages, cutting) anything over `limit` bytes."""
    length = response.content_length
    if not truncate and length is not None and length > limit:
        raise BrokenAnswerError(f"the answer is {length:,} bytes; the limit is {limit:,}")
    if length is not None and length <= limit:
        return await response.read()  # a declared length within the limit: one read
    buffer = bytearray()
    async for chunk in response.content.iter_chunked(1 << 16):
        buffer += chunk
        if len(buffer) > limit:
            if truncate:
                return bytes(buffer[:limit])
            raise BrokenAnswerError(f"the answer is over the limit of {limit:,} bytes")
    return bytes(buffer)


async def _decode_json(raw: bytes, content_type: str) -> Any:
    try:
        if len(raw) > THREAD_DECODE_BYTES:
            return await anyio.to_thread.run_sync(json.loads, raw)
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BrokenAnswerError(
            f"the answer is not JSON ({content_type or 'no content type'}): {_snippet(raw)}"
        ) from None


async def _read_events(response: aiohttp.ClientResponse, limit: int) -> list[Any]:
    """The JSON payloads of a server-sent-event stream, up to `data: [DONE]`."""
    chunks: list[Any] = []
    async for data in _sse_data(response.content.iter_any(), limit):
        if data == b"[DONE]":
            return chunks
        try:
            chunk = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise BrokenAnswerError(
                f"a stream event is not JSON: {_snippet(data)}", usage=_last_usage(chunks)
            ) from None
        if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict):
            message = str(chunk["error"].get("message") or chunk["error"])
            raise BrokenAnswerError(f"the stream reported an error: {message}", usage=_last_usage(chunks))
        chunks.append(chunk)
    raise BrokenAnswerError("the stream ended before [DONE]", usage=_last_usage(chunks))


async def _sse_data(pieces: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The data of each event: `data:` lines joined, events separated by a blank line."""
    buffer = bytearray()
    data_lines: list[bytes] = []
    total = 0
    async for piece in pieces:
        total += len(piece)
        if total > limit:
            raise BrokenAnswerError(f"the stream is over the limit of {limit:,} bytes")
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
    if data_lines:
        yield b"\n".join(data_lines)


def _last_usage(chunks: list[Any]) -> dict[str, Any] | None:
    for chunk in reversed(chunks):
        if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
            usage: dict[str, Any] = chunk["usage"]
            return usage
    return None


def _error_details(raw: bytes, reason: str) -> tuple[str, str | None, str | None]:
    """(message, type, code) from an OpenAI-style error body, or a readable message from anything else."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            error_type = error.get("type")
            return (
                str(error.get("message") or reason),
                None if error_type is None else str(error_type),
                None if code is None else str(code),
            )
        if isinstance(error, str):
            return error, None, None
        if isinstance(body.get("message"), str):
            return body["message"], None, None
    text = raw.decode("utf-8", "replace")
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if title:
        return f"{reason} (an HTML page: {unescape(title.group(1)).strip()[:120]})".strip(), None, None
    return (f"{reason}: {_snippet(raw)}" if raw.strip() else reason or "no message"), None, None


def _snippet(raw: bytes, limit: int = 120) -> str:
    text = " ".join(raw[: limit * 2].decode("utf-8", "replace").split())
    return repr(text[:limit] + ("..." if len(raw) > limit else ""))
