"""The aiohttp application: routes, and the order in which a request meets auth, limits, checks and faults.

Every API request goes through `_Simulator._handle`: auth (401/403), endpoint (404), concurrency limit
(429 at once), the request's random draws, a 429 storm, a random 429, the per-key minute window (429 +
Retry-After), then the endpoint's own validation (400), latency, a random 5xx, a fault, and the answer.
The answer is billed at the moment it is about to be written, so a request whose client left earlier costs
nothing.
Every API answer carries an `x-request-id` header. The answer is written in the shapes `SimConfig.answers`
turns on (`shapes.py`); the image files of the url shapes are served at `/_sim/files/` (`files.py`).
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

from aiohttp import web

from . import faults, shapes
from .chat import (
    choices,
    completion_body,
    completion_tokens,
    parse_chat,
    stream_chunks,
    usage_chunk,
)
from .config import SimConfig
from .errors import (
    ApiError,
    gateway_error_html,
    quota_exhausted,
    rate_limited,
    retry_after_headers,
    server_error_json,
)
from .exchange import Exchange, authorize, json_body
from .files import FILES_PATH, LINKS_PATH, FileStore, files_origin
from .image_request import (
    MAX_IMAGE_BYTES,
    MAX_IMAGES,
    MAX_MASK_BYTES,
    ImageRequest,
    parse_edit,
    parse_generate,
)
from .images import EditSource
from .pictures import Pictures
from .state import CLIENT_CLOSED_STATUS, SimState, retry_after_seconds
from .uploads import read_edit_form
from .usage import chat_usage, image_usage

BASE_PATH = "/v1/ai"
STATS_PATH = "/_sim/stats"
LIMITS_PATH = "/_sim/limits"
# Room for the largest legal edit: 16 images of 25 MB, a 4 MB mask, and the text fields.
CLIENT_MAX_SIZE = MAX_IMAGES * MAX_IMAGE_BYTES + MAX_MASK_BYTES + 8 * 1024 * 1024
_Respond = Callable[[web.Request, Exchange, faults.Draws], Awaitable[web.StreamResponse]]


class _Simulator:
    """The handlers, bound to one config, one state, one seeded random source and one image cache."""

    def __init__(self, config: SimConfig, state: SimState) -> None:
        self.config = config
        self.state = state
        self._rng = random.Random(config.seed)
        self._chat_ids = itertools.count(1)
        self._storm_until: float | None = None  # when the 429 storm ends (storm_429), from the first request
        self._request_ids = itertools.count(1)
        self.files = FileStore(state)
        self._pictures = Pictures(config, self.files)

    # --- the common path ----------------------------------------------------------------------------

    def handler(self, kind: str, respond: _Respond) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(kind, request, respond)

        return handle

    def _begin(self, kind: str, request: web.Request) -> Exchange:
        serial = f"req_sim{next(self._request_ids):08d}"
        server_id = None if "no_request_id" in self.config.answers else serial
        return Exchange.begin(kind, request, server_id, serial)

    def _in_storm(self) -> bool:
        """Whether a request now falls in the 429 storm (`storm_429` seconds from the first request)."""
        if self.config.storm_429 <= 0:
            return False
        now = time.monotonic()
        if self._storm_until is None:
            self._storm_until = now + self.config.storm_429
        return now < self._storm_until

    def _limited(self, retry_after: float, message: str) -> ApiError:
        """A 429 with Retry-After, in seconds or (`retry_after_date`) as an HTTP date."""
        return rate_limited(retry_after, message, as_date=self.config.retry_after_date)

    async def _handle(self, kind: str, request: web.Request, respond: _Respond) -> web.StreamResponse:
        ex = self._begin(kind, request)
        entered = False
        try:
            try:
                key_id = ex.key_id = authorize(request, self.config)
                if self.config.endpoints and ex.endpoint not in self.config.endpoints:
                    raise ApiError(
                        404, "The API deployment for this resource does not exist.", code="DeploymentNotFound"
                    )
                if not self.state.try_enter():
                    raise rate_limited(None, "Too many concurrent requests.", "concurrency_limit_exceeded")
                entered = True
                draws = faults.Draws.take(self._rng, self.config.error_statuses)
                if self._in_storm():
                    raise self._limited(
                        self.config.retry_after, "Resource has been exhausted (e.g. check quota)."
                    )
                if draws.rate_429 < self.config.rate_429:
                    raise self._limited(self.config.retry_after, "Rate limit exceeded, please retry later.")
                if self.config.tpm is not None:
                    wait = self.state.tpm_admit(key_id, self.config.tpm)
                    if wait is not None:
                        raise self._limited(
                            retry_after_seconds(wait),
                            f"Rate limit of {self.config.tpm} tokens per minute reached.",
                        )
                if self.config.rps is not None:
                    wait = self.state.rpm_admit(key_id, self.config.rps, seconds=1.0)
                    if wait is not None:
                        raise self._limited(
                            retry_after_seconds(wait),
                            f"Rate limit of {self.config.rps} requests per second reached.",
                        )
                if self.config.rpm is not None:
                    wait = self.state.rpm_admit(key_id, self.config.rpm)
                    if wait is not None:
                        raise self._limited(
                            retry_after_seconds(wait),
                            f"Rate limit of {self.config.rpm} requests per minute reached.",
                        )
                response = await respond(request, ex, draws)
            except ApiError as error:
                response = error.response(google=self.config.google_errors)
            if not response.prepared:  # the ones prepared already (streams) carry it
                response.headers.update(ex.headers)
            if ex.status == 0:
                ex.status = response.status
            return response
        except asyncio.CancelledError:
            if ex.status == 0:
                ex.status = CLIENT_CLOSED_STATUS
            raise
        except Exception:
            if ex.status == 0:
                ex.status = 500
            raise
        finally:
            if entered:
                self.state.leave()
            self.state.record(ex.record())

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    def _latency(self, draws: faults.Draws) -> float:
        return self.config.latency * (1.0 + self.config.latency_jitter * draws.jitter)

    def _choose_fault(self, ex: Exchange, draws: faults.Draws, applicable: frozenset[str]) -> str | None:
        fault = faults.pick_fault(self.config.faults, draws.fault)
        if fault is None or fault not in applicable:
            return None
        if self.config.fault_once_per_task:
            task = ex.task_id or ex.request_id
            if task is not None and not self.state.claim_fault(task):
                return None
        return fault

    async def _gate(
        self, request: web.Request, ex: Exchange, draws: faults.Draws, *, images: bool, stream: bool
    ) -> web.StreamResponse | None:
        """Latency, a random 5xx, then the fault; returns the answer itself for faults that need no body."""
        if not stream:  # a stream spreads its latency over its chunks
            await self._sleep(self._latency(draws))
        if draws.error < self.config.error_rate:
            status = draws.error_status
            if draws.error_html:
                response = gateway_error_html(status)
            else:
                response = server_error_json(status, google=self.config.google_errors)
            config = self.config
            response.headers.update(
                retry_after_headers(config.error_retry_after, as_date=config.retry_after_date)
            )
            return response
        ex.fault = self._choose_fault(ex, draws, faults.applicable_faults(images=images, stream=stream))
        if ex.fault == "quota":
            raise quota_exhausted()
        if ex.fault == "slow":
            await asyncio.sleep(self.config.slow_seconds)
        elif ex.fault == "html200":
            return faults.html_200()
        elif ex.fault == "not_json":
            return faults.not_json()
        elif ex.fault == "huge":
            ex.status = 200
            return await faults.huge(request, self.config.huge_bytes, ex.headers)
        return None

    def _bill(self, ex: Exchange, tokens: int) -> None:
        ex.billed = tokens
        self.state.bill(tokens)
        if self.config.tpm is not None:
            self.state.tpm_record(ex.key_id, tokens)

    async def _send(self, request: web.Request, ex: Exchange, body: bytes, tokens: int) -> web.StreamResponse:
        """Bill, then write the answer (or its truncated / reset form)."""
        self._bill(ex, tokens)
        if ex.fault == "truncate":
            return faults.truncated(body, "application/json")
        if ex.fault == "reset":
            ex.status = 200
            return await faults.reset(request, body, "application/json", ex.headers)
        answers = self.config.answers
        if "gzip_transfer" in answers:  # a transfer-coding before the chunks (RFC 9112 allows it)
            ex.shapes = (*ex.shapes, "gzip_transfer")
            response = web.Response(
                body=gzip.compress(body), content_type="application/json", headers={TRANSFER_CODING: "gzip"}
            )
            response.enable_chunked_encoding()  # the coding is named beside chunked as the head is sent
            return response
        if answers & {"gzip_members", "gzip_mislabel", "gzip_crlf"}:
            if "gzip_members" in answers:  # as a proxy that compresses in pieces may send it
                name, half = "gzip_members", len(body) // 2
                sent = gzip.compress(body[:half]) + gzip.compress(body[half:])
            elif "gzip_mislabel" in answers:  # a gateway that labels what it did not compress
                name, sent = "gzip_mislabel", body
            else:  # a line end written after the compressed body
                name, sent = "gzip_crlf", gzip.compress(body) + b"\r\n"
            ex.shapes = (*ex.shapes, name)
            return web.Response(
                body=sent, content_type="application/json", headers={"Content-Encoding": "gzip"}
            )
        return web.Response(body=body, content_type="application/json")

    def _error_200(self, ex: Exchange) -> web.StreamResponse | None:
        """The `error200` shape's answer (not billed), when it applies to this request."""
        if not shapes.error_200_applies(self.config.answers, ex.fault):
            return None
        ex.shapes = ("error200",)
        return web.Response(body=shapes.error_200_body(), content_type="application/json")

    # --- images ---------------------------------------------------------------------------------------

    async def generate(self, request: web.Request, ex: Exchange, draws: faults.Draws) -> web.StreamResponse:
        parsed = parse_generate(await json_body(request))
        return await self._answer_images(request, ex, draws, parsed, None)

    async def edit(self, request: web.Request, ex: Exchange, draws: faults.Draws) -> web.StreamResponse:
        upload = await read_edit_form(request)
        parsed = await asyncio.to_thread(parse_edit, upload.fields, upload.images, upload.mask)
        return await self._answer_images(
            request, ex, draws, parsed, EditSource(parsed.images[0], parsed.mask)
        )

    async def _answer_images(
        self,
        request: web.Request,
        ex: Exchange,
        draws: faults.Draws,
        parsed: ImageRequest,
        source: EditSource | None,
    ) -> web.StreamResponse:
        made = shapes.images_made(parsed.n, self.config.answers)
        if made != parsed.n:
            parsed, ex.shapes = replace(parsed, n=made), ("fewer",)
        usage = image_usage(
            parsed.prompt, parsed.width, parsed.height, parsed.quality, parsed.n, list(parsed.input_sizes)
        )
        early = await self._gate(request, ex, draws, images=True, stream=False) or self._error_200(ex)
        if early is not None:
            return early
        total = usage["total_tokens"]
        assert isinstance(total, int)
        if self._unasked_stream(ex):
            events = await asyncio.to_thread(self._pictures.image_events, parsed, source, usage)
            return await self._stream(request, ex, draws, events, [], total)
        origin = files_origin(request, self.config.files_host)
        api_origin = f"{request.scheme}://{request.host}"
        body = await asyncio.to_thread(
            self._pictures.image_body, parsed, source, usage, ex, origin, api_origin
        )
        return await self._send(request, ex, body, total)

    def _unasked_stream(self, ex: Exchange) -> bool:
        """Whether `sse_unasked` answers this request (not asked to stream) as a stream: unless a fault
        (other than a mere delay) already decided the answer."""
        if "sse_unasked" not in self.config.answers or ex.fault not in (None, "slow"):
            return False
        ex.shapes = (*ex.shapes, "sse_unasked")
        return True

    # --- chat -----------------------------------------------------------------------------------------

    async def chat(self, request: web.Request, ex: Exchange, draws: faults.Draws) -> web.StreamResponse:
        parsed = await asyncio.to_thread(parse_chat, await json_body(request))
        answers = choices(parsed)
        usage = chat_usage(parsed.prompt_tokens, completion_tokens(parsed, answers))
        ex.answer_id = f"chatcmpl-sim{next(self._chat_ids):012d}"
        meta = {"id": ex.answer_id, "created": int(time.time()), "model": parsed.model}
        plan = None
        if self.config.answers & shapes.CHAT_SHAPES:
            plan = shapes.plan_chat(
                parsed, self.config.answers, answers, ex.answer_id, self.config.thinking_tokens
            )
        early = await self._gate(request, ex, draws, images=parsed.answers_with_image, stream=parsed.stream)
        early = early or self._error_200(ex)
        if early is not None:
            return early
        urls = None
        if parsed.answers_with_image:
            urls = await asyncio.to_thread(self._pictures.chat_image_urls, parsed, ex.fault)
        streamed = parsed.stream or self._unasked_stream(ex)
        if plan is not None:
            ex.shapes = (*shapes.ordered(plan.shapes), *ex.shapes)
            return await self._chat_shaped(request, ex, draws, plan, meta, urls, stream=streamed)
        if streamed:
            chunks = [json.dumps(chunk) for chunk in stream_chunks(answers, meta, urls)]
            tail = [json.dumps(usage_chunk(meta, usage)), "[DONE]"]
            return await self._stream(request, ex, draws, chunks, tail, usage["total_tokens"])
        payload = completion_body(parsed, answers, meta, usage, urls, with_choices=ex.fault != "no_data")
        body = (
            await asyncio.to_thread(lambda: json.dumps(payload).encode())
            if urls
            else json.dumps(payload).encode()
        )
        return await self._send(request, ex, body, usage["total_tokens"])

    async def _chat_shaped(
        self,
        request: web.Request,
        ex: Exchange,
        draws: faults.Draws,
        plan: shapes.ChatPlan,
        meta: Mapping[str, object],
        urls: list[str] | None,
        *,
        stream: bool,
    ) -> web.StreamResponse:
        """A chat answer in the shapes that are on (`shapes.py`)."""
        if stream:
            chunks, tail = shapes.stream_events(plan, meta, urls)
            if ex.fault == "no_data" and "usage_every_chunk" in plan.shapes:
                # no choices, but the usage (billed): on a chunk of its own, as no chunk of a choice is sent
                usage = {**meta, "object": "chat.completion.chunk", "choices": [], "usage": plan.usage}
                tail = [json.dumps(usage), *tail]
            return await self._stream(request, ex, draws, chunks, tail, plan.billed, shaped=plan.shapes)
        payload = shapes.completion_body(plan, meta, urls, with_choices=ex.fault != "no_data")
        body = await asyncio.to_thread(lambda: json.dumps(payload).encode())
        return await self._send(request, ex, body, plan.billed)

    async def _stream(
        self,
        request: web.Request,
        ex: Exchange,
        draws: faults.Draws,
        chunks: list[str],
        tail: list[str],
        tokens: int,
        *,
        shaped: frozenset[str] = frozenset(),
    ) -> web.StreamResponse:
        """Server-sent events: the chunks, then the tail (usage, [DONE]); cut short by stream faults."""
        events = [] if ex.fault == "no_data" else chunks
        cut = ex.fault in ("stream_cut", "reset")
        events = events[: max(1, len(events) // 2)] if cut else events + tail
        if ex.fault in ("stream_reset_done", "stream_error_done", "stream_hang"):  # the answer whole
            events = [event for event in events if event != "[DONE]"]
        if ex.fault == "stream_error_mid":  # half of it, and the usage (the work was done), then an error
            events = events[: max(1, len(chunks) // 2)] + [event for event in tail if event != "[DONE]"]
        if ex.fault in ("stream_error_done", "stream_error_mid"):
            error = {"message": "upstream connection closed", "type": "server_error", "code": 502}
            events.append(json.dumps({"error": error}))
        delay = self._latency(draws) / max(1, len(events))
        self._bill(ex, tokens)
        response = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache", **ex.headers})
        response.headers["Content-Type"] = shapes.stream_type(shaped)
        await response.prepare(request)
        ex.status = 200
        try:
            for event in shapes.frame_events(events, shapes=shaped):
                await self._sleep(delay)
                await response.write(event)
            if ex.fault == "stream_hang":  # open until the client lets go (or the server stops)
                await self._sleep(3600)
        except ConnectionError:
            return response
        if ex.fault in ("reset", "stream_reset_done"):
            faults.abort(request)
        return response

    # --- the rest -------------------------------------------------------------------------------------

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        """Any path the API does not have: a 404 in the API's error shape (no auth needed to learn it)."""
        ex = self._begin("other", request)
        ex.status = 404
        self.state.record(ex.record())
        response = ApiError(
            404, f"Unknown path: {request.method} {request.path}", code="not_found"
        ).response()
        response.headers.update(ex.headers)
        return response

    async def limits(self, request: web.Request) -> web.StreamResponse:
        """Change live limits: POST {"max_inflight": K} (null lifts it). For benchmarks that change the
        service's capacity in the middle of a run."""
        try:
            body = await request.json()
            self.state.set_max_inflight(body["max_inflight"])
        except (ValueError, KeyError, TypeError) as exc:
            return ApiError(400, f'expected {{"max_inflight": K}}: {exc}', code="invalid_value").response()
        return web.json_response({"max_inflight": self.state.max_inflight})

    async def link(self, request: web.Request) -> web.StreamResponse:
        """GET a `url_redirect` link on the API's origin: for the key alone (401 without it, as the API's
        own routes), a 302 to the file on the files' origin, where the key must not follow."""
        try:
            authorize(request, self.config)
        except ApiError as exc:
            self.files.record(request, exc.status)
            return exc.response()
        self.files.record(request, 302)
        target = files_origin(request, self.config.files_host) + FILES_PATH + "/" + request.match_info["name"]
        return web.Response(status=302, headers={"Location": target})

    async def stats(self, request: web.Request) -> web.StreamResponse:
        """The state as JSON; `?records=0` leaves out the per-request list."""
        include = request.query.get("records", "1").lower() not in ("0", "false", "no")
        body = await asyncio.to_thread(lambda: json.dumps(self.state.snapshot(include_records=include)))
        return web.Response(text=body, content_type="application/json")


# A response's transfer-coding before chunked: aiohttp writes `Transfer-Encoding: chunked` itself as it
# prepares the head, so the coding rides in this header to the prepare hook, which names both.
TRANSFER_CODING = "X-Sim-Transfer-Coding"


async def _name_transfer_coding(request: web.Request, response: web.StreamResponse) -> None:
    coding = response.headers.pop(TRANSFER_CODING, None)
    if coding is not None:
        response.headers["Transfer-Encoding"] = f"{coding}, chunked"


def build_app(config: SimConfig, state: SimState) -> web.Application:
    """The simulator as an aiohttp application; `state` receives its records and sets its live limits."""
    simulator = _Simulator(config, state)
    state.set_max_inflight(config.max_inflight)
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app.on_response_prepare.append(_name_transfer_coding)
    prefix = BASE_PATH + "/{endpoint}"
    app.router.add_post(prefix + "/images/generations", simulator.handler("generate", simulator.generate))
    app.router.add_post(prefix + "/images/edits", simulator.handler("edit", simulator.edit))
    app.router.add_post(prefix + "/google/chat/completions", simulator.handler("chat", simulator.chat))
    app.router.add_get(STATS_PATH, simulator.stats)
    app.router.add_get(FILES_PATH + "/{name}", simulator.files.serve)
    app.router.add_get(LINKS_PATH + "/{name}", simulator.link)
    app.router.add_post(LIMITS_PATH, simulator.limits)
    app.router.add_route("*", "/{tail:.*}", simulator.not_found)
    return app
