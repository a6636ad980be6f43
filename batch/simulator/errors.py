"""Error answers as the MaaS gateway gives them: OpenAI-style JSON, or an HTML page from a proxy.

`ApiError` is raised anywhere below a handler (validation, auth, limits) and turned into one response in
the server's middleware, so no handler builds error bodies by hand.
"""

from __future__ import annotations

import email.utils
import json
import math
import time

from aiohttp import web

# google.rpc.Code names, as Google's APIs write an error's `status`
_RPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_REASONS = {
    408: "Request Timeout",
    409: "Conflict",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class ApiError(Exception):
    """An error answer: HTTP status plus the fields of the OpenAI `error` object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        """The JSON body, `{"error": {...}}`."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def google_body(self) -> list[dict[str, object]]:
        """The body as Google's APIs (Gemini's OpenAI-compatible layer) write it: a list of one error, with
        the HTTP status as its `code` and the google.rpc.Code name as its `status`."""
        status = _RPC_STATUS.get(self.status, "UNKNOWN")
        return [{"error": {"code": self.status, "message": self.message, "status": status}}]

    def response(self, *, google: bool = False) -> web.Response:
        """The aiohttp response for this error (`google`: in Google's form)."""
        body = self.google_body() if google else self.body()
        return web.Response(
            status=self.status,
            body=json.dumps(body, indent=2 if google else None).encode(),
            content_type="application/json",
            headers=self.headers,
        )


def invalid(param: str | None, message: str, code: str = "invalid_value") -> ApiError:
    """A 400 for a bad request field."""
    return ApiError(400, message, param=param, code=code)


def moderation_blocked() -> ApiError:
    """The content-policy refusal, a 400 like any bad request (so a client must not retry it)."""
    return ApiError(400, "Your request was rejected by the safety system.", code="moderation_blocked")


def format_retry_after(seconds: float) -> str:
    """Retry-After as delta-seconds; fractions kept (tests use tiny waits), whole numbers whole."""
    if seconds == int(seconds):
        return str(int(seconds))
    return f"{seconds:g}"


def format_retry_after_date(seconds: float, now: float | None = None) -> str:
    """Retry-After as an HTTP date (RFC 9110 allows either form): the moment, rounded up to the second an
    HTTP date can say, of `seconds` from now."""
    moment = math.ceil((time.time() if now is None else now) + seconds)
    return email.utils.formatdate(moment, usegmt=True)


def rate_limited(
    retry_after: float | None, message: str, code: str = "rate_limit_exceeded", *, as_date: bool = False
) -> ApiError:
    """A 429, with Retry-After when the server knows when to come back (as an HTTP date, `as_date`)."""
    headers = retry_after_headers(retry_after, as_date=as_date)
    return ApiError(429, message, type_="rate_limit_exceeded", code=code, headers=headers)


def retry_after_headers(retry_after: float | None, *, as_date: bool = False) -> dict[str, str]:
    """The Retry-After header of an answer that says when to come back (none for None): in seconds, or as
    an HTTP date (`as_date`)."""
    if retry_after is None:
        return {}
    shown = format_retry_after_date(retry_after) if as_date else format_retry_after(retry_after)
    return {"Retry-After": shown}


def quota_exhausted() -> ApiError:
    """The 429 that no retry can heal: the account is out of credit."""
    return ApiError(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        type_="insufficient_quota",
        code="insufficient_quota",
    )


def server_error_json(status: int, *, google: bool = False) -> web.Response:
    """A 5xx from the model service itself (or a 408 or 409), in the JSON error shape (`google`: Google's)."""
    kind = {408: "timeout", 409: "conflict"}.get(status, "server_error")
    error = ApiError(
        status,
        f"The server had an error while processing your request ({_REASONS.get(status, 'error')}).",
        type_=kind,
        code=kind,
    )
    return error.response(google=google)


def gateway_page(status: int) -> str:
    """The HTML page a reverse proxy sends when the model service behind it fails."""
    reason = _REASONS.get(status, "OK" if status == 200 else "Error")
    return (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )


def gateway_error_html(status: int) -> web.Response:
    """A 5xx as an HTML gateway page (not JSON): clients must not assume error bodies parse."""
    return web.Response(status=status, text=gateway_page(status), content_type="text/html")
