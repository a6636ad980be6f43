"""A simulator of the MaaS generative API (images generate / edit, Gemini chat) on a real loopback server.

It speaks the API of `API.md` exactly, validates every field, answers with real images, reports usage,
and misbehaves on demand (latency, rate limits, 5xx, broken answers) so that a client can be tested and
benchmarked without a key or a bill. `SimState` is the ground truth of what was asked and billed.

    async with running_simulator(SimConfig(latency=0.05)) as sim:
        ...  # point a client at sim.endpoint_url("my-endpoint")
    with simulator_in_thread(SimConfig(faults={"reset": 0.1}, seed=1)) as sim:
        ...  # from sync code, or a subprocess given sim.base_url

`SimConfig(answers={"url", "reasoning"})` (or `--answer url --answer reasoning`) answers in the other shapes
real gateways send (`ANSWER_SHAPES`): image URLs served on another origin (downloads recorded in
`SimState.downloads`), data URLs, tool calls, reasoning, thought parts, odd streams and usage. Every answer
carries an `x-request-id` header, kept in its `RequestRecord`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ANSWER_SHAPES, BILLED_FAULTS, FAULT_NAMES, ImageMode, SimConfig
    from .exchange import REQUEST_ID_HEADER
    from .files import FILES_PATH
    from .flags import add_arguments, config_from_args
    from .running import RunningSimulator, running_simulator, serve, simulator_in_thread
    from .server import BASE_PATH, STATS_PATH, build_app
    from .state import DownloadRecord, RequestRecord, SimState

# Names are imported on first use (PEP 562), so that the command line can read the simulator's flags
# without importing its server (aiohttp, Pillow): `maas-batch` starts faster.
_HOME = {
    "ANSWER_SHAPES": "config",
    "BILLED_FAULTS": "config",
    "FAULT_NAMES": "config",
    "ImageMode": "config",
    "SimConfig": "config",
    "REQUEST_ID_HEADER": "exchange",
    "add_arguments": "flags",
    "config_from_args": "flags",
    "RunningSimulator": "running",
    "running_simulator": "running",
    "serve": "running",
    "simulator_in_thread": "running",
    "BASE_PATH": "server",
    "STATS_PATH": "server",
    "build_app": "server",
    "FILES_PATH": "files",
    "DownloadRecord": "state",
    "RequestRecord": "state",
    "SimState": "state",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{home}", __name__), name)


__all__ = [
    "ANSWER_SHAPES",
    "BASE_PATH",
    "BILLED_FAULTS",
    "FAULT_NAMES",
    "FILES_PATH",
    "REQUEST_ID_HEADER",
    "STATS_PATH",
    "DownloadRecord",
    "ImageMode",
    "RequestRecord",
    "RunningSimulator",
    "SimConfig",
    "SimState",
    "add_arguments",
    "build_app",
    "config_from_args",
    "running_simulator",
    "serve",
    "simulator_in_thread",
]
