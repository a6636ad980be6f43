"""How requests reach an origin: straight, or through the proxy the environment names (HTTP_PROXY,
HTTPS_PROXY, NO_PROXY). Looked up once for each origin by the client, not for every request as aiohttp's
`trust_env` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")  # always reached straight (the simulator)


@dataclass(frozen=True)
class Route:
    """How requests reach one origin: straight, or through the proxy the environment names. The proxy's
    credentials travel as a header: on the tunnel's CONNECT for an https origin, on each request for http."""

    proxy: URL | None = None
    proxy_headers: Mapping[str, str] | None = None
    headers: Mapping[str, str] | None = None


DIRECT = Route()


def env_route(url: str) -> Route:
    """The route the environment gives `url`: HTTP(S)_PROXY and NO_PROXY, the proxy's credentials from its
    URL or ~/.netrc, found as aiohttp's `trust_env` finds them. May read files: call it off the loop."""
    target = URL(url)
    try:
        proxy, auth = get_env_proxy_for_url(target)
    except LookupError:
        return DIRECT
    if auth is None:
        return Route(proxy)
    credentials = {"Proxy-Authorization": auth.encode()}
    if target.scheme == "https":
        return Route(proxy, proxy_headers=credentials)
    return Route(proxy, headers=credentials)
