"""`maas-batch run` with no HTTP: every request is answered at once, in the process, with the simulator's
chat answer. What is left is the engine's own CPU (the manifest's walks, the journals, the ledger, events,
the page), without aiohttp's and the server's, which make whole runs vary by 5-15% on a shared machine.

    python bench/stubbed_run.py run MANIFEST --out DIR -c 64     # the arguments of `maas-batch run`

bench/cpu_ab.py --no-http runs it for each version it compares (PYTHONPATH on that version's tree): it
replaces `ApiClient.send`, whose signature and `Reply` are the same in every version it is used on.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

ANSWER = json.dumps(
    {
        "id": "chatcmpl-stub",
        "created": 1795965647,
        "model": "gemini-2.5-flash",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Simulated answer 1 from gemini-2.5-flash."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 26, "total_tokens": 36},
    }
).encode()


def main() -> int:
    from batch.cli import main as cli
    from batch.running import client

    async def send(self: Any, endpoint: str, request: Any, request_id: str) -> Any:
        json.dumps(request.json)  # the body a request would carry
        await asyncio.sleep(0)  # one pass of the loop, as an answer's arrival would take
        return client.Reply(200, json.loads(ANSWER), 0.001, "req-stub", ANSWER, True)

    client.ApiClient.send = send  # type: ignore[method-assign]
    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
