"""A real Azure Blob service on loopback for the tests of `--out az://...`: Azurite, Microsoft's emulator
(from the npm registry: `.ci/run` installs it), one per test session on a free port, a fresh container per
test. adlfs finds it through AZURE_STORAGE_CONNECTION_STRING, with Azurite's published development
account. Without Azurite the tests that need it are skipped, with the reason, unless REQUIRE_AZURITE is set
(CI), where they fail."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3_server import S3

# Azurite's well-known development account (its documentation publishes the key); no real account.
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Azure(S3):
    """A container of the test's own, as S3 holds a bucket: `url` is az://<container>/out."""

    @property
    def url(self) -> str:
        return f"az://{self.bucket}/out"


def _azurite() -> str | None:
    found = os.environ.get("AZURITE_BLOB") or shutil.which("azurite-blob")
    return found if found and Path(found).exists() else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def azure_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("adlfs", reason="pip install -e '.[test]' (adlfs)")
    command = _azurite()
    if command is None:
        if os.environ.get("REQUIRE_AZURITE"):
            pytest.fail("REQUIRE_AZURITE is set but azurite-blob is not found (AZURITE_BLOB or PATH)")
        pytest.skip("Azurite is not installed (npm install azurite; AZURITE_BLOB=path/to/azurite-blob)")
    port = _free_port()
    folder = tmp_path_factory.mktemp("azurite")
    server = subprocess.Popen(
        [
            command,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--silent",
        ],
        cwd=folder,  # its debug log, if any, lands here
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # until it takes connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert server.poll() is None, "azurite-blob exited"
                assert time.monotonic() < deadline, "azurite-blob did not listen within 30 s"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/{ACCOUNT}"
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:  # it once took longer in CI (the teardown failed)
            server.kill()
            server.wait(10)


@pytest.fixture
def azure(azure_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Azure:
    import fsspec

    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={azure_endpoint};"
    )
    env = {
        "AZURE_STORAGE_CONNECTION_STRING": connection,
        # where subprocesses stage: a run killed with SIGKILL cannot remove its staging folder
        "TMPDIR": str(tmp_path),
        # where runs lock the store on this machine: the test's own, not the user's ~/.cache
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fs = fsspec.filesystem("az", connection_string=connection)
    container = f"test-{secrets.token_hex(4)}"
    fs.mkdir(container)
    return Azure(container, env, fs)
