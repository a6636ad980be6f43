"""`python -m batch.output.pagebuild DIR [--whole]`: DIR's page built once, in a process of its own: as
gallery.Rebuilder asks for it during a run, at the lowest CPU priority and making no thumbnail (the run's
own thread makes them, as images are saved); with --whole, as a big run's last build (gallery.build_apart),
making the thumbnails still missing.

Not in a thread of the run: a thread building a page of 100,000 results holds the GIL for seconds at a
time, and the event loop, which gives the GIL up at each poll, then waits up to a switch interval (5 ms)
to take it back at every turn: a run of 1,000,000 tasks with no latency to hide it fell from about 2,400
tasks a second to 50-100 for the minute the page of 150,000 results took (BENCHMARKS.md). A process of
its own has its own GIL, its memory is given back when it ends, and the system's scheduler, not the GIL,
shares the CPU with it.

It sends nothing. SIGTERM (the run ending) stops it as an error would: no half-written page is left in DIR.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import FrameType


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds: write_atomic_chunks removes its temporary file


def main(argv: list[str]) -> int:
    whole = argv[1:] == ["--whole"]
    if len(argv) != 1 + whole:
        print("usage: python -m batch.output.pagebuild DIR [--whole]", file=sys.stderr)
        return 64
    signal.signal(signal.SIGTERM, _stop)
    if not whole and hasattr(os, "nice"):
        os.nice(19)  # the run comes first
    from batch.errors import OutputError
    from batch.output import gallery

    try:
        gallery.build(Path(argv[0]), make_missing=whole)
    except Exception as exc:  # a view: the run logs it and goes on
        print(exc if isinstance(exc, OutputError) else f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
