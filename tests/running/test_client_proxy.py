"""Proxies from the environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) and ~/.netrc, against a recording proxy
on an ephemeral port: the API's requests go through the proxy the environment names, with its credentials,
and a netrc entry for the API's host changes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from batch.errors import TransportError
from batch.kind import ApiRequest
from batch.running.client import ApiClient, ClientConfig

KEY = "sk-canary-0123456789"
REQUEST = ApiRequest("google/chat/completions", json={"model": "m", "messages": []})
ANSWER = json.dumps({"choices": [{"message": {"content": "hi"}}]}).encode()
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


class RecordingProxy:
    """Keeps each request's head; answers a plain request with ANSWER and a CONNECT with 200, then hangs up
    (so a TLS handshake through it fails)."""

    def __init__(self) -> None:
        self.heads: list[str] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := (await reader.readuntil(b"\r\n\r\n")).decode("latin-1"):
                self.heads.append(head)
                if head.startswith("CONNECT "):
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await writer.drain()
                    break
                length = next(
                    (
                        int(line.split(":")[1])
                        for line in head.lower().splitlines()
                        if line.startswith("content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(ANSWER)}\r\n\r\n".encode()
                    + ANSWER
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[RecordingProxy]:
    recorder = RecordingProxy()
    server = await asyncio.start_server(recorder.handle, "127.0.0.1", 0)
    recorder.port = server.sockets[0].getsockname()[1]
    async with server:
        yield recorder


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def header(head: str, name: str) -> str | None:
    for line in head.splitlines()[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


@pytest.mark.anyio
async def test_requests_go_through_the_proxy_the_environment_names(
    proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://proxy-user:proxy-secret@127.0.0.1:{proxy.port}")
    async with ApiClient(ClientConfig(base_url="http://api.example.test/v1/ai", api_key=KEY)) as client:
        for number in range(3):
            reply = await client.send("ep", REQUEST, f"r{number}")
            assert reply.body == {"choices": [{"message": {"content": "hi"}}]}
    assert len(proxy.heads) == 3
    for head in proxy.heads:
        assert head.startswith("POST http://api.example.test/v1/ai/ep/google/chat/completions HTTP/1.1")
        assert header(head, "Authorization") == f"Bearer {KEY}"
        # base64 of proxy-user:proxy-secret
        assert header(head, "Proxy-Authorization") == "Basic cHJveHktdXNlcjpwcm94eS1zZWNyZXQ="


@pytest.mark.anyio
async def test_a_tls_api_is_reached_through_a_tunnel_with_the_proxy_credentials(
    proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://proxy-user:proxy-secret@127.0.0.1:{proxy.port}")
    async with ApiClient(ClientConfig(base_url="https://api.example.test/v1/ai", api_key=KEY)) as client:
        with pytest.raises(TransportError) as caught:
            await client.send("ep", REQUEST, "r1")
    assert "proxy-secret" not in str(caught.value)
    (head,) = proxy.heads
    assert head.startswith("CONNECT api.example.test:443 HTTP/1.1")
    assert header(head, "Proxy-Authorization") == "Basic cHJveHktdXNlcjpwcm94eS1zZWNyZXQ="
    assert KEY not in head  # the key goes inside the tunnel only


@pytest.mark.anyio
async def test_no_proxy_sends_straight_to_the_server(
    proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "api.example.test")
    async with ApiClient(ClientConfig(base_url="http://api.example.test/v1/ai", api_key=KEY)) as client:
        with pytest.raises(TransportError):  # not resolvable, and not asked of the proxy
            await client.send("ep", REQUEST, "r1")
    assert proxy.heads == []


@pytest.mark.anyio
async def test_a_server_on_this_machine_is_never_reached_through_a_proxy(
    proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = RecordingProxy()  # here the API itself
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    async with listening:
        base = f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}/v1/ai"
        async with ApiClient(ClientConfig(base_url=base, api_key=KEY)) as client:
            await client.send("ep", REQUEST, "r1")
    assert proxy.heads == []
    (head,) = server.heads
    assert head.startswith("POST /v1/ai/ep/google/chat/completions HTTP/1.1")


@pytest.mark.anyio
async def test_a_netrc_entry_for_the_api_host_changes_nothing(
    proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """aiohttp's trust_env reads ~/.netrc for every request's host, and refuses a request that also carries
    an Authorization header (ValueError); the key is the API's only credential."""
    netrc = tmp_path / "netrc"
    netrc.write_text(
        "machine api.example.test login someone password elsewhere\ndefault login a password b\n"
    )
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    async with ApiClient(ClientConfig(base_url="http://api.example.test/v1/ai", api_key=KEY)) as client:
        reply = await client.send("ep", REQUEST, "r1")
    assert reply.status == 200
    (head,) = proxy.heads
    assert header(head, "Authorization") == f"Bearer {KEY}"


@pytest.mark.anyio
async def test_an_image_download_from_another_host_goes_through_its_proxy_without_the_key(
    proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    async with ApiClient(ClientConfig(base_url="http://api.example.test/v1/ai", api_key=KEY)) as client:
        assert await client.download("http://cdn.example.test/a.png") == ANSWER
    (head,) = proxy.heads
    assert head.startswith("GET http://cdn.example.test/a.png HTTP/1.1")
    assert header(head, "Authorization") is None
