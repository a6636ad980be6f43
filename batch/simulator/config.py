"""The simulator's knobs: one frozen dataclass whose defaults give a fast, perfect server.

Every misbehaviour (latency, random errors, rate limits, faults) is opt-in, so a test states exactly the
trouble it wants and nothing else. So are the answer shapes (`ANSWER_SHAPES`): the other, legal ways real
gateways write a successful answer (image URLs, tool calls, reasoning, odd streams, odd usage), built from
the published API shape, not from what the client reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

ImageMode = Literal["drawn", "realistic"]

DEFAULT_RETRY_AFTER = 1.0
DEFAULT_SLOW_SECONDS = 30.0
DEFAULT_HUGE_BYTES = 1 << 30
# How long a shutdown waits for handlers still running (a `slow` fault, a `huge` body) before cancelling them.
DEFAULT_SHUTDOWN_TIMEOUT = 1.0

# Fault name -> what the client sees. `billed` faults are answers the provider produced and charged for,
# lost or mangled on the way back; the others never reach billing.
FAULT_NAMES: tuple[str, ...] = (
    "reset",  # headers and half a successful body, then the connection is aborted (billed)
    "truncate",  # 200 whose JSON body is cut in half, Content-Length matching the cut (billed)
    "html200",  # 200 text/html gateway page
    "not_json",  # 200 text/plain garbage
    "no_data",  # 200 JSON with usage but without data / choices (billed)
    "bad_base64",  # 200 whose b64_json (or image data URL) is not valid base64 (billed)
    "bad_image",  # 200 whose b64_json decodes to bytes that are not an image (billed)
    "quota",  # 429 insufficient_quota: must not be retried
    "slow",  # waits slow_seconds before the (normal, billed) answer
    "stream_cut",  # chat stream that stops before usage and [DONE] (billed)
    "stream_reset_done",  # chat stream: whole (finished, usage sent), then a reset before [DONE] (billed)
    "stream_error_done",  # chat stream: whole (finished, usage sent), then an error event, no [DONE] (billed)
    "stream_error_mid",  # chat stream: half the chunks and the usage, then a 500 error event (billed)
    "stream_hang",  # chat stream: whole (finished, usage sent), then held open without [DONE] (billed)
    "bomb",  # a PNG whose header claims 30000x30000 pixels (billed)
    "huge",  # a 200 JSON body of huge_bytes, generated lazily
)
# Answer shape -> how a successful answer is written (API.md, "Answers real gateways send"). Off by default;
# several may be on at once. A request that draws a content fault (no_data, bad_base64, bad_image, bomb)
# answers that fault in the default shape.
ANSWER_SHAPES: tuple[str, ...] = (
    "url",  # images: data[i] = {url, revised_prompt}, the file served by the simulator on another origin
    "url_flaky",  # images: as url, and the first GET of each file answers 503
    "url_lost",  # images: as url, but the last item's link answers 404 (gone, for good)
    # images: each url on the API's own origin, served to the key alone, answering 302 to the file on the
    # other origin (a gateway's own file link redirecting to signed storage)
    "url_redirect",
    "data_url",  # images: b64_json written as a data:image/<format>;base64, URL
    "b64_lines",  # images: b64_json broken by a newline every 76 characters (MIME style)
    "mixed",  # images: the first item a url item, the rest b64_json items
    "fewer",  # images: n-1 items when n >= 2 (and n-1 images billed)
    "error200",  # images and chat: HTTP 200 with an {"error": {...}} body, not billed
    # chat with tools: content null, one call of the first tool, finish_reason tool_calls; with functions
    # offered the deprecated way (`functions`), one call of the first as `function_call` (finish_reason
    # function_call; streamed as delta.function_call, the arguments in pieces)
    "tool_calls",
    # chat with tools: a call of every tool offered (arguments {label, n, tool}), each with a Gemini thought
    # signature (extra_content.google.thought_signature); streamed as Gemini's OpenAI layer streams them:
    # each call whole in a chunk of its own, with no `index`, the choice finishing "stop"
    "tool_calls_unindexed",
    "length_null",  # chat: content null, finish_reason length, thinking used up max_tokens (500 if unset)
    "message_images",  # chat, image models: pictures in message.images / delta.images, not content parts
    "reasoning",  # chat: reasoning_content beside the content, counted as reasoning_tokens
    "thoughts",  # chat: content = [Gemini thought part, answer part], thought counted as reasoning_tokens
    "thinking_in_total",  # chat: thinking_tokens reported only in total_tokens (total > prompt + completion)
    "cached",  # chat: usage.prompt_tokens_details.cached_tokens = prompt_tokens // 2
    "no_done",  # chat stream: ends without data: [DONE] after the usage chunk
    # chat stream: no chunk carries a finish_reason (a gateway that drops them); the usage chunk, where sent,
    # still comes once the choices are done
    "no_finish",
    "no_usage",  # chat: no usage anywhere (no usage chunk, no usage key); billed all the same
    "usage_every_chunk",  # chat stream: every chunk carries the cumulative usage, the last the full one
    "sse_noise",  # chat stream: ": keep-alive" comments, event: and id: lines, CRLF line ends
    "sse_cr",  # chat stream: lines end in CR alone (the event-stream format allows it)
    "sse_bom",  # chat stream: a UTF-8 byte order mark before the first event
    "sse_plain",  # chat stream: sent as Content-Type text/plain
    "sse_upper",  # chat stream: sent as Content-Type Text/Event-Stream; Charset=UTF-8 (types ignore case)
    "done_spaced",  # chat stream: the end written `data:  [DONE] ` (spaces around it)
    "gzip_members",  # images and chat, not streamed: the JSON body gzip-compressed as two members (RFC 1952)
    "gzip_mislabel",  # images and chat, not streamed: the JSON body as it is, labelled Content-Encoding gzip
    "gzip_crlf",  # images and chat, not streamed: the JSON body gzip-compressed, then CRLF after it
    "gzip_transfer",  # images and chat, not streamed: the JSON body under Transfer-Encoding: gzip, chunked
    "no_request_id",  # images and chat: no x-request-id header (a chat answer's `id` is then its only id)
    # images and chat not asked to stream, answered as server-sent events all the same (a gateway that
    # streams regardless, or a `stream` a user passed through): chat as its stream, [DONE] last; images as
    # OpenAI's image stream, an `image_generation.completed` event per image (usage on the last), no [DONE]
    "sse_unasked",
)
_CONFLICTING_SHAPES = (frozenset({"no_usage", "usage_every_chunk"}),)
DEFAULT_THINKING_TOKENS = 1000
# The statuses of random errors (--error-rate): API.md's retryable ones. 408 and 409 are there on demand.
DEFAULT_ERROR_STATUSES = (500, 502, 503, 504)
ERROR_STATUSES = (408, 409, 500, 502, 503, 504)

BILLED_FAULTS = frozenset(
    {
        "reset",
        "truncate",
        "no_data",
        "bad_base64",
        "bad_image",
        "stream_cut",
        "stream_reset_done",
        "stream_error_done",
        "stream_error_mid",
        "stream_hang",
        "bomb",
    }
)


def _check_fraction(name: str, value: float) -> None:
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")


@dataclass(frozen=True)
class SimConfig:
    """How the simulated MaaS API behaves; the defaults are a fast server that never fails.

    Probabilities are per request. `faults` maps a name of `FAULT_NAMES` to its probability; their sum must
    not exceed 1 because one uniform draw picks at most one fault per request.
    """

    api_key: str | None = field(default=None, repr=False)
    forbidden_keys: frozenset[str] = field(default=frozenset(), repr=False)
    endpoints: frozenset[str] = frozenset()
    latency: float = 0.0
    latency_jitter: float = 0.0
    error_rate: float = 0.0
    rate_429: float = 0.0
    storm_429: float = 0.0  # seconds from the first request during which every request is answered 429
    error_statuses: tuple[int, ...] = DEFAULT_ERROR_STATUSES  # of ERROR_STATUSES, drawn at random
    retry_after: float = DEFAULT_RETRY_AFTER
    retry_after_date: bool = False  # Retry-After written as an HTTP date (whole seconds), not seconds
    # the Retry-After of --error-rate's errors (a 503's "come back in S s"); None: they carry none
    error_retry_after: float | None = None
    # error bodies as Google's APIs write them: [{"error": {"code", "message", "status"}}] (Gemini's layer)
    google_errors: bool = False
    rpm: int | None = None
    rps: int | None = None  # requests per second per key (sliding window), beside or instead of rpm
    tpm: int | None = None  # billed tokens per minute per key (sliding window)
    max_inflight: int | None = None
    faults: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    fault_once_per_task: bool = False
    slow_seconds: float = DEFAULT_SLOW_SECONDS
    huge_bytes: int = DEFAULT_HUGE_BYTES
    seed: int | None = None
    answers: frozenset[str] = frozenset()  # names of ANSWER_SHAPES
    files_host: str | None = None  # host of image URLs; None: the other loopback name (localhost / 127.0.0.1)
    thinking_tokens: int = DEFAULT_THINKING_TOKENS  # the hidden thinking of the thinking_in_total shape
    image_mode: ImageMode = "drawn"
    handler_cancellation: bool = True
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT

    def __post_init__(self) -> None:
        # Freeze the containers so that a config shared between threads cannot change under the server.
        object.__setattr__(self, "forbidden_keys", frozenset(self.forbidden_keys))
        object.__setattr__(self, "endpoints", frozenset(self.endpoints))
        object.__setattr__(self, "faults", MappingProxyType(dict(self.faults)))
        object.__setattr__(self, "answers", frozenset(self.answers))
        if min(self.latency, self.slow_seconds, self.retry_after, self.shutdown_timeout, self.storm_429) < 0:
            raise ValueError(
                "latency, slow_seconds, retry_after, shutdown_timeout and storm_429 must be >= 0"
            )
        if not (0.0 <= self.latency_jitter <= 1.0):
            raise ValueError(f"latency_jitter must be between 0 and 1, got {self.latency_jitter!r}")
        _check_fraction("error_rate", self.error_rate)
        if self.error_retry_after is not None and self.error_retry_after < 0:
            raise ValueError(f"error_retry_after must be >= 0 or None, got {self.error_retry_after!r}")
        _check_fraction("rate_429", self.rate_429)
        object.__setattr__(self, "error_statuses", tuple(self.error_statuses))
        if not self.error_statuses or not set(self.error_statuses) <= set(ERROR_STATUSES):
            known = ", ".join(map(str, ERROR_STATUSES))
            raise ValueError(f"error_statuses must be some of {known}, got {self.error_statuses!r}")
        if self.tpm is not None and self.tpm < 1:
            raise ValueError(f"tpm must be >= 1 or None, got {self.tpm!r}")
        if self.rpm is not None and self.rpm < 1:
            raise ValueError(f"rpm must be >= 1 or None, got {self.rpm!r}")
        if self.rps is not None and self.rps < 1:
            raise ValueError(f"rps must be >= 1 or None, got {self.rps!r}")
        if self.max_inflight is not None and self.max_inflight < 0:
            raise ValueError(f"max_inflight must be >= 0 or None, got {self.max_inflight!r}")
        if self.huge_bytes < 64:
            raise ValueError(f"huge_bytes must be >= 64, got {self.huge_bytes!r}")
        if self.image_mode not in ("drawn", "realistic"):
            raise ValueError(f"image_mode must be 'drawn' or 'realistic', got {self.image_mode!r}")
        for name, probability in self.faults.items():
            if name not in FAULT_NAMES:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULT_NAMES)}")
            _check_fraction(f"fault {name}", probability)
        if sum(self.faults.values()) > 1.0 + 1e-9:
            raise ValueError("fault probabilities must sum to at most 1")
        self._check_answers()

    def _check_answers(self) -> None:
        for name in sorted(self.answers):
            if name not in ANSWER_SHAPES:
                raise ValueError(f"unknown answer shape {name!r}; known: {', '.join(ANSWER_SHAPES)}")
        for pair in _CONFLICTING_SHAPES:
            if pair <= self.answers:
                raise ValueError(f"answer shapes {' and '.join(sorted(pair))} cannot be on together")
        if self.thinking_tokens < 0:
            raise ValueError(f"thinking_tokens must be >= 0, got {self.thinking_tokens!r}")
        if self.files_host is not None and (not self.files_host or any(c in self.files_host for c in "/ @")):
            raise ValueError(f"files_host must be a bare host name or address, got {self.files_host!r}")
