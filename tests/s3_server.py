"""A real S3 on loopback for the tests of `--out s3://...`: moto's ThreadedMotoServer (real HTTP, real
If-None-Match handling), one per test session on a free port, a fresh bucket per test. s3fs finds it
through AWS_ENDPOINT_URL, as it would find MinIO; the credentials are moto's dummies."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class S3:
    """A bucket of the test's own: `url` to give --out, `env` for a subprocess, `fs` to look inside."""

    bucket: str
    env: dict[str, str]
    fs: Any

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/out"

    def objects(self, folder: str = "") -> dict[str, bytes]:
        """Every object under out/ (or out/<folder>), by its name under out/."""
        root = f"{self.bucket}/out"
        self.fs.invalidate_cache()
        found = self.fs.find(f"{root}/{folder}".rstrip("/"))
        return {name[len(root) + 1 :]: self.fs.cat_file(name) for name in found}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    server_module = pytest.importorskip("moto.server", reason="pip install -e '.[test]' (moto[server])")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3:
    import fsspec

    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # where subprocesses stage: a run killed with SIGKILL cannot remove its staging folder
        "TMPDIR": str(tmp_path),
        # where runs lock the store on this machine: the test's own, not the user's ~/.cache
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint, key="testing", secret="testing")
    bucket = f"test-{secrets.token_hex(4)}"
    fs.mkdir(bucket)
    return S3(bucket, env, fs)
