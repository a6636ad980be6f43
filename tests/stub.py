"""A hostile server in a test's hands: any aiohttp handler, served on a free loopback port in a thread.

The simulator speaks the API as it should be spoken; a stub says whatever one test needs a server to say
(an echoed key, a bomb, a nesting that breaks parsers), byte for byte.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Stub:
    """A running stub: its base URL (as MAAS_BASE_URL) and the requests it has seen."""

    port: int
    requests: list[dict[str, str]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/ai"

    def count(self, path_end: str) -> int:
        return sum(1 for seen in self.requests if seen["path"].endswith(path_end))


@contextmanager
def stub_server(handler: Handler) -> Iterator[Stub]:
    """Serve `handler` for every path until the block ends."""
    ready = threading.Event()
    stop: list[Callable[[], None]] = []
    stub = Stub(0)
    failure: list[BaseException] = []

    async def record(request: web.Request) -> web.StreamResponse:
        stub.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "host": request.host,
                "authorization": request.headers.get("Authorization", ""),
            }
        )
        return await handler(request)

    async def serve() -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", record)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        stub.port = server.sockets[0].getsockname()[1]
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop.append(lambda: loop.call_soon_threadsafe(done.set))
        ready.set()
        try:
            await done.wait()
        finally:
            await runner.cleanup()

    def main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # surfaced in the test's thread
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=main, name="stub-server", daemon=True)
    thread.start()
    assert ready.wait(30), "the stub server did not start"
    if failure:
        raise failure[0]
    try:
        yield stub
    finally:
        stop[0]()
        thread.join(30)


# Bytes for a request: `(key, n)` -> the whole answer as it goes on the wire (status line, headers, body),
# `key` being the bearer key the request carried and `n` the request's number (1 for the first).
RawAnswer = Callable[[str, int], bytes]


@contextmanager
def raw_server(answer: RawAnswer, close: bool = False) -> Iterator[Stub]:
    """Serve `answer`'s bytes as they are, for what aiohttp's server would never send (a header byte that
    is not UTF-8, a body shorter than its length, a reset after some events); `close`: end the connection
    after each answer (without it, the next request may come on the same one)."""
    ready = threading.Event()
    stop: list[Callable[[], None]] = []
    stub = Stub(0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                fields = dict(
                    line.split(":", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ":" in line
                )
                headers = {name.strip().lower(): value.strip() for name, value in fields.items()}
                await reader.readexactly(int(headers.get("content-length", "0")))
                authorization = headers.get("authorization", "")
                path = head.split(b" ", 2)[1].decode("latin-1")
                stub.requests.append(
                    {"method": "POST", "path": path, "host": "", "authorization": authorization}
                )
                writer.write(answer(authorization.removeprefix("Bearer "), len(stub.requests)))
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        stub.port = server.sockets[0].getsockname()[1]
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop.append(lambda: loop.call_soon_threadsafe(done.set))
        ready.set()
        async with server:
            await done.wait()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), name="raw-server", daemon=True)
    thread.start()
    assert ready.wait(30), "the raw server did not start"
    try:
        yield stub
    finally:
        stop[0]()
        thread.join(30)


def http_answer(status: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """An HTTP/1.1 answer as bytes; a header value may hold any byte (latin-1 maps each to itself)."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"HTTP/1.1 {status}\r\n{lines}\r\n".encode("latin-1") + body
