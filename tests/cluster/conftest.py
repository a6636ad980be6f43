"""A real redis-server on a free loopback port, for the tests of shards on a queue. Skipped with a reason
when redis-server is not installed, except where REQUIRE_REDIS is set (.ci/run installs it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import KEY, ROOT

REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    process = subprocess.Popen(
        [
            REDIS_SERVER or "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    while True:  # until it answers PING (or died: the port was taken meanwhile)
        try:
            client.ping()
            client.close()
            return process, url
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise
            time.sleep(0.01)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if REDIS_SERVER is None:
        if os.environ.get("REQUIRE_REDIS"):
            pytest.fail("REQUIRE_REDIS is set, but there is no redis-server on PATH")
        pytest.skip(
            "redis-server is not installed (apt-get install redis-server); REQUIRE_REDIS=1 requires it"
        )
    folder = tmp_path_factory.mktemp("redis")
    for attempt in range(3):
        try:
            process, url = _start(folder)
            break
        except redis.ConnectionError:
            if attempt == 2:
                raise
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The module's Redis, empty for each test."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    yield redis_server
    client.close()


def maas(
    *args: str, env_extra: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """`maas-batch ARGS` in a subprocess (stderr to `log`), with the test key and no other MAAS_ setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env.update(MAAS_API_KEY=KEY, PYTHONPATH=str(ROOT), **(env_extra or {}))
    stderr = log.open("wb") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "batch", *args], env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
    finally:
        if log is not None:
            stderr.close()  # type: ignore[union-attr]
