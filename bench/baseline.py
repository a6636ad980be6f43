"""The hand-written script maas-batch is measured against: aiohttp, a semaphore, and appending JSONL.
No validation, no checkpoint, no ledger, no retries, no fsync. Image answers are decoded and written to
files, as any real script must.

    python bench/baseline.py REQUESTS.jsonl OUT_DIR --base-url URL --concurrency 64

REQUESTS.jsonl has one {"id", "path", "body"} per line (bench/run.py writes it from the same tasks).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import time
from pathlib import Path

import aiohttp


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("requests", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [json.loads(line) for line in args.requests.read_text().splitlines()]
    semaphore = asyncio.Semaphore(args.concurrency)
    headers = {"Authorization": f"Bearer {os.environ.get('MAAS_API_KEY', 'k')}"}
    results = (args.out / "results.jsonl").open("a")

    async def one(session: aiohttp.ClientSession, item: dict[str, object]) -> None:
        async with semaphore:
            async with session.post(
                f"{args.base_url}/ep/{item['path']}", json=item["body"], headers=headers
            ) as response:
                body = await response.json()
            files = []
            for index, image in enumerate(body.get("data") or []):
                name = f"{item['id']}-{index}.png"
                (args.out / name).write_bytes(base64.b64decode(image["b64_json"]))
                files.append(name)
            text = body["choices"][0]["message"]["content"] if "choices" in body else None
            results.write(
                json.dumps(
                    {
                        "id": item["id"],
                        "status": response.status,
                        "files": files,
                        "text": text,
                        "usage": body.get("usage"),
                    }
                )
                + "\n"
            )

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session, item) for item in lines))
    results.close()
    print(json.dumps({"seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    asyncio.run(main())
