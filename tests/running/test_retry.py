"""Retry decisions and waits: pure functions, no server, no sleeping."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import anyio
import anyio.lowlevel
import pytest
from tenacity import AsyncRetrying, retry_if_exception

from batch.errors import ApiStatusError, BrokenAnswerError, RefusalError, TransportError
from batch.running.retry import (
    RetryPolicy,
    Verdict,
    classify,
    parse_retry_after,
    rate_limited,
    retryable,
    retrying,
)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    assert classify(ApiStatusError(status, "x")).verdict is Verdict.RETRY


@pytest.mark.parametrize("status", [400, 413, 415, 422])
def test_other_client_errors_fail_the_task(status: int) -> None:
    assert classify(ApiStatusError(status, "x")).verdict is Verdict.FAIL


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ApiStatusError(401, "bad key"), 77),
        (ApiStatusError(403, "forbidden"), 77),
        (ApiStatusError(404, "no deployment"), 78),
        (ApiStatusError(429, "quota", error_type="insufficient_quota"), 69),
        (ApiStatusError(429, "quota", code="insufficient_quota"), 69),
    ],
)
def test_fatal_errors_stop_the_run(error: ApiStatusError, code: int) -> None:
    decision = classify(error)
    assert decision.verdict is Verdict.STOP
    assert decision.exit_code == code
    assert error.message in decision.reason


def billed_429(**attributes: object) -> ApiStatusError:
    """A 429 sent as an error event after part of a stream: with the usage it reported, or maybe billed."""
    error = ApiStatusError(429, "slow down")
    for name, value in attributes.items():
        setattr(error, name, value)
    return error


@pytest.mark.parametrize(
    ("error", "costs_no_attempt"),
    [
        (ApiStatusError(429, "slow down", retry_after=1.0), True),
        (ApiStatusError(429, "Resource has been exhausted (e.g. check quota).", code="429"), True),
        (ApiStatusError(429, "quota", code="insufficient_quota"), False),  # stops the run instead
        (ApiStatusError(503, "overloaded", retry_after=1.0), False),  # the circuit breaker's
        (TransportError("reset", maybe_billed=True), False),
        (None, False),
        (billed_429(usage={"total_tokens": 5}), False),  # after part of an answer: billed, in part
        (billed_429(maybe_billed=True), False),
    ],
)
def test_only_a_429_to_retry_is_rate_limited(error: BaseException | None, costs_no_attempt: bool) -> None:
    """A 429 to retry spends no attempt of its task (the runner's predicate), and ends it pending."""
    assert rate_limited(error) is costs_no_attempt


def test_unknown_model_404_fails_only_its_task() -> None:
    assert classify(ApiStatusError(404, "no model", code="model_not_found")).verdict is Verdict.FAIL


def test_transport_and_garbled_answers_are_retried_whole_ones_and_refusals_are_not() -> None:
    assert classify(TransportError("reset", maybe_billed=True)).verdict is Verdict.RETRY
    assert classify(BrokenAnswerError("not json", retry=True)).verdict is Verdict.RETRY
    # a whole answer the tool could not use was paid for: asking again would buy it twice
    assert classify(BrokenAnswerError("no data")).verdict is Verdict.FAIL
    assert classify(RefusalError("content filter")).verdict is Verdict.FAIL
    assert classify(ValueError("a bug")).verdict is Verdict.FAIL


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(30.0)
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("-5") == -5.0  # returned as is; the policy refuses it


@pytest.mark.parametrize(
    "value",
    [
        "Wed, 21 Oct 2015 99999999999:28:00 GMT",
        "Wed, 21 Oct 99999999999 07:28:00 GMT",
        "Wed, 99 Oct 2015 07:28:00 GMT",
        "Wed, 21 Oct 2015 07:28:00 +99999999999",
        "1e999",
        "-1e999",
        "inf",
        "0x10",
        "\x00",
        "Mon, 01 Jan 0000 00:00:00 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "," * 10_000,
    ],
)
def test_no_retry_after_value_raises(value: str) -> None:
    found = parse_retry_after(value)
    assert found is None or isinstance(found, float)


def test_policy_honours_sane_retry_after_and_ignores_absurd_ones() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=8.0, retry_after_max=120.0)
    rng = random.Random(1)
    sane = ApiStatusError(429, "slow down", retry_after=12.0)
    assert 12.0 <= policy.wait(1, sane, rng) <= 13.0
    for absurd in (-3.0, 7200.0):
        wait = policy.wait(5, ApiStatusError(429, "x", retry_after=absurd), rng)
        assert 0 <= wait <= 8.0  # capped backoff instead


