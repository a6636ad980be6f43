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
