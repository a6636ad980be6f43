"""Run a script or a module with uvloop as the event loop, unchanged: what `--uvloop` of bench/peers.py uses
to say what uvloop would buy each peer before anyone adopts it.

    python bench/with_uvloop.py -m batch run MANIFEST --out DIR     # a module, as `python -m` would
    python bench/with_uvloop.py bench/handwritten.py ARGS...        # a script

asyncio.run and anyio.run (without a loop_factory) both make their loop from the policy set here.
"""

from __future__ import annotations

import asyncio
import runpy
import sys

import uvloop


def main() -> None:
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if sys.argv[1] == "-m":
        sys.argv = [sys.argv[2], *sys.argv[3:]]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
