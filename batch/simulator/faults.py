"""Seeded misbehaviour: the random draws of a request, the choice of its fault, and the broken answers.

Each request takes the same number of draws from the server's `random.Random(seed)` at the same point (on
arrival, before any await), so a seeded run replays exactly for the same sequence of requests.
Faults that a request cannot express (a cut stream on a non-streamed request, a broken picture in a text
chat) are skipped for that request: it is answered normally.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from .config import FAULT_NAMES
from .errors import gateway_page

SERVER_ERROR_STATUSES = (500, 502, 503, 504)
HUGE_CHUNK_BYTES = 64 * 1024
_IMAGE_FAULTS = frozenset({"bad_base64", "bad_image", "bomb"})
_WHOLE_BODY_FAULTS = frozenset(
    {"reset", "truncate", "html200", "not_json", "quota", "slow", "huge", "no_data"}
)
NOT_BASE64 = "@@ this is not base64 !! simulated fault @@"


@dataclass(frozen=True)
class Draws:
    """All the randomness one request may need, taken at once."""

    rate_429: float
    error: float
    error_status: int
    error_html: bool
    jitter: float  # uniform in [-1, 1]
    fault: float

    @classmethod
    def take(cls, rng: random.Random, statuses: tuple[int, ...] = SERVER_ERROR_STATUSES) -> Draws:
        return cls(
            rate_429=rng.random(),
            error=rng.random(),
            error_status=rng.choice(statuses),
            error_html=rng.random() < 0.5,
            jitter=rng.uniform(-1.0, 1.0),
            fault=rng.random(),
        )


def applicable_faults(*, images: bool, stream: bool) -> frozenset[str]:
    """Which faults a request can show: `images` if its answer carries pictures, `stream` if SSE."""
    if stream:
        return frozenset(
            {
                "reset",
                "html200",
                "not_json",
                "no_data",
                "quota",
                "slow",
                "huge",
                "stream_cut",
                "stream_reset_done",
                "stream_error_done",
                "stream_error_mid",
                "stream_hang",
            }
        )
    return _WHOLE_BODY_FAULTS | (_IMAGE_FAULTS if images else frozenset())


def pick_fault(faults: Mapping[str, float], draw: float) -> str | None:
    """The fault (at most one) that a uniform draw lands on, walking FAULT_NAMES in order."""
    threshold = 0.0
    for name in FAULT_NAMES:
        threshold += faults.get(name, 0.0)
        if draw < threshold:
            return name
    return None


def html_200() -> web.Response:
    """A proxy's HTML page with status 200: not the JSON the client asked for."""
    return web.Response(status=200, text=gateway_page(200), content_type="text/html")


def not_json() -> web.Response:
    """A 200 of plain-text garbage."""
    return web.Response(
        status=200, text="upstream said: ok?? <<garbage>> \x00\x01 not json\n", content_type="text/plain"
    )


def truncated(body: bytes, content_type: str) -> web.Response:
    """A 200 whose body stops halfway, with a Content-Length that matches the cut body."""
    return web.Response(status=200, body=body[: len(body) // 2], content_type=content_type)


async def reset(
    request: web.Request, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
) -> web.StreamResponse:
    """Headers announcing the whole body, half of it, then an aborted connection."""
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = content_type
    response.content_length = len(body)
    await response.prepare(request)
    try:
        await response.write(body[: len(body) // 2])
    except ConnectionError:
        return response
    abort(request)
    return response


def abort(request: web.Request) -> None:
    """Drop the connection at once (a RST, not a clean close)."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def huge(
    request: web.Request, total: int, headers: Mapping[str, str] | None = None
) -> web.StreamResponse:
    """A 200 JSON body of `total` bytes, chunked and generated as it goes, never held whole in memory."""
    head = b'{"created": 0, "data": [{"b64_json": "'
    tail = b'"}]}'
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "application/json"
    response.enable_chunked_encoding()
    await response.prepare(request)
    filler = b"A" * HUGE_CHUNK_BYTES
    remaining = total - len(head) - len(tail)
    try:
        await response.write(head)
        while remaining > 0:
            step = min(remaining, HUGE_CHUNK_BYTES)
            await response.write(filler[:step])
            remaining -= step
            await asyncio.sleep(0)  # let other requests (and a disconnect) through
        await response.write(tail)
    except ConnectionError:
        pass  # the client gave up, as it should
    return response
