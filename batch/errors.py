"""The one error tree of maas-batch.

    BatchError               exit_code: what `maas-batch` exits with when this error ends it
    ├── ManifestError        the manifest is invalid; carries every Problem found (exit 65)
    │   └── MissingConfigError  each Problem is missing configuration (an endpoint); also a ConfigError (78)
    ├── ConfigError          configuration is missing: no key, no endpoint, no price for --max-cost (exit 78)
    ├── UsageError           bad command-line usage (exit 64)
    │   └── OptionError      one setting of batch.Options (one flag) has a value no run can use
    ├── OutputError          the output directory cannot be written (disk full: exit 74)
    ├── DirLockedError       another run holds the output directory (exit 75)
    └── ApiError             one request to the API went wrong
        ├── ApiStatusError   the API answered with an error status (status, type, code, message)
        ├── TransportError   no usable answer: connection refused or reset, timeout
        ├── BrokenAnswerError  a 2xx whose body is unusable: garbled on the way (not JSON, cut short:
        │   │                retried) or whole but unreadable (no data, bad image: the task fails)
        │   └── StreamStalledError  a stream that sent nothing more after some events until --timeout
        └── RefusalError     a 2xx in which the model declined to answer (content filter)

A whole answer is paid for: it is never bought again because the tool could not use it. Its raw body
travels on the error (`raw`) so the runner can keep it under DIR/answers/.

aiohttp's exceptions are translated into this tree in ``batch.running.client`` and nowhere else.
Whether an ApiError is retried, fails its task or stops the run is decided in ``batch.running.retry``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from batch.exitcodes import EXIT_CONFIG, EXIT_DATAERR, EXIT_FAILED, EXIT_IOERR, EXIT_TEMPFAIL, EXIT_USAGE

SHOWN_PROBLEMS = 20  # in a ManifestError's message; all of them are in .problems

# the statuses besides 5xx that say the service, not the request, failed: retried (batch.running.retry)
RETRY_STATUSES = frozenset({408, 409, 429})


def transient_status(status: object) -> bool:
    """Whether an HTTP status says the service failed, not the request (retried): a task failed with one
    ran out of retries, whatever body the error came in (JSON, a gateway's HTML page, a stream's event)."""
    if not isinstance(status, int) or isinstance(status, bool):
        return False
    return status in RETRY_STATUSES or status >= 500


class BatchError(Exception):
    """Root of every error maas-batch raises on purpose."""

    exit_code = EXIT_FAILED

    def lines(self, prog: str) -> list[str]:
        """What the command line prints for this error, to stderr."""
        return [f"{prog}: {self}"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest, located as precisely as we can: file, line, task, field."""

    file: str
    line: int | None
    message: str
    task: str | None = None  # "tasks[3]" or a task id
    field: str | None = None
    value: str | None = None  # the offending value, already shortened
    config: bool = False  # missing configuration (an endpoint) rather than a wrong manifest: exit 78

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        parts = [where]
        if self.task:
            parts.append(self.task)
        if self.field:
            parts.append(self.field)
        text = ": ".join(parts) + ": " + self.message
        if self.value is not None:
            text += f" (got {self.value})"
        return text


