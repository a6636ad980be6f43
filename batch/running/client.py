"""The HTTP client: one aiohttp session, requests as the kinds describe them, answers as parsed bodies.

This is the only module that knows aiohttp's exceptions; it translates them into ``batch.errors``. Bodies are
read through `running/bodies.py`: a size cap that holds after decoding (the client asks for gzip or deflate
only and inflates them there), and the API key scrubbed out of every byte and header a server sends back.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urljoin, urlsplit

import aiohttp
import anyio
from aiohttp.http_exceptions import HttpProcessingError

from batch import __version__, codec
from batch.defaults import DEFAULT_BASE_URL, DEFAULT_MAX_BODY, DEFAULT_TIMEOUT
from batch.errors import (
    ApiError,
    ApiStatusError,
    BrokenAnswerError,
    ConfigError,
    StreamStalledError,
    TransportError,
)
from batch.frozen import quick_init
from batch.kind import ApiRequest
from batch.output.store import never_write
from batch.running.bodies import (
    ACCEPT_ENCODING,
    ERROR_BODY_LIMIT,
    ERROR_MESSAGE_LIMIT,
    Inflater,
    Scrubber,
    beyond_reading,
    decode_json,
    embedded_status,
    error_details,
    error_usage,
    inflated,
    is_event_stream,
    is_json_object,
    last_usage,
    refuse_deep,
    short,
    snippet,
    sse_data,
    too_large,
    unwrapped_error,
)
from batch.running.retry import parse_retry_after
from batch.running.routes import DIRECT, LOOPBACK_HOSTS, Route, env_route
from batch.values import check_base_url

REQUEST_ID_HEADER = "X-Client-Request-Id"
SERVER_REQUEST_ID_HEADER = "x-request-id"
DOWNLOAD_REDIRECTS = 5
HEADER_LIMIT = 1 << 20  # bytes of a header line of an answer (aiohttp's default: 8,190)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class ClientConfig:
    base_url: str = DEFAULT_BASE_URL
    api_key: str = field(default="", repr=False)
    timeout: float = DEFAULT_TIMEOUT  # one attempt, seconds
    connect_timeout: float = 30.0
    max_body_bytes: int = DEFAULT_MAX_BODY
    connections: int = 100

    def __post_init__(self) -> None:
        try:
            check_base_url(self.base_url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


@quick_init
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
    # what ended a stream after some of its events (an error event, an event that is not JSON, the
    # timeout): raised unless the events say every choice had finished, which makes the answer whole
    trouble: ApiError | None = None


class ApiClient:
    """Sends ApiRequests to `{base_url}/{endpoint}/{path}` over one connection pool."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.scrub = Scrubber(config.api_key)
        never_write(config.api_key)  # nor into DIR's journals, in whatever form an answer carried it
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[tuple[str, str], str] = {}
        self._routes: dict[tuple[str, str, int], Route] = {}
        self._api_route = DIRECT
        base = urlsplit(config.base_url)
        self._origin = _origin(base.scheme, base.hostname, base.port)
        # the base URL as messages name it: without a user or password it may hold
        netloc = (base.hostname or "") if base.port is None else f"{base.hostname}:{base.port}"
        self.address = self.scrub.text(base._replace(netloc=netloc, query="", fragment="").geturl())

    async def __aenter__(self) -> ApiClient:
        self._api_route = await self._route(self.config.base_url)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.connections, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=self.config.timeout, connect=self.config.connect_timeout),
            # Proxies come from the environment once for each origin (`_route`), not through trust_env: that
            # reads the proxy variables and ~/.netrc in two thread hops for every request (1.25 ms of CPU a
            # request instead of 0.57, BENCHMARKS.md), and a netrc entry for the API's host made aiohttp
            # refuse every request, which carries the key in its own Authorization header.
            trust_env=False,
            headers={"User-Agent": f"maas-batch/{__version__}", "Accept-Encoding": ACCEPT_ENCODING},
            # Bodies are inflated here, under the size cap; aiohttp's own inflating knows no cap.
            auto_decompress=False,
            # A header past aiohttp's 8,190 bytes (a 100 KB x-request-id) failed the read of an answer the
            # server had billed, and each retry bought it again, taken for an outage; its value is cut
            # to 200 characters where it is written
            max_line_size=HEADER_LIMIT,
            max_field_size=HEADER_LIMIT,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _route(self, url: str) -> Route:
        """The route to `url`'s origin, looked up once an origin: a server on this machine (the simulator) is
        always reached straight; other origins as the environment says."""
        parts = urlsplit(url)
        origin = _origin(parts.scheme, parts.hostname, parts.port)
        if origin[1] in LOOPBACK_HOSTS:
            return DIRECT
        found = self._routes.get(origin)
        if found is None:
            found = self._routes[origin] = await anyio.to_thread.run_sync(env_route, url)
        return found

    def url(self, endpoint: str, path: str) -> str:
        found = self._urls.get((endpoint, path))
        if found is None:  # a run has a few: each is built once, not for every request
            found = self._urls[endpoint, path] = (
                f"{self.config.base_url.rstrip('/')}/{quote(endpoint, safe='')}/{path}"
            )
        return found

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
            data = codec.dumps(request.json)
            headers["Content-Type"] = "application/json"
        if request.stream:
            headers["Accept"] = "text/event-stream"
        route = self._api_route
        if route.headers:
            headers.update(route.headers)
        started = time.monotonic()
        async with (
            self._translated(),
            self._session.post(
                self.url(endpoint, request.path),
                data=data,
                headers=headers,
                allow_redirects=False,
                proxy=route.proxy,
                proxy_headers=route.proxy_headers,
            ) as response,
        ):
            body, raw, ended, trouble = await self._read(response, request.stream)
            seconds = time.monotonic() - started
            return Reply(response.status, body, seconds, self._server_id(response), raw, ended, trouble)
        raise AssertionError("unreachable")  # pragma: no cover (_translated re-raises)

    async def download(self, url: str) -> bytes:
        """The bytes behind an image `url` of an answer, under the same caps and timeouts as an answer.
        The key goes along only to the API's own origin, never to another host: a link on the API's
        origin that redirects to storage elsewhere (a signed CDN URL) is followed, hop by hop, each hop
        through its own route, the key dropped at the first hop that leaves the origin and never sent again.
        Raises ApiStatusError, TransportError or BrokenAnswerError (not an http(s) URL, a redirect loop, over
        the size cap)."""
        assert self._session is not None, "use ApiClient as an async context manager"
        with_key = True  # until a hop leaves the API's origin
        for _hop in range(DOWNLOAD_REDIRECTS + 1):
            try:  # `host:99999`, `[::1`: a ValueError that once threw away the images fetched
                parts = urlsplit(url)
                port = parts.port
            except ValueError as exc:
                shown = self.scrub.text(url)[:120]
                raise BrokenAnswerError(f"an image URL that is no URL ({exc}): {shown!r}") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise BrokenAnswerError(f"an image URL must be http(s), not {self.scrub.text(url)[:120]!r}")
            if self._holds_key(url):  # the answer's own link too: `?sig=` the key, \u-escaped or %-encoded
                raise BrokenAnswerError("an image URL that holds the API key: not fetched")
            with_key = with_key and _origin(parts.scheme, parts.hostname, port) == self._origin
            headers = {"Authorization": f"Bearer {self.config.api_key}"} if with_key else {}
            route = await self._route(url)
            headers.update(route.headers or {})
            async with (
                self._translated(),
                self._session.get(
                    url,
                    headers=headers,
                    proxy=route.proxy,
                    proxy_headers=route.proxy_headers,
                    allow_redirects=False,  # followed here, where the key's origin is known
                ) as response,
            ):
                location = response.headers.get("Location")
                if response.status in _REDIRECTS and location:
                    url = self._redirect(url, location)
                    continue
                if not 200 <= response.status < 300:
                    raw = await self._read_capped(response, ERROR_BODY_LIMIT, truncate=True)
                    raise self._status_error(response, raw)
                return await self._read_capped(response, self.config.max_body_bytes)
        host = self.scrub.text(urlsplit(url).hostname or "?")
        raise BrokenAnswerError(f"more than {DOWNLOAD_REDIRECTS} redirects, the last to {host}")

    def _redirect(self, url: str, location: str) -> str:
        """Where a redirect from `url` leads. One that spells the whole key (a server echoing it into a
        link) would carry it to whatever host it names: refused. The URL is looked at as it will be sent
        (urljoin drops tabs and line breaks, so `s\tk-...` is the key) and percent-decoded; a URL that
        merely begins as the key does (a JWT-signed link beside a JWT key) is followed."""
        try:
            target = urljoin(url, location.strip())
        except ValueError as exc:
            reason = self.scrub.text(str(exc))[:120]
            raise BrokenAnswerError(f"a redirect to an unreadable Location: {reason}") from exc
        if self._holds_key(target):
            raise BrokenAnswerError("a redirect whose Location holds the API key: not followed")
        return target

    def _holds_key(self, url: str) -> bool:
        """Whether `url`, as it will be sent, spells the whole key (percent-decoded too): fetched, it would
        carry the key to the host it names, in its path or query, or to a DNS server in its name."""
        key = self.config.api_key
        return bool(key) and any(key in spelled for spelled in (url, unquote(url), unquote_plus(url)))

    def _translated(self) -> _Translate:
        return _Translate(self)

    async def _read(
        self, response: aiohttp.ClientResponse, stream: bool
    ) -> tuple[Any, bytes, bool, ApiError | None]:
        if not 200 <= response.status < 300:
            raw = await self._read_capped(response, ERROR_BODY_LIMIT, truncate=True)
            raise self._status_error(response, raw)
        content_type = self.scrub.text(codec.clean_text(response.headers.get("Content-Type", "")))[:100]
        # media types are case-insensitive (RFC 9110): `Text/Event-Stream` was read as JSON, not JSON, and
        # the whole stream bought again
        if stream and content_type.lower().startswith("text/event-stream") and not _unknown_coding(response):
            return await self._read_events(response, response.content.iter_any())
        if stream and not content_type.lower().startswith("application/json") and _plain(response):
            # a stream under another content type (text/plain, none), told by its first piece: read as
            # events as they come, so that one held open or cut after its end is judged as a stream is
            first = await response.content.readany()
            if is_event_stream(first):
                return await self._read_events(response, _after(first, response.content.iter_any()))
            raw = await self._read_capped(response, self.config.max_body_bytes, first=first)
        else:
            raw = await self._read_capped(response, self.config.max_body_bytes)
        if is_event_stream(raw):  # its first piece too short to tell, or a stream not asked for
            # (a gateway that streams regardless, `stream` passed under extra:): whole, read as events,
            # not taken for a garbled body and bought again, and again while the breaker took it for an outage
            return await self._read_events(response, _once(raw), inflate=False)
        body = await decode_json(raw, content_type)
        self._refuse_error_body(response, body)
        return body, raw, True, None

    def _refuse_error_body(self, response: aiohttp.ClientResponse, body: Any) -> None:
        """`{"error": ...}` with a 2xx and neither data nor choices: the error it is, raised, with the usage
        the body reported (billed all the same: it goes in the ledger). Google's list of one reads so too."""
        body = unwrapped_error(body)
        if (
            isinstance(body, dict)
            and isinstance(body.get("error"), dict | str)
            and not body.get("data")
            and not body.get("choices")
        ):
            error = self._embedded_error(response, body["error"])
            if isinstance(body.get("usage"), dict):
                error.usage = body["usage"]
            raise error

    async def _read_capped(
        self, response: aiohttp.ClientResponse, limit: int, truncate: bool = False, first: bytes = b""
    ) -> bytes:
        """The body, decoded and scrubbed, refusing (or for error pages, cutting) anything over `limit`
        bytes after decoding. `first`: its first piece, read already (a body sent as it is)."""
        buffer = bytearray(first)
        try:
            inflater = Inflater(_coding(response), limit)
            length = response.content_length
            if not inflater.active and length is not None:
                if length > limit:
                    raise too_large(limit, f"{length:,} bytes")
                # the usual answer: its size known and allowed, read at once (aiohttp reads no more than
                # Content-Length), not a piece at a time through an async iterator, nor copied
                whole = self.scrub.bytes(first + await response.read())
                if inflater.unknown and not truncate:  # an error page's text is read as it is
                    raise inflater.refusal(whole)
                return whole
            async for piece in response.content.iter_chunked(1 << 16):
                buffer += inflater.feed(piece)
                if len(buffer) > limit:
                    raise too_large(limit)
            buffer += inflater.finish()
            if len(buffer) > limit:
                raise too_large(limit)
        except BrokenAnswerError:
            if not truncate:
                raise
            return self.scrub.bytes(bytes(buffer[:limit]), cut=True)
        if inflater.unknown and not truncate:
            raise inflater.refusal(self.scrub.bytes(bytes(buffer)))
        return self.scrub.bytes(bytes(buffer))

    async def _read_events(
        self, response: aiohttp.ClientResponse, pieces: AsyncIterator[bytes], inflate: bool = True
    ) -> tuple[Any, bytes, bool, ApiError | None]:
        """The JSON payloads of a server-sent-event stream, up to `data: [DONE]` or the end of the stream
        (whether that end came too early is the kind's to judge, from the chunks). What ends it after some
        events (an error event, an event that is not JSON, the timeout) is returned, not raised: a
        stream whose every choice had finished is whole, and buying it again would pay twice."""
        chunks: list[Any] = []
        raw = bytearray()
        coding = _coding(response) if inflate else ""
        inflater = Inflater(coding, self.config.max_body_bytes)
        events = sse_data(inflated(pieces, inflater, raw))
        trouble: ApiError | None = None

        def kept() -> bytes:
            return self.scrub.bytes(bytes(raw))

        try:
            async for data in events:
                data = self.scrub.bytes(data)
                if data.strip() == b"[DONE]":  # `data:  [DONE] `: the end all the same
                    return chunks, kept(), True, None
                try:
                    chunk = codec.loads_answer(data)
                except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                    beyond = beyond_reading(exc)
                    if beyond is not None:  # whole, past what can be read: kept, not bought again
                        raise BrokenAnswerError(
                            f"a stream event is JSON that cannot be read here: {beyond}",
                            error_type="unreadable_answer",
                            usage=last_usage(chunks),
                            raw=kept(),
                        ) from None
                    trouble = BrokenAnswerError(
                        f"a stream event is not JSON: {snippet(data)}",
                        usage=last_usage(chunks),
                        retry=True,
                        raw=kept(),
                    )
                    break
                try:
                    refuse_deep(data, chunk)
                except BrokenAnswerError as exc:  # the stream so far is what is kept, with its usage
                    exc.raw, exc.usage = kept(), last_usage(chunks)
                    raise
                if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict | str):
                    error = self._embedded_error(response, chunk["error"], in_stream=True)
                    error.usage, error.raw = last_usage(chunks), kept()
                    error.maybe_billed = bool(chunks) and error.usage is None
                    trouble = error
                    break
                chunks.append(chunk)
        except aiohttp.ClientPayloadError:
            if not chunks:
                raise
            # cut (a reset, a body shorter than it said) after some events: as a stream that ended there,
            # whole if every choice had finished (the kind judges it from the chunks), else sent again
        except TimeoutError:
            if not chunks:
                raise
            # a stream whose last event came, then nothing (a proxy that keeps it open): judged the same
            trouble = StreamStalledError(
                f"no complete answer within {self.config.timeout:g} s (the stream stopped sending)",
                usage=last_usage(chunks),
                retry=True,
                raw=kept(),
            )
        if trouble is not None and not chunks:
            raise trouble
        if not chunks and is_json_object(raw):  # a whole JSON answer (or error) under text/event-stream
            body = await decode_json(kept(), "text/event-stream")
            self._refuse_error_body(response, body)
            return body, kept(), True, None
        return chunks, kept(), False, trouble

    def _server_id(self, response: aiohttp.ClientResponse) -> str | None:
        """The server's x-request-id, as it may be written: cleaned, scrubbed, cut."""
        server_id = response.headers.get(SERVER_REQUEST_ID_HEADER)
        return None if server_id is None else self.scrub.text(codec.clean_text(server_id))[:200]

    def _status_error(self, response: aiohttp.ClientResponse, raw: bytes) -> ApiStatusError:
        reason = self.scrub.text(codec.clean_text(response.reason or ""))
        message, error_type, code = error_details(raw, reason)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        error = ApiStatusError(
            response.status,
            self.scrub.text(message),
            error_type=short(self.scrub.text(error_type)) if error_type else None,
            code=short(self.scrub.text(code)) if code else None,
            retry_after=retry_after,
            server_request_id=self._server_id(response),
        )
        # a usage beside the error (a 400 that says what it billed): in the ledger, as a 2xx {"error"}'s is
        error.usage = error_usage(raw)
        return error

    def _embedded_error(
        self, response: aiohttp.ClientResponse, error: Any, in_stream: bool = False
    ) -> ApiStatusError:
        """`{"error": ...}` sent with a 2xx (or inside a stream): the same error as with its own status."""
        details = error if isinstance(error, Mapping) else {"message": error}
        message = str(details.get("message") or details.get("status") or "no message")[:ERROR_MESSAGE_LIMIT]
        error_type = details.get("type")
        code = details.get("code")
        where = "inside the stream" if in_stream else f"with HTTP {response.status}"
        return ApiStatusError(
            embedded_status(details),
            self.scrub.text(f"{message} (an error sent {where})"),
            error_type=None if error_type is None else short(self.scrub.text(str(error_type))),
            code=None if code is None else short(self.scrub.text(str(code))),
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            server_request_id=self._server_id(response),
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
                f"could not connect within {config.connect_timeout:g} s",
                timeout=True,
                reach="connect_timeout",
            ) from exc
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            host = scrub.text(exc.host)
            message = f"cannot resolve the host {host!r}: {scrub.text(str(exc.os_error or exc))}"
            raise TransportError(message, reach="dns") from exc
        if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientConnectorSSLError):
            message = f"TLS with {scrub.text(exc.host)}:{exc.port} failed: {scrub.text(str(exc))[:300]}"
            raise TransportError(message, reach="tls") from exc
        if isinstance(exc, aiohttp.ClientConnectorError):
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            reason = scrub.text(str(exc.os_error or exc))
            message = f"could not connect to {scrub.text(exc.host)}:{exc.port}: {reason}"
            raise TransportError(message, reach="refused" if refused else "connection") from exc
        if isinstance(exc, TimeoutError):
            raise TransportError(
                f"no complete answer within {config.timeout:g} s",
                timeout=True,
                maybe_billed=True,
                reach="timeout",
            ) from exc
        if isinstance(exc, aiohttp.ClientPayloadError):
            message = f"the answer was cut short: {scrub.text(str(exc))[:300]}"
            raise TransportError(message, maybe_billed=True, reach="cut_short") from exc
        if isinstance(exc, aiohttp.ClientResponseError) and isinstance(exc.__cause__, HttpProcessingError):
            # Bytes that are no HTTP where an answer's head was due. A stray byte after a whole answer (or a
            # 204's body) fails that answer when it comes in the same read, or the next request's on the
            # connection when it comes later: aiohttp reads it as that answer's status line, and no answer
            # it parses before the junk is handed over. Either way the server answered, and may have billed
            # it; the connection is closed, and the request asked again. It read "connection failed: 400".
            detail = " ".join(scrub.text(codec.clean_text(str(exc.message))).split())[:300]
            message = f"the answer could not be read as HTTP (bytes no HTTP client reads): {detail}"
            raise TransportError(message, maybe_billed=True, reach="bad_http") from exc
        if isinstance(exc, aiohttp.ClientError):
            message = scrub.text(str(exc)) or type(exc).__name__
            raise TransportError(f"connection failed: {message[:300]}", maybe_billed=True) from exc
        # Anything else (a parser's error on a hostile answer): this request's failure, never the run's.
        raise BrokenAnswerError(
            f"unreadable answer ({type(exc).__name__}: {scrub.text(str(exc))[:200]})", retry=True
        ) from exc


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _after(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for piece in rest:
        yield piece


def _coding(response: aiohttp.ClientResponse) -> str:
    """The coding a body came in: its Content-Encoding, or a transfer-coding besides chunked
    (`Transfer-Encoding: gzip, chunked`), which aiohttp takes the chunks off and leaves compressed: read as
    gzip bytes, it was taken for a garbled answer and bought again, each time the same. Both at once: named
    together, a coding Inflater does not read (the answer kept, not bought again)."""
    content = response.headers.get("Content-Encoding", "").strip()
    transfer = [
        coding.strip()
        for value in response.headers.getall("Transfer-Encoding", ())
        for coding in value.split(",")
        if coding.strip().lower() not in ("", "chunked", "identity")
    ]
    if not transfer:
        return content
    return ", ".join(transfer) if content.lower() in ("", "identity") else ", ".join([content, *transfer])


def _plain(response: aiohttp.ClientResponse) -> bool:
    """A body sent as it is (no Content-Encoding): its first piece can be told apart."""
    return not _coding(response)


def _unknown_coding(response: aiohttp.ClientResponse) -> bool:
    return Inflater(_coding(response), 0).unknown


def _origin(scheme: str, host: str | None, port: int | None) -> tuple[str, str, int]:
    return scheme, (host or "").lower(), port or (443 if scheme == "https" else 80)
