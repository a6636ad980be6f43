"""What an answer's JSON takes in memory once parsed, beside what the client estimates before parsing it.

    python bench/answer_memory.py [--mb 60]

Each shape of answer (an array of one repeated item, --mb MB of it) is parsed by `codec.loads_answer` in
a fresh subprocess; its memory is the growth of the child's peak RSS (ru_maxrss) over the parse. The
estimate is `bodies.estimated_values` times VALUE_BYTES, what `decode_json` compares with its budget
(`parsed_budget`: 256 MB, or 4 times --max-answer-mb).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

SHAPES = {
    "empty objects": b"{},",
    "empty arrays": b"[],",
    "objects of one key": b'{"a":1},',
    "zeros": b"0,",
    "floats": b"1.5,",
    "short strings": b'"ab",',
    "token logprobs": b'{"token":"Hello","logprob":-0.0012,"bytes":[72,101,108,108,111],"top_logprobs":[]},',
    "base64 image": b'{"b64_json":"' + b"QUJD" * 2**18 + b'"},',
}

CHILD = """
import json, resource, sys, time
from batch import codec
from batch.running.bodies import VALUE_BYTES, estimated_values
unit, size = sys.stdin.buffer.read(), int(sys.argv[1])
raw = b"[" + unit * max(1, size // len(unit))
raw = raw[:-1] + b"]"
start = time.perf_counter()
values = estimated_values(raw)
counted = time.perf_counter() - start
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
parsed = codec.loads_answer(raw)
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
row = {"bytes": len(raw), "parsed": grown, "values": values, "count_s": counted}
print(json.dumps({**row, "estimate": values * VALUE_BYTES}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=60.0, help="size of each answer (default 60)")
    args = parser.parse_args()
    size = int(args.mb * 2**20)
    header = ("shape", "JSON MB", "parsed MB", "x size", "estimate MB", "est/parsed", "count ms/MB")
    print(f"{header[0]:<20} " + " ".join(f"{name:>{len(name) + 1}}" for name in header[1:]))
    for name, unit in SHAPES.items():
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(size)], input=unit, check=True, capture_output=True
        ).stdout
        row = json.loads(out)
        mb, parsed, estimate = row["bytes"] / 2**20, row["parsed"] / 2**20, row["estimate"] / 2**20
        print(
            f"{name:<20} {mb:>8.1f} {parsed:>10.0f} {parsed / mb:>7.1f} {estimate:>12.0f} "
            f"{estimate / max(parsed, 1):>11.2f} {row['count_s'] * 1000 / mb:>12.2f}"
        )


if __name__ == "__main__":
    main()
