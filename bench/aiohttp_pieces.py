"""The CPU of the pieces of aiohttp's request path that a caller's settings choose, each timed alone (no
socket): what a different setting could save a request, at most. Best of 7 runs of 20,000 calls each.

    python bench/aiohttp_pieces.py            # on uvloop
    python bench/aiohttp_pieces.py --asyncio

The headers as `ApiClient.send` gives them (a dict of three, two session defaults) against one CIMultiDict
built once and copied; the URL as a string against a prebuilt yarl.URL; the total timeout's timer against
none; the default cookie jar (empty, and holding two cookies a load balancer might set) against
aiohttp.DummyCookieJar.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp.helpers import TimeoutHandle
from multidict import CIMultiDict
from yarl import URL

ADDRESS = "http://127.0.0.1:8123/v1/ai/ep/google/chat/completions"
DEFAULTS = {"User-Agent": "maas-batch/1.0", "Accept-Encoding": "gzip, deflate"}


def best(call: Callable[[], Any], count: int = 20_000, runs: int = 7) -> float:
    """Microseconds a call, the best of `runs`."""
    figures = []
    for _ in range(runs):
        started = time.process_time()
        for _ in range(count):
            call()
        figures.append((time.process_time() - started) / count * 1e6)
    return min(figures)


async def main() -> None:
    loop = asyncio.get_running_loop()
    url = URL(ADDRESS)
    with_defaults = aiohttp.ClientSession(headers=DEFAULTS)
    bare = aiohttp.ClientSession()
    built = CIMultiDict({"Authorization": "Bearer key", "Content-Type": "application/json", **DEFAULTS})

    def as_sent() -> dict[str, str]:
        return {
            "Authorization": "Bearer key",
            "X-Client-Request-Id": "t1/a.1",
            "Content-Type": "application/json",
        }

    def prebuilt() -> CIMultiDict[str]:
        headers = built.copy()
        headers["X-Client-Request-Id"] = "t1/a.1"
        return headers

    def timer(total: float | None) -> None:
        handle = TimeoutHandle(loop, total, ceil_threshold=5)
        scheduled = handle.start()
        with handle.timer():
            pass
        if scheduled is not None:
            scheduled.cancel()

    jar, dummy, busy = aiohttp.CookieJar(), aiohttp.DummyCookieJar(), aiohttp.CookieJar(unsafe=True)
    busy.update_cookies({"AWSALB": "abcdef0123", "AWSALBCORS": "abcdef0123"}, URL("http://127.0.0.1:8123/"))
    pieces = {
        "headers merged, as sent (dict of 3 + 2 session defaults)": lambda: with_defaults._prepare_headers(
            as_sent()
        ),
        "headers merged, one CIMultiDict built once and copied": lambda: bare._prepare_headers(prebuilt()),
        "URL from a string": lambda: URL(ADDRESS),
        "URL already a yarl.URL": lambda: URL(url),
        "the total timeout's timer (start, enter, cancel)": lambda: timer(600.0),
        "no total timeout": lambda: timer(None),
        "CookieJar.filter_cookies, empty jar": lambda: jar.filter_cookies(url),
        "CookieJar.filter_cookies, two cookies": lambda: busy.filter_cookies(url),
        "DummyCookieJar.filter_cookies": lambda: dummy.filter_cookies(url),
    }
    for name, call in pieces.items():
        print(f"{best(call):7.2f} us  {name}")
    await with_defaults.close()
    await bare.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--asyncio", action="store_true", help="asyncio's own loop, not uvloop")
    if parser.parse_args().asyncio:
        asyncio.run(main())
    else:
        import uvloop

        uvloop.run(main())
