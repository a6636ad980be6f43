"""The script a competent user writes instead of maas-batch: one aiohttp session, a semaphore, one JSON line
appended per answer. No validation, no checkpoint, no ledger, no fsync; a failed request is tried twice more
and then written down as failed.

    python bench/handwritten.py MANIFEST.jsonl ANSWERS.jsonl --base-url URL --endpoint EP --concurrency 64

MANIFEST.jsonl is the chat manifest maas-batch runs (one {"id", "model", "prompt"} per line), so both send
the same prompts. bench/peers.py runs it beside maas-batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import TextIO

import aiohttp


async def ask_all(tasks: list[dict[str, str]], out: TextIO, args: argparse.Namespace) -> None:
    url = f"{args.base_url}/{args.endpoint}/google/chat/completions"
    headers = {"Authorization": f"Bearer {os.environ['MAAS_API_KEY']}"}
    semaphore = asyncio.Semaphore(args.concurrency)

    async def ask(session: aiohttp.ClientSession, task: dict[str, str]) -> None:
        body = {"model": task["model"], "messages": [{"role": "user", "content": task["prompt"]}]}
        async with semaphore:
            for attempt in range(3):
                try:
                    async with session.post(url, json=body, headers=headers) as response:
                        response.raise_for_status()
                        answer = await response.json()
                    line = {
                        "id": task["id"],
                        "text": answer["choices"][0]["message"]["content"],
                        "usage": answer.get("usage"),
                    }
                    break
                except (TimeoutError, aiohttp.ClientError) as error:
                    line = {"id": task["id"], "error": str(error)}
                    await asyncio.sleep(2**attempt)
        out.write(json.dumps(line) + "\n")

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(ask(session, task) for task in tasks))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest")
    parser.add_argument("answers")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with open(args.manifest) as lines:
        tasks = [json.loads(line) for line in lines if line.strip()]
    with open(args.answers, "a") as out:
        asyncio.run(ask_all(tasks, out, args))


if __name__ == "__main__":
    main()
