"""DIR's page built once, in a process of its own (gallery's _page_process starts it with the run's own
import path: `pagebuild DIR [--whole] [--parent PID]`): as gallery.Rebuilder asks for it during a run,
at the lowest CPU priority and making no thumbnail (the run's own thread makes them, as images are
saved); with --whole, as a big run's last build (gallery.build_apart), making the thumbnails still
missing.

Not in a thread of the run: a thread building a page of 100,000 results holds the GIL for seconds at a
time, and the event loop, which gives the GIL up at each poll, then waits up to a switch interval (5 ms)
to take it back at every turn: a run of 1,000,000 tasks with no latency to hide it fell from about 2,400
tasks a second to 50-100 for the minute the page of 150,000 results took (BENCHMARKS.md). A process of
its own has its own GIL, its memory is given back when it ends, and the system's scheduler, not the GIL,
shares the CPU with it.

It sends nothing. SIGTERM (the run ending) stops it as an error would: no half-written page is left in
DIR. With --parent (POSIX), it stops so too once that process is gone (a run killed with SIGKILL), rather
than write over a page that a later run or `maas-batch gallery` may have written since.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

PARENT_CHECK_EVERY = 1.0  # seconds between two looks at whether the run is still there


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds: write_atomic_chunks removes its temporary file


def _watch(parent: int) -> None:
    """SIGTERM to this process once its parent is no longer `parent` (it died: this one was adopted)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_EVERY)
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pagebuild", description="DIR's page, built once")
    parser.add_argument("dir", type=Path)
    parser.add_argument("--whole", action="store_true", help="make the missing thumbnails too")
    parser.add_argument("--parent", type=int, help="stop when this process is gone")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    if args.parent is not None and os.name == "posix":
        threading.Thread(target=_watch, args=(args.parent,), daemon=True).start()
    if not args.whole and hasattr(os, "nice"):
        os.nice(19)  # the run comes first
    from batch.errors import OutputError
    from batch.output import gallery

    try:
        gallery.build(args.dir, make_missing=args.whole)
    except Exception as exc:  # a view: the run logs it and goes on
        print(exc if isinstance(exc, OutputError) else f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
