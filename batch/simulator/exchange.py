"""One request on its way through the server: its record in the making, its key, its JSON body.

Kept apart from the routing in `server.py` so that each stays small; nothing here knows about faults.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from .config import SimConfig
from .errors import ApiError, invalid
from .state import RequestRecord, task_id_of

REQUEST_ID_HEADER = "X-Client-Request-Id"
# The server's own id of each API answer, as real gateways send it.
SERVER_REQUEST_ID_HEADER = "x-request-id"
_BEARER = re.compile(r"Bearer +(?P<key>\S+)", re.IGNORECASE)


@dataclass
class Exchange:
    """What is known about one request while it is handled; becomes its RequestRecord."""

    kind: str
    method: str
    endpoint: str | None
    request_id: str | None
    arrived: float  # unix time
    started: float  # monotonic
    status: int = 0  # 0 until known
    fault: str | None = None
    billed: int = 0
    key_id: str = ""  # set once the request is authorised
    x_request_id: str | None = None  # the server's id, sent as the x-request-id header
    serial: str = ""  # the server's own name of the request, unique, sent or not (names its served files)
    answer_id: str | None = None  # a chat answer's `id`
    shapes: tuple[str, ...] = ()  # answer shapes applied

    @classmethod
    def begin(
        cls, kind: str, request: web.Request, x_request_id: str | None = None, serial: str = ""
    ) -> Exchange:
        return cls(
            kind=kind,
            method=request.method,
            endpoint=request.match_info.get("endpoint"),
            request_id=request.headers.get(REQUEST_ID_HEADER),
            arrived=time.time(),
            started=time.monotonic(),
            x_request_id=x_request_id,
            serial=serial or x_request_id or "",
        )

    @property
    def headers(self) -> dict[str, str]:
        """Headers every answer to this request carries."""
        return {SERVER_REQUEST_ID_HEADER: self.x_request_id} if self.x_request_id else {}

    @property
    def task_id(self) -> str | None:
        return task_id_of(self.request_id)

    def record(self) -> RequestRecord:
        return RequestRecord(
            time=self.arrived,
            method=self.method,
            kind=self.kind,
            endpoint=self.endpoint,
            request_id=self.request_id,
            task_id=self.task_id,
            status=self.status,
            fault=self.fault,
            billed_tokens=self.billed,
            elapsed=round(time.monotonic() - self.started, 6),
            x_request_id=self.x_request_id,
            answer_id=self.answer_id,
            shapes=self.shapes,
        )


def authorize(request: web.Request, config: SimConfig) -> str:
    """Check the bearer key; return an opaque id of it (keys are never stored, echoed or logged)."""
    match = _BEARER.fullmatch(request.headers.get("Authorization", "").strip())
    if match is None:
        raise ApiError(
            401, "Missing or malformed Authorization header: expected 'Bearer <key>'.", code="invalid_api_key"
        )
    key = match["key"].encode()
    if any(hmac.compare_digest(key, forbidden.encode()) for forbidden in config.forbidden_keys):
        raise ApiError(403, "This key is not allowed to use this resource.", code="permission_denied")
    if config.api_key is not None and not hmac.compare_digest(key, config.api_key.encode()):
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
    return hashlib.sha256(key).hexdigest()[:16]


async def json_body(request: web.Request) -> object:
    """The parsed JSON body, whatever its Content-Type claims; 400 if it does not parse."""
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(None, "The request body is not valid JSON.", "invalid_json") from exc


def b64_item(image: bytes) -> bytes:
    """One `data` item of the default shape, from base64 bytes."""
    return b'{"b64_json": "' + image + b'"}'


def image_answer_body(created: int, items: list[bytes] | None, usage: Mapping[str, object]) -> bytes:
    """The images' JSON body, assembled from encoded `data` items without re-encoding megabytes of strings."""
    parts = [b'{"created": ', str(created).encode()]
    if items is not None:
        parts.append(b', "data": [')
        parts.append(b", ".join(items))
        parts.append(b"]")
    parts += [b', "usage": ', json.dumps(usage).encode(), b"}"]
    return b"".join(parts)
