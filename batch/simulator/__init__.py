"""A simulator of the MaaS generative API (images generate / edit, Gemini chat) on a real loopback server.

It speaks the API of `API.md` exactly, validates every field, answers with real images, reports usage,
and misbehaves on demand (latency, rate limits, 5xx, broken answers) so that a client can be tested and
benchmarked without a key or a bill. `SimState` is the ground truth of what was asked and billed.

    async with running_simulator(SimConfig(latency=0.05)) as sim:
        ...  # point a client at sim.endpoint_url("my-endpoint")
    with simulator_in_thread(SimConfig(faults={"reset": 0.1}, seed=1)) as sim:
        ...  # from sync code, or a subprocess given sim.base_url
"""

from __future__ import annotations

from .config import BILLED_FAULTS, FAULT_NAMES, ImageMode, SimConfig
from .exchange import REQUEST_ID_HEADER
from .flags import add_arguments, config_from_args
from .running import RunningSimulator, running_simulator, serve, simulator_in_thread
from .server import BASE_PATH, STATS_PATH, build_app
from .state import RequestRecord, SimState

__all__ = [
    "BASE_PATH",
    "BILLED_FAULTS",
    "FAULT_NAMES",
    "REQUEST_ID_HEADER",
    "STATS_PATH",
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
