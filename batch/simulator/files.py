"""Image files served for the `url` answer shapes, on a different origin from the API's.

A real gateway answers `data[i].url` pointing at a storage host, not at itself, and a client must fetch it
without the API key. The simulator serves the bytes itself (`GET /_sim/files/{name}`) but writes the URLs
with another host name for the same socket (`localhost` for a server reached as `127.0.0.1`, and back), so
that a client that sends its key along is caught: every download is recorded with `authorized`.
Old files are dropped (the links expire, answering 404), so a long run does not hold every image.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web

from .state import DownloadRecord, SimState

FILES_PATH = "/_sim/files"
LINKS_PATH = "/_sim/links"  # `url_redirect`: on the API's origin, a 302 to the file under FILES_PATH
MAX_FILES = 1000
MAX_FILE_BYTES = 512 * 1024 * 1024
_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_LOOPBACK_NAMES = {"127.0.0.1": "localhost", "localhost": "127.0.0.1", "::1": "localhost"}


def content_type(output_format: str) -> str:
    """The MIME type of an output format."""
    return _CONTENT_TYPES[output_format]


def files_origin(request: web.Request, files_host: str | None) -> str:
    """`http://HOST:PORT` of the file URLs: `files_host`, or the other loopback name of the API's host."""
    api_host = request.url.host or "127.0.0.1"
    host = files_host if files_host is not None else _LOOPBACK_NAMES.get(api_host.strip("[]"), "127.0.0.1")
    port = request.url.port
    if port is None:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        port = int(sockname[1]) if sockname else 80
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


@dataclass
class _File:
    data: bytes
    content_type: str
    flaky: bool
    gets: int = 0


class FileStore:
    """The latest served files by name; thread-safe (answers are assembled off the event loop)."""

    def __init__(self, state: SimState, *, max_files: int = MAX_FILES, max_bytes: int = MAX_FILE_BYTES):
        self._state = state
        self._max_files = max_files
        self._max_bytes = max_bytes
        self._files: OrderedDict[str, _File] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, name: str, data: bytes, output_format: str, *, flaky: bool) -> str:
        """Keep a file as `name`.`output_format`; returns its URL path. A flaky file's first GET is a 503."""
        path = f"{FILES_PATH}/{name}.{output_format}"
        with self._lock:
            self._files[path] = _File(data, content_type(output_format), flaky)
            self._bytes += len(data)
            while len(self._files) > self._max_files or (
                self._bytes > self._max_bytes and len(self._files) > 1
            ):
                self._bytes -= len(self._files.popitem(last=False)[1].data)
        return path

    def _take(self, path: str) -> tuple[int, _File | None]:
        with self._lock:
            found = self._files.get(path)
            if found is None:
                return 404, None
            found.gets += 1
            return (503, None) if found.flaky and found.gets == 1 else (200, found)

    def record(self, request: web.Request, status: int) -> None:
        """Record a GET of a file or of a link to one, and whether it carried the key."""
        self._state.record_download(
            DownloadRecord(
                time=time.time(),
                path=request.path,
                host=request.host,
                status=status,
                authorized="Authorization" in request.headers,
            )
        )

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """GET a file: 200 with its bytes, 503 the first time for a flaky one, 404 once expired or unknown."""
        status, found = self._take(request.path)
        self.record(request, status)
        if found is None:
            reason = "Service Unavailable" if status == 503 else "Not Found"
            return web.Response(status=status, text=f"{status} {reason}\n", content_type="text/plain")
        return web.Response(body=found.data, content_type=found.content_type)
