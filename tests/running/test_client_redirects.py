"""An image link that redirects, against a real aiohttp server reached under two host names (two origins on
one socket, as the simulator does): API.md says to download `data[i].url` and never to send the API key to
another origin. A gateway's own file link (on the API's origin, wanting the key) that answers 302 to signed
storage elsewhere was refused outright, and every such image lost; now each hop is followed with the key
only while the hops stay on the API's origin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from batch.errors import ApiStatusError, BrokenAnswerError
from batch.running.client import DOWNLOAD_REDIRECTS, ApiClient, ClientConfig

KEY = "sk-canary-redirect-0123456789"
PNG = b"\x89PNG\r\n\x1a\n" + b"picture" * 10

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


@dataclass
class Hops:
    """A server whose routes `add` sets: each GET is recorded as (host, path, whether the key came)."""

    port: int = 0
    seen: list[tuple[str, str, bool]] = field(default_factory=list)
    routes: dict[str, web.Response] = field(default_factory=dict)

    def api(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def storage(self, path: str) -> str:  # the same socket under another name: another origin
        return f"http://localhost:{self.port}{path}"

    def redirect(self, path: str, to: str, status: int = 302) -> None:
        self.routes[path] = web.Response(status=status, headers={"Location": to})

    def file(self, path: str) -> None:
        self.routes[path] = web.Response(body=PNG, content_type="image/png")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        carried = request.headers.get("Authorization") == f"Bearer {KEY}"
        self.seen.append((request.host.partition(":")[0], request.path, carried))
        found = self.routes.get(request.path)
        if found is None:
            return web.Response(status=404)
        return web.Response(status=found.status, headers=found.headers, body=found.body)


@pytest.fixture
async def hops() -> AsyncIterator[Hops]:
    found = Hops()
    app = web.Application()
    app.router.add_get("/{tail:.*}", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.port = runner.addresses[0][1]
    yield found
    await runner.cleanup()


def client(hops: Hops) -> ApiClient:
    return ApiClient(ClientConfig(base_url=hops.api("/v1/ai"), api_key=KEY))


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_link_on_the_api_origin_that_redirects_to_storage_is_followed_without_the_key(
    hops: Hops, status: int
) -> None:
    hops.redirect("/v1/ai/files/a.png", hops.storage("/bucket/a.png?sig=abc"), status)
    hops.file("/bucket/a.png")
    async with client(hops) as api:
        assert await api.download(hops.api("/v1/ai/files/a.png")) == PNG
    assert hops.seen == [("127.0.0.1", "/v1/ai/files/a.png", True), ("localhost", "/bucket/a.png", False)]


async def test_once_a_hop_left_the_origin_the_key_never_goes_again_even_back_home(hops: Hops) -> None:
    """API link -> storage -> a relative Location -> back to the API's origin: the key only on the first."""
    hops.redirect("/v1/ai/files/a.png", hops.storage("/bucket/a.png"))
    hops.redirect("/bucket/a.png", "../mirror/a.png")
    hops.redirect("/mirror/a.png", hops.api("/v1/ai/files/final.png"))
    hops.file("/v1/ai/files/final.png")
    async with client(hops) as api:
        assert await api.download(hops.api("/v1/ai/files/a.png")) == PNG
    assert hops.seen == [
        ("127.0.0.1", "/v1/ai/files/a.png", True),
        ("localhost", "/bucket/a.png", False),
        ("localhost", "/mirror/a.png", False),
        ("127.0.0.1", "/v1/ai/files/final.png", False),
    ]


@pytest.mark.parametrize("spelled", [KEY, "".join(f"%{ord(c):02X}" for c in KEY)])
async def test_a_redirect_whose_location_spells_the_key_is_not_followed(hops: Hops, spelled: str) -> None:
    """A server that echoes the key into a Location would have it carried, in the URL, to any host."""
    hops.redirect("/v1/ai/files/a.png", hops.storage(f"/steal?k={spelled}"))
    hops.file("/steal")
    async with client(hops) as api:
        with pytest.raises(BrokenAnswerError) as caught:
            await api.download(hops.api("/v1/ai/files/a.png"))
    assert "holds the API key" in str(caught.value) and KEY not in str(caught.value)
    assert [path for _, path, _ in hops.seen] == ["/v1/ai/files/a.png"]


async def test_a_key_broken_by_tabs_in_a_location_is_seen_as_the_url_will_be_sent(hops: Hops) -> None:
    """urljoin drops tabs (and line breaks): `s\tk-...\t9` went out as the whole key, to another host."""
    spelled = f"{KEY[0]}\t{KEY[1:-1]}\t{KEY[-1]}"
    hops.redirect("/v1/ai/files/a.png", hops.storage(f"/steal?k={spelled}"))
    hops.file("/steal")
    async with client(hops) as api:
        with pytest.raises(BrokenAnswerError, match="holds the API key"):
            await api.download(hops.api("/v1/ai/files/a.png"))
    assert [path for _, path, _ in hops.seen] == ["/v1/ai/files/a.png"]


async def test_a_location_that_only_begins_as_the_key_does_is_followed(hops: Hops) -> None:
    """A signed link sharing the key's first characters (a JWT beside a JWT key: `eyJhbGciOi...`) was
    refused as a leak, and every image behind such a gateway lost after it was paid for."""
    token = KEY[:12] + "another-signature"
    hops.redirect("/v1/ai/files/a.png", hops.storage(f"/bucket/a.png?token={token}"))
    hops.file("/bucket/a.png")
    async with client(hops) as api:
        assert await api.download(hops.api("/v1/ai/files/a.png")) == PNG
    assert hops.seen[-1] == ("localhost", "/bucket/a.png", False)


@pytest.mark.parametrize("bad", ["http://localhost:99999/b.png", "http://[::1/b.png"])
async def test_a_link_or_a_redirect_that_is_no_url_is_a_broken_answer_not_a_crash(
    hops: Hops, bad: str
) -> None:
    """A ValueError of the URL parser escaped the download, and the task's images that had come with it
    were thrown away (the task failed as unreadable, and a retry-failed would buy it again)."""
    hops.redirect("/v1/ai/files/a.png", bad)
    async with client(hops) as api:
        with pytest.raises(BrokenAnswerError, match=r"is no URL|an unreadable Location"):
            await api.download(hops.api("/v1/ai/files/a.png"))
        with pytest.raises(BrokenAnswerError, match="is no URL"):
            await api.download(bad)


async def test_a_redirect_loop_ends_after_the_allowed_hops(hops: Hops) -> None:
    hops.redirect("/a", "/b")
    hops.redirect("/b", "/a")
    async with client(hops) as api:
        with pytest.raises(BrokenAnswerError) as caught:
            await api.download(hops.storage("/a"))
    assert f"more than {DOWNLOAD_REDIRECTS} redirects" in str(caught.value)
    assert len(hops.seen) == DOWNLOAD_REDIRECTS + 1 and not any(carried for *_, carried in hops.seen)


async def test_a_redirect_without_a_location_or_to_another_scheme_fails_as_it_is(hops: Hops) -> None:
    hops.routes["/v1/ai/files/a.png"] = web.Response(status=302)
    hops.redirect("/v1/ai/files/b.png", "ftp://example.test/b.png")
    async with client(hops) as api:
        with pytest.raises(ApiStatusError) as status:
            await api.download(hops.api("/v1/ai/files/a.png"))
        with pytest.raises(BrokenAnswerError) as scheme:
            await api.download(hops.api("/v1/ai/files/b.png"))
    assert status.value.status == 302
    assert "must be http(s)" in str(scheme.value)
