"""What an answer's JSON takes in memory once parsed, against its size: hostile shapes beside the ones the
API really sends.

    python bench/answer_memory.py [--mb 60]

Each shape (an array of one repeated item, --mb MB of it) is parsed by `codec.loads_answer` in a fresh
subprocess; its memory is the growth of the child's peak RSS (ru_maxrss) over the parse. A stream's chunks
are parsed one event at a time and kept, as the client keeps them, so they are measured as one array.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHUNK = (
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1764460800,"model":"gemini-2.5-flash",'
    b'"choices":[{"index":0,"delta":{"content":" word"},"finish_reason":null}]},'
)
SHAPES = {
    "empty objects": b"{},",
    "empty arrays": b"[],",
    "objects of one key": b'{"a":1},',
    "zeros": b"0,",
    "floats": b"1.5,",
    "short strings": b'"ab",',
    "token logprobs": b'{"token":"Hello","logprob":-0.0012,"bytes":[72,101,108,108,111],"top_logprobs":[]},',
    "stream chunks": CHUNK,
}

CHILD = """
import json, resource, sys
from batch import codec
unit, size = sys.stdin.buffer.read(), int(sys.argv[1])
raw = b"[" + unit * max(1, size // len(unit))
raw = raw[:-1] + b"]"
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
parsed = codec.loads_answer(raw)
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"bytes": len(raw), "parsed": grown}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=60.0, help="size of each answer (default 60)")
    args = parser.parse_args()
    size = int(args.mb * 2**20)
    print(f"{'shape':<20} {'JSON MB':>8} {'parsed MB':>10} {'x size':>7}")
    for name, unit in SHAPES.items():
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(size)], input=unit, check=True, capture_output=True
        ).stdout
        row = json.loads(out)
        mb, parsed = row["bytes"] / 2**20, row["parsed"] / 2**20
        print(f"{name:<20} {mb:>8.1f} {parsed:>10.0f} {parsed / mb:>7.1f}")


if __name__ == "__main__":
    main()
