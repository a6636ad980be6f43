"""The API key comes from the environment only and appears nowhere: not in stdout, stderr, logs, or any file
of the output directory, on every path through the tool, good or bad. TLS verification has no off switch."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.running.client import ApiClient, ClientConfig
from batch.simulator import SimConfig, simulator_in_thread
from tests.conftest import FAST, Outcome

CANARY = "sk-CANARY-7f3b9d2e4a1c"


def grep_everything(outcome: Outcome, out: Path) -> None:
    assert CANARY not in outcome.out and CANARY not in outcome.err
    assert CANARY[3:] not in outcome.out + outcome.err  # nor a fragment of it
    if out.exists():
        for path in out.rglob("*"):
            if path.is_file():
                assert CANARY.encode() not in path.read_bytes(), path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("scenario", "code"),
    [
        ("success-verbose", 0),
        ("refused-key", 77),
        ("no-server", 78),  # nothing listens at the base URL from the first request: stopped at once
        ("invalid-manifest", 65),
        ("quota", 69),
        ("outage", 69),
        ("broken-answers", 69),  # nine answers in ten broken: the outage limit (0.3 s) stops the run
        ("validate-show", 0),
    ],
)
def test_the_key_appears_nowhere(
    scenario: str, code: int, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write(
        "tasks:\n"
        + "".join(f"  - {{kind: generate, prompt: p {i}}}\n" for i in range(4))
        + "  - {kind: chat, model: m, prompt: hello, stream: true}\n"
    )
    out = tmp_path / "out"
    config = {
        "success-verbose": SimConfig(api_key=CANARY),
        "refused-key": SimConfig(api_key="sk-the-right-one"),
        "quota": SimConfig(api_key=CANARY, faults={"quota": 1.0}),
        "outage": SimConfig(api_key=CANARY, error_rate=1.0),
        "broken-answers": SimConfig(
            api_key=CANARY, faults={"reset": 0.3, "truncate": 0.3, "html200": 0.3}, seed=4
        ),
    }.get(scenario, SimConfig(api_key=CANARY))
    with simulator_in_thread(config) as sim:
        env = {"MAAS_API_KEY": CANARY, "MAAS_BASE_URL": sim.base_url, "MAAS_ENDPOINT": "ep"}
        args = ["run", str(manifest), "--out", str(out), *FAST, "--verbose", "--outage-limit", "0.3"]
        if scenario == "no-server":
            env["MAAS_BASE_URL"] = f"http://127.0.0.1:{free_port()}/v1/ai"
        if scenario == "invalid-manifest":
            args[1] = str(write("tasks:\n  - {kind: generate, prompt: a, n: 99}\n", "bad.yaml"))
        if scenario == "validate-show":
            args = ["validate", str(manifest), "--show", "5"]
        outcome = cli(*args, env=env)
    assert outcome.code == code, outcome
    grep_everything(outcome, out)


@pytest.mark.anyio
async def test_tls_verification_is_on_and_cannot_be_switched_off() -> None:
    async with ApiClient(ClientConfig(api_key=CANARY)) as client:
        session = client._session
        assert session is not None
        assert session.connector._ssl is True  # type: ignore[union-attr]  # aiohttp's default: verify
    assert "verify" not in ClientConfig.__dataclass_fields__
    assert CANARY not in repr(ClientConfig(api_key=CANARY))
