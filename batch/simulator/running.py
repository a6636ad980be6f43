"""Ways to run the simulator: inside an event loop, in a background thread, or as a blocking command.

All three listen on a real socket (port 0 picks a free one), so clients are tested through their real
transport; all three shut down cleanly, leaving no unclosed sockets or threads behind.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass

from aiohttp import web

from .config import SimConfig
from .server import BASE_PATH, build_app
from .state import SimState

DEFAULT_HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
JOIN_TIMEOUT = 10.0


@dataclass(frozen=True)
class RunningSimulator:
    """A listening simulator: where to reach it, how it behaves, and what it has seen."""

    host: str
    port: int
    config: SimConfig
    state: SimState

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT/v1/ai`: append `/{endpoint}` for a client's base URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{BASE_PATH}"

    def endpoint_url(self, endpoint: str) -> str:
        """The base URL of one endpoint (deployment), as a client configures it."""
        return f"{self.base_url}/{endpoint}"


@asynccontextmanager
async def running_simulator(
    config: SimConfig | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    *,
    state: SimState | None = None,
) -> AsyncIterator[RunningSimulator]:
    """Serve the simulator on the running event loop for the duration of the `async with` block."""
    config = config if config is not None else SimConfig()
    state = state if state is not None else SimState()
    runner = web.AppRunner(
        build_app(config, state),
        handler_cancellation=config.handler_cancellation,
        shutdown_timeout=config.shutdown_timeout,
        access_log=None,  # the state's records are the log; keys never reach a log line
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        yield RunningSimulator(host=host, port=bound_port, config=config, state=state)
    finally:
        await runner.cleanup()


class _ThreadHandle:
    """What the server thread hands back to the thread that started it."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.simulator: RunningSimulator | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.error: BaseException | None = None


@contextmanager
def simulator_in_thread(
    config: SimConfig | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    *,
    state: SimState | None = None,
) -> Iterator[RunningSimulator]:
    """Serve the simulator on its own event loop in a daemon thread, for sync code and subprocess tests."""
    handle = _ThreadHandle()

    async def serve_until_stopped() -> None:
        try:
            async with running_simulator(config, host, port, state=state) as simulator:
                handle.loop = asyncio.get_running_loop()
                handle.stop = asyncio.Event()
                handle.simulator = simulator
                handle.ready.set()
                await handle.stop.wait()
        except BaseException as exc:
            handle.error = exc
            raise
        finally:
            handle.ready.set()

    def run() -> None:
        with suppress(BaseException):  # the error is handed over in `handle.error`
            asyncio.run(serve_until_stopped())

    thread = threading.Thread(target=run, name="maas-simulator", daemon=True)
    thread.start()
    if not handle.ready.wait(STARTUP_TIMEOUT):
        raise RuntimeError("the MaaS simulator did not start in time")
    if handle.simulator is None:
        thread.join(JOIN_TIMEOUT)
        raise RuntimeError("the MaaS simulator failed to start") from handle.error
    try:
        yield handle.simulator
    finally:
        assert handle.loop is not None and handle.stop is not None
        with suppress(RuntimeError):  # the loop already ended
            handle.loop.call_soon_threadsafe(handle.stop.set)
        thread.join(JOIN_TIMEOUT)


async def _serve_until_signal(config: SimConfig, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
            handled.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
            pass
    try:
        async with running_simulator(config, host, port) as simulator:
            print(f"MaaS simulator listening on {simulator.base_url}", flush=True)
            await stop.wait()
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


def serve(config: SimConfig, host: str = DEFAULT_HOST, port: int = 0) -> None:
    """Serve until SIGINT or SIGTERM (blocking), after printing the one line that gives the URL."""
    asyncio.run(_serve_until_signal(config, host, port))
