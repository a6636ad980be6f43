"""Reading what an answer or an error says, defensively: a hostile body makes a kind's reader fail, and
that must never crash the task that received it. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batch.errors import ApiError, ApiStatusError, BrokenAnswerError, StreamStalledError, TransportError
from batch.kind import TaskKind
from batch.manifest.tasks import TaskSpec
from batch.running.records import ErrorInfo


def error_record(error: ApiError, attempts: int) -> ErrorInfo:
    """`error` of a failed task's result line: type, status, message."""
    if isinstance(error, ApiStatusError):
        error_type = error.code or error.error_type or f"http_{error.status}"
    else:
        error_type = error.kind
    message = getattr(error, "message", str(error))
    if attempts > 1:
        message += f" (after {attempts} attempts)"
    return ErrorInfo(error_type, error.status, message)


def describe(error: BaseException | None) -> str:
    """An error in a line of text: its message, or an API status error as it prints."""
    if error is None:
        return "unknown error"
    return (
        str(getattr(error, "message", None) or error) if not isinstance(error, ApiStatusError) else str(error)
    )


def failure_kind(error: BaseException | None) -> str:
    """What sort of failure `error` is, in a word or two, for the first warning of each sort: dns,
    refused, tls, connect_timeout, timeout, cut_short, connection, HTTP 503, a broken answer's type."""
    if isinstance(error, TransportError):
        return error.reach
    if isinstance(error, ApiStatusError):
        return f"HTTP {error.status}"
    if isinstance(error, BrokenAnswerError):
        return error.kind
    return type(error).__name__ if error is not None else "unknown"


def usage_of(kind: TaskKind, body: Any) -> Mapping[str, Any] | None:
    """The usage an answer reports; None also when a hostile body makes the kind's reader fail."""
    try:
        return kind.usage_of(body)
    except Exception:
        return None


def stream_complete(kind: TaskKind, spec: TaskSpec, chunks: Any, trouble: object = None) -> bool:
    """Whether a streamed answer's chunks say every choice finished; False when they cannot be read. A
    stream that `trouble` ended with something after its last chunk (an error event, an event that is not
    JSON) did not end on that chunk: the kind is shown an event after them that is none (a chat stream's
    usage chunk of its own, last, says its choices were done; followed by an error, it does not). One
    held open until the timeout (StreamStalledError) sent nothing after it: it ended there, as if cut."""
    if isinstance(chunks, list) and trouble is not None and not isinstance(trouble, StreamStalledError):
        chunks = [*chunks, None]
    try:
        return isinstance(chunks, list) and kind.stream_complete(spec.fields, chunks)
    except Exception:
        return False


def answer_id(body: Any) -> str | None:
    """The answer's own id (chat's `chatcmpl-...`), for an answer sent without an x-request-id header."""
    if isinstance(body, list):
        body = next((chunk for chunk in body if isinstance(chunk, dict)), None)
    value = body.get("id") if isinstance(body, dict) else None
    return value[:200] if isinstance(value, str) else None


def short(error: BaseException, limit: int = 300) -> str:
    """An error's text on one line, cut at `limit` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "..."