def shorten(value: Any, limit: int = 80) -> str:
    """A value as it should appear in an error message: repr'd, one line, about `limit` characters.
    Long strings keep their head and their tail (a path's file name, a prompt's last words)."""
    if isinstance(value, str) and len(value) > limit:
        head, tail = value[: limit * 2 // 3], value[-(limit // 3) :]
        return f"{head + '...' + tail!r} [{len(value)} chars]"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ManifestError(BatchError):
    """The manifest cannot be run. Nothing was sent. `report`, when given, is how the command line
    prints it (a plan's problems, with how many tasks share each); otherwise one line per problem."""

    exit_code = EXIT_DATAERR

    def __init__(self, problems: Sequence[Problem], more: int = 0, *, report: Sequence[str] = ()) -> None:
        self.problems = list(problems)
        self.more = more  # problems found but not kept, past the report limit
        self.report = list(report)
        count = len(self.problems) + more
        shown = [f"  {problem}" for problem in self.problems[:SHOWN_PROBLEMS]]
        if count > len(shown):
            shown.append(f"  ... and {count - len(shown)} more")
        super().__init__("\n".join([f"{count} problem{'s' if count != 1 else ''} in the manifest:", *shown]))

    def lines(self, prog: str) -> list[str]:
        if self.report:
            return self.report
        more = [f"... and {self.more} more problems"] if self.more else []
        return [*(str(problem) for problem in self.problems), *more, "nothing was sent"]


class ConfigError(BatchError):
    """Configuration the run needs is missing (API key, endpoint, a price that --max-cost must count)."""

    exit_code = EXIT_CONFIG


class MissingConfigError(ManifestError, ConfigError):
    """A manifest that is right but cannot run here: every problem is missing configuration (no endpoint).
    Located like a ManifestError, and a ConfigError (exit 78) like a missing key."""

    exit_code = EXIT_CONFIG


def manifest_error(
    problems: Sequence[Problem], more: int = 0, *, report: Sequence[str] = ()
) -> ManifestError:
    """The error that refuses these problems: MissingConfigError when each is missing configuration."""
    only_config = bool(problems) and all(problem.config for problem in problems)
    return (MissingConfigError if only_config else ManifestError)(problems, more, report=report)


class UsageError(BatchError):
    """The command line (or a setting given in code) is wrong."""

    exit_code = EXIT_USAGE


class OptionError(UsageError):
    """One setting has a value no run can use; `name` is its field of batch.Options."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


class OutputError(BatchError):
    """The output directory cannot be written (permissions, disk full, a symlink where a file goes), or
    its journals read (a disk failing under them)."""

    exit_code = EXIT_IOERR


class DirLockedError(BatchError):
    """Another run holds the lock on the output directory."""

    exit_code = EXIT_TEMPFAIL


class ApiError(BatchError):
    """One request to the API went wrong.

    `maybe_billed` is true when the request reached the server and the failure happened after it may
    have done (and charged for) the work: a connection broken mid-answer, a body cut short.
    """

    kind = "api_error"
    status: int | None = None
    maybe_billed: bool = False
    retry_after: float | None = None


class ApiStatusError(ApiError):
    """The API answered with an error status."""

    kind = "http_error"

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        server_request_id: str | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.retry_after = retry_after
        self.server_request_id = server_request_id  # the server's x-request-id: for reconciling with it
        # an error sent inside a stream, after some of its events: the usage they reported (billed), and
        # the stream as it came (for DIR/answers/, where the error is not retried)
        self.usage: Mapping[str, Any] | None = None
        self.raw: bytes | None = None
        super().__init__(f"HTTP {status}: {message}")


class TransportError(ApiError):
    """The request got no usable answer: refused, reset, timed out."""

    kind = "transport_error"

    def __init__(
        self, message: str, *, maybe_billed: bool = False, timeout: bool = False, reach: str = "connection"
    ) -> None:
        self.message = message
        self.maybe_billed = maybe_billed
        self.timeout = timeout
        # what failed, for the user's first warning of each: dns, refused, tls, connect_timeout (the host
        # was never reached), timeout, cut_short, connection (it was)
        self.reach = reach
        super().__init__(message)

    @property
    def unreached(self) -> bool:
        """No connection was made: the host does not resolve, refuses, or will not speak TLS with us."""
        return self.reach in UNREACHED


UNREACHED = frozenset({"dns", "refused", "tls", "connect_timeout"})


class BrokenAnswerError(ApiError):
    """A 2xx answer whose body cannot be used.

    `retry` is true when the body was garbled on the way (not JSON, cut short, a gateway's page): the
    request is sent again. Otherwise the answer arrived whole and was paid for, so asking again would buy
    it twice: the task fails. `usage` holds the usage the body still reported (the request was billed) or
    None; `raw` the body as received (for DIR/answers/); `error_type` names the failure in the result line.
    """

    kind = "broken_answer"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        usage: Mapping[str, Any] | None = None,
        maybe_billed: bool = True,
        retry: bool = False,
        raw: bytes | None = None,
        error_type: str | None = None,
    ) -> None:
        self.message = message
        self.status = status
        self.usage = usage
        # An answer that told us its usage is known billed (and recorded), not "maybe".
        self.maybe_billed = maybe_billed and usage is None
        self.retry = retry
        self.raw = raw
        if error_type is not None:
            self.kind = error_type
        super().__init__(message)


class StreamStalledError(BrokenAnswerError):
    """A stream that stopped sending after some events, held open until the timeout: nothing came after
    its last event, so that event is where it ended (a usage chunk of its own says its choices were done),
    as a stream cut there is judged; an error event or an event that is not JSON is something after it."""


class RefusalError(ApiError):
    """A well-formed answer in which the model declined (a content filter). Asking again costs again."""

    kind = "refused"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


def unwrap(error: BaseException) -> BaseException:
    """What ended a run, out of the ExceptionGroups its task groups wrap errors in: the first BatchError
    (a full disk's OutputError, say), so that it reaches the caller with its own exit code; the error
    itself when it is no group or holds no BatchError."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = unwrap(inner)
            if isinstance(found, BatchError):
                return found
    return error
