"""Runs the OpenAI cookbook's api_request_parallel_processor.py (not vendored: pass its path) with its own
command line, against a local URL.

    python bench/cookbook_shim.py PATH/api_request_parallel_processor.py --requests_filepath ... [its flags]

The script reads the API path from the URL with `^https://[^/]+/v\\d+/(.+)$` (or Azure's deployment form),
so a plain-http simulator URL does not match and would raise. This shim imports the script as a module,
replaces only that one function (the path it should have found is `chat/completions`, which picks its
chat token counting), and then does what the script's `__main__` block does with the same flags and
defaults. Everything else, its rate limiter, retry queue, token counting with tiktoken and its 1 ms
polling loop, runs as published.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import sys


def main() -> None:
    path = sys.argv[1]
    spec = importlib.util.spec_from_file_location("api_request_parallel_processor", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    setattr(module, "api_endpoint_from_url", lambda request_url: "chat/completions")  # noqa: B010

    parser = argparse.ArgumentParser()
    parser.add_argument("--requests_filepath")
    parser.add_argument("--save_filepath", default=None)
    parser.add_argument("--request_url", default="https://api.openai.com/v1/embeddings")
    parser.add_argument("--api_key", default=os.getenv("OPENAI_API_KEY"))
    parser.add_argument("--max_requests_per_minute", type=int, default=3_000 * 0.5)
    parser.add_argument("--max_tokens_per_minute", type=int, default=250_000 * 0.5)
    parser.add_argument("--token_encoding_name", default="cl100k_base")
    parser.add_argument("--max_attempts", type=int, default=5)
    parser.add_argument("--logging_level", default=logging.INFO)
    args = parser.parse_args(sys.argv[2:])
    if args.save_filepath is None:
        args.save_filepath = args.requests_filepath.replace(".jsonl", "_results.jsonl")
    asyncio.run(
        module.process_api_requests_from_file(
            requests_filepath=args.requests_filepath,
            save_filepath=args.save_filepath,
            request_url=args.request_url,
            api_key=args.api_key,
            max_requests_per_minute=float(args.max_requests_per_minute),
            max_tokens_per_minute=float(args.max_tokens_per_minute),
            token_encoding_name=args.token_encoding_name,
            max_attempts=int(args.max_attempts),
            logging_level=int(args.logging_level),
        )
    )


if __name__ == "__main__":
    main()
