"""A paid answer of image links (`data[i].url`) whose file server is slow, hangs or fails: the links of one
answer are fetched side by side (DOWNLOADS_AT_ONCE at a time) under one budget for the whole answer, so
that a file server that hangs holds a task for what one request's retries may take, not that times the
number of links. Nothing is bought again; the answer, with its links, is kept."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from batch.defaults import DOWNLOADS_AT_ONCE
from tests.conftest import FAST, Outcome, results
from tests.e2e.test_hostile_answers import IMAGE_ANSWER, png_bytes
from tests.stub import stub_server

LINKS = 2 * DOWNLOADS_AT_ONCE


@dataclass
class Files:
    """What the file server saw: tries of each link, and the most tries held open at once."""

    tries: list[str] = field(default_factory=list)
    open_now: int = 0
    most_open: int = 0
    gate: list[asyncio.Future[None]] = field(default_factory=list)


def answer_of_links(request: web.Request) -> web.Response:
    links = [{"url": f"http://{request.host}/files/{i}.png"} for i in range(LINKS)]
    return web.json_response({**IMAGE_ANSWER, "data": links})


def run_one(
    cli: Callable[..., Outcome],
    write: Callable[..., Path],
    out: Path,
    serve_file: Callable[[web.Request], Any],
    *args: str,
) -> tuple[Outcome, dict[str, Any], int]:
    """One generate task whose answer links LINKS files, served by `serve_file`: the run's outcome, the
    task's result line, and the requests made to the API (not to the files)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/files/"):
            response: web.StreamResponse = await serve_file(request)
            return response
        return answer_of_links(request)

    manifest = write("tasks:\n  - {kind: generate, id: links, prompt: p}\n")
    with stub_server(handler) as stub:
        env = {"MAAS_API_KEY": "k", "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        outcome = cli("run", manifest, "--out", out, *FAST, "--no-gallery", *args, env=env)
        bought = sum(1 for seen in stub.requests if not seen["path"].startswith("/files/"))
    return outcome, results(out)["links"], bought


@pytest.mark.timeout(60)
def test_the_links_of_one_answer_are_fetched_side_by_side_a_few_at_a_time(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """The file server holds every download until DOWNLOADS_AT_ONCE of them are open together: fetched one
    after another, the first waited for --timeout and each link after it too. No more than
    DOWNLOADS_AT_ONCE are open at once."""
    files = Files()

    async def serve_file(request: web.Request) -> web.Response:
        files.tries.append(request.path)
        files.open_now += 1
        files.most_open = max(files.most_open, files.open_now)
        try:
            waiting = asyncio.get_running_loop().create_future()
            files.gate.append(waiting)
            if len(files.gate) == DOWNLOADS_AT_ONCE:  # a full round: all of it goes
                for held in files.gate:
                    if not held.done():
                        held.set_result(None)
                files.gate.clear()
            await waiting
            return web.Response(body=png_bytes(), content_type="image/png")
        finally:
            files.open_now -= 1

    out = tmp_path / "out"
    outcome, record, bought = run_one(cli, write, out, serve_file, "--timeout", "5", "--max-attempts", "1")
    assert outcome.code == 0, outcome.err
    assert record["status"] == "succeeded" and len(record["files"]) == LINKS, record
    assert sorted(files.tries) == sorted(f"/files/{i}.png" for i in range(LINKS))
    assert files.most_open == DOWNLOADS_AT_ONCE
    assert bought == 1


@pytest.mark.timeout(60)
def test_the_links_of_one_answer_share_one_retry_budget(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """Every link answers 503 for good. Each link got --max-attempts tries of its own (LINKS x 3 here);
    now each is tried once, and the answer's links share --max-attempts - 1 retries. The task fails with
    every link's reason; the answer, with its links, is kept; nothing is bought again."""
    files = Files()

    async def serve_file(request: web.Request) -> web.Response:
        files.tries.append(request.path)
        return web.Response(status=503, text="storage unavailable")

    out = tmp_path / "out"
    outcome, record, bought = run_one(cli, write, out, serve_file, "--max-attempts", "3")
    assert outcome.code == 1, outcome.err
    assert len(files.tries) == LINKS + 3 - 1, files.tries
    assert set(files.tries) == {f"/files/{i}.png" for i in range(LINKS)}  # every link tried
    assert record["status"] == "failed" and record["error"]["type"] == "download_failed"
    assert record["error"]["message"].count("HTTP 503") == LINKS
    kept = json.loads((out / record["answer_file"]).read_text())
    assert len(kept["data"]) == LINKS and bought == 1


async def hang(files: Files, request: web.Request) -> web.Response:
    """A file server that never answers: each try lasts the client's --timeout."""
    files.tries.append(request.path)
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("flags", "tries"),
    [
        # one request's 2 retries among all the links: 8 links x 3 tries of 1 s each, one after another, took
        # 24 s (16 x 6 x 600 s with the defaults: 16 hours)
        (("--max-attempts", "3"), LINKS + 2),
        # the deadline passed during the first tries: no retry goes, though the budget has 5; every link is
        # tried once all the same (its image was paid for)
        (("--max-attempts", "6", "--task-deadline", "0.5"), LINKS),
        # two retries taken at 1 s, before the deadline, wait for a slot behind the second round's first
        # tries, and have one only at 2 s, past it: they do not go, each link's last error stands (one
        # after another, each link had its own 1.5 s: 16 tries)
        (("--max-attempts", "3", "--task-deadline", "1.5"), LINKS),
    ],
    ids=["attempts", "deadline", "deadline-while-waiting"],
)
def test_links_that_hang_cost_one_requests_retries_and_each_is_tried_once(
    flags: tuple[str, ...],
    tries: int,
    cli: Callable[..., Outcome],
    write: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """Every link hangs until --timeout (1 s)."""
    files = Files()
    out = tmp_path / "out"
    outcome, record, bought = run_one(
        cli, write, out, lambda request: hang(files, request), "--timeout", "1", *flags
    )
    assert outcome.code == 1, outcome.err
    assert len(files.tries) == tries, files.tries
    assert set(files.tries) == {f"/files/{i}.png" for i in range(LINKS)}
    assert record["error"]["type"] == "download_failed" and bought == 1
    assert record["error"]["message"].count("no complete answer within 1 s") == LINKS
