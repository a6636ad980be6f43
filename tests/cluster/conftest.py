"""A real redis-server on a free loopback port, for the tests of shards on a queue. Skipped with a reason
when redis-server is not installed, except where REQUIRE_REDIS is set (.ci/run installs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import KEY, ROOT
from tests.redis_server import REDIS_SERVER, RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real redis-server per test module (tests.redis_server starts and stops it)."""
    if REDIS_SERVER is None:
        if os.environ.get("REQUIRE_REDIS"):
            pytest.fail("REQUIRE_REDIS is set, but there is no redis-server on PATH")
        pytest.skip(
            "redis-server is not installed (apt-get install redis-server); REQUIRE_REDIS=1 requires it"
        )
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        if server.process.poll() is None:
            server.kill()


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