def test_a_retry_after_of_zero_does_not_cut_the_backoff_short() -> None:
    """`Retry-After: 0` on every 429 spent a task's six attempts in under a second, and failed every task
    of the run at once: the backoff is the least a retry waits."""
    policy = RetryPolicy(backoff_base=1.0, backoff_max=60.0)
    rng = random.Random(3)
    zero = ApiStatusError(429, "slow down", retry_after=0.0)
    total = sum(policy.wait(attempt, zero, rng) for attempt in range(1, 6))
    assert total > 5.0, total  # backoffs drawn under ceilings of 1+2+4+8+16 s (seeded), not ~0
    assert policy.wait(6, ApiStatusError(429, "x", retry_after=30.0), rng) >= 30.0


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=10.0)
    rng = random.Random(7)
    # past the 1,025th attempt (429s spend none) 2 ** attempt was too large for a float: OverflowError
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0), (1100, 10.0)]:
        waits = [policy.wait(attempt, None, rng) for _ in range(200)]
        assert max(waits) <= ceiling
        assert min(waits) >= 0
        assert max(waits) > ceiling * 0.8  # spread over the whole range: full jitter


@pytest.mark.anyio
async def test_retrying_is_bounded_by_attempts_and_reraises_the_last_error() -> None:
    calls = 0
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        raise ApiStatusError(503, f"down {calls}")

    loop = retrying(RetryPolicy(max_attempts=3, backoff_base=0.5), sleep=no_sleep)
    with pytest.raises(ApiStatusError, match="down 3"):
        await loop(flaky)
    assert calls == 3
    assert len(waits) == 2


@pytest.mark.anyio
async def test_retrying_is_bounded_by_the_deadline() -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        raise TransportError("reset")

    async def sleep(seconds: float) -> None:
        await anyio.lowlevel.checkpoint()

    # every wait of 5 s would pass a 1 s deadline: no retry starts
    loop = retrying(
        RetryPolicy(max_attempts=10, deadline=1.0, backoff_base=5.0, backoff_max=5.0),
        sleep=sleep,
        rng=_AlwaysMax(),
    )
    with pytest.raises(TransportError):
        await loop(flaky)
    assert calls == 1


@pytest.mark.anyio
async def test_non_retryable_error_is_not_retried() -> None:
    calls = 0

    async def bad_request() -> None:
        nonlocal calls
        calls += 1
        raise ApiStatusError(400, "bad size")

    async def sleep(seconds: float) -> None:
        raise AssertionError("must not wait")

    with pytest.raises(ApiStatusError):
        await retrying(RetryPolicy(), sleep=sleep)(bad_request)
    assert calls == 1


