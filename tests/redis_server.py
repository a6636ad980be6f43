"""A real redis-server for the tests of --redis: on a free loopback port, nothing saved to disk.

Skipped (with the reason) when redis-server is not installed, except where REQUIRE_REDIS is set (.ci/run,
which installs it): there a missing server fails the tests instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None and not os.environ.get("REQUIRE_REDIS"),
    reason="no redis-server on this machine (apt-get install redis-server; .ci/run does)",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ping(port: int) -> bool:
    """Whether a Redis answers PING on the port (RESP spoken by hand: no client needed to wait)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """redis-server in a subprocess; `url` to reach it, `kill` to take it away mid-test."""

    def __init__(self, folder: Path) -> None:
        assert REDIS_SERVER is not None, "REQUIRE_REDIS is set, but there is no redis-server"
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        """Start redis-server on the port (again, after `kill`: an empty one, as a restart without
        persistence gives), and wait until it answers."""
        assert REDIS_SERVER is not None
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        self.process = subprocess.Popen(
            [*command, "--save", "", "--appendonly", "no"],
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not ping(self.port):
            assert self.process.poll() is None, f"redis-server exited with {self.process.returncode}"
            assert time.monotonic() < deadline, "redis-server did not answer PING within 10 s"
            time.sleep(0.01)

    @contextlib.contextmanager
    def monitor(self) -> Iterator[Path]:
        """A file that receives every command Redis runs (MONITOR) while the block lasts."""
        log = self.folder / f"monitor-{time.monotonic_ns()}.txt"
        with log.open("w") as out:
            watcher = subprocess.Popen(["redis-cli", "-p", str(self.port), "monitor"], stdout=out)
        deadline = time.monotonic() + 10
        while "OK" not in log.read_text():  # MONITOR answers OK once it listens
            assert watcher.poll() is None and time.monotonic() < deadline, "redis-cli monitor did not start"
            time.sleep(0.01)
        try:
            yield log
        finally:
            watcher.terminate()
            watcher.wait(10)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def dump(self) -> dict[str, str]:
        """Every key in Redis with its value as text (lists, sets and hashes joined), for scanning."""
        import redis

        client = redis.Redis(port=self.port, decode_responses=True)
        try:
            found: dict[str, str] = {}
            for key in client.scan_iter():
                kind = client.type(key)
                if kind == "string":
                    value = str(client.get(key))
                elif kind == "list":
                    value = " ".join(client.lrange(key, 0, -1))
                elif kind == "zset":
                    value = " ".join(f"{m}={s}" for m, s in client.zrange(key, 0, -1, withscores=True))
                elif kind == "hash":
                    value = " ".join(f"{k}={v}" for k, v in client.hgetall(key).items())
                elif kind == "set":
                    value = " ".join(client.smembers(key))
                else:
                    value = kind
                found[key] = value
            return found
        finally:
            client.close()


def redis_server(folder: Path) -> Iterator[RedisServer]:
    server = RedisServer(folder)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.kill()