class _AlwaysMax(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.mark.anyio
async def test_call_with_retries_counts_attempts_and_honours_each_retry_after() -> None:
    from batch.running.retry import RetryNotice, call_with_retries

    calls = 0
    notices: list[RetryNotice] = []
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ApiStatusError(503, f"down {calls}", retry_after=float(calls))
        return "ok"

    result = await call_with_retries(RetryPolicy(max_attempts=5), flaky, sleep=sleep, on_retry=notices.append)
    assert result == "ok" and calls == 3
    assert [(n.attempt, str(n.error)) for n in notices] == [(1, "HTTP 503: down 1"), (2, "HTTP 503: down 2")]
    assert 1.0 <= waits[0] <= 1.1 and 2.0 <= waits[1] <= 2.2  # each Retry-After honoured
    assert [n.wait for n in notices] == waits


@pytest.mark.anyio
async def test_call_with_retries_keeps_every_bound() -> None:
    from batch.running.retry import call_with_retries

    async def sleep(seconds: float) -> None:
        return None

    calls = 0

    async def always_down() -> None:
        nonlocal calls
        calls += 1
        raise TransportError("reset")

    with pytest.raises(TransportError):
        await call_with_retries(RetryPolicy(max_attempts=4, backoff_base=0), always_down, sleep=sleep)
    assert calls == 4
    calls = 0
    with pytest.raises(TransportError):  # only 2 of the attempts count: the rest were lost to an outage
        await call_with_retries(
            RetryPolicy(max_attempts=2, backoff_base=0),
            always_down,
            sleep=sleep,
            lost_to_outage=lambda error: calls % 3 != 0,  # attempts 3 and 6 count, the others are excused
        )
    assert calls == 6
    calls = 0
    with pytest.raises(TransportError):  # the first wait already passes the deadline: no retry
        await call_with_retries(
            RetryPolicy(max_attempts=9, deadline=1.0, backoff_base=5.0, backoff_max=5.0),
            always_down,
            sleep=sleep,
            rng=_AlwaysMax(),
        )
    assert calls == 1
    calls = 0

    async def bad_request() -> None:
        nonlocal calls
        calls += 1
        raise ApiStatusError(400, "no")

    with pytest.raises(ApiStatusError):
        await call_with_retries(RetryPolicy(), bad_request, sleep=sleep)
    assert calls == 1


@pytest.mark.anyio
async def test_an_outage_costs_no_attempt_and_the_loop_counts_afresh_each_call() -> None:
    from batch.running.retry import stop_after_counted_attempts

    calls = 0
    asked: list[int] = []
    free_upto = 0  # the failures of attempts 1..free_upto are lost to an outage

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise ApiStatusError(503, f"down {calls}")

    async def refused() -> None:
        raise ApiStatusError(400, "no")

    async def sleep(seconds: float) -> None:
        return None

    def lost_to_outage(error: BaseException) -> bool:
        asked.append(calls)
        return calls <= free_upto

    loop = AsyncRetrying(
        stop=stop_after_counted_attempts(3, lost_to_outage),
        retry=retry_if_exception(retryable),
        sleep=sleep,
        reraise=True,
    )
    with pytest.raises(ApiStatusError, match=r"down 3$"):
        await loop(down)
    assert asked == [1, 2, 3]  # asked once per failed attempt
    calls, free_upto = 0, 4  # the same loop again (the count starts afresh): 4 free attempts, then 3
    asked.clear()
    with pytest.raises(ApiStatusError, match=r"down 7$"):
        await loop(down)
    assert asked == [1, 2, 3, 4, 5, 6, 7]
    asked.clear()
    with pytest.raises(ApiStatusError, match="no"):  # not retryable: it ends the loop, never asked about
        await loop(refused)
    assert asked == []


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_calls_that_share_a_budget_share_its_retries_and_its_deadline() -> None:
    """The links of one answer: each call's first try is its own, the retries are the budget's (taken
    in the loop and before it), and a budget whose deadline has passed lets no retry go."""
    from batch.running.retry import SharedRetries, call_with_retries

    async def sleep(seconds: float) -> None:
        return None

    tries: list[str] = []

    def always_down(name: str) -> Callable[[], Awaitable[None]]:
        async def attempt() -> None:
            tries.append(name)
            raise TransportError("reset")

        return attempt

    policy = RetryPolicy(max_attempts=4, backoff_base=0)
    shared = SharedRetries(policy.max_attempts - 1, policy.deadline)
    for name in ("a", "b", "c"):
        with pytest.raises(TransportError):
            await call_with_retries(policy, always_down(name), sleep=sleep, shared=shared)
    assert tries == ["a", "a", "a", "a", "b", "c"]  # a took the 3 retries; b and c had their first tries
    assert shared.left == 0

    now = [0.0]
    late = SharedRetries(5, 10.0, clock=lambda: now[0])
    now[0] = 10.0
    tries.clear()
    with pytest.raises(TransportError):
        await call_with_retries(policy, always_down("d"), sleep=sleep, shared=late)
    assert tries == ["d"] and late.left == 5 and not late.take()


def test_only_a_failure_that_bought_nothing_is_the_services_alone() -> None:
    """A partial outage's 5xx spends no attempt only when it bought nothing: one beside a usage, or inside
    a stream (maybe billed), or a timeout mid-answer, spends one, or it is bought over and over."""
    from batch.running.retry import bought_nothing, failing_service

    plain = ApiStatusError(503, "Service Unavailable")
    with_usage = ApiStatusError(502, "upstream closed")
    with_usage.usage = {"total_tokens": 10}
    in_stream = ApiStatusError(502, "upstream closed")
    in_stream.maybe_billed = True
    refused = TransportError("could not connect", reach="refused")
    timed_out = TransportError("no complete answer", maybe_billed=True, timeout=True, reach="timeout")
    assert bought_nothing(plain) and failing_service(plain)
    assert bought_nothing(refused) and failing_service(refused)
    for billed in (with_usage, in_stream, timed_out):
        assert not bought_nothing(billed) and not failing_service(billed)
    assert not failing_service(ApiStatusError(400, "bad request"))  # the task's, not the service's
    assert not failing_service(ApiStatusError(429, "slow down"))  # a 429 has rules of its own
