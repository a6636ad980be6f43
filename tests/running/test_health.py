"""The run-wide circuit breaker and the attempt log's recovery after a kill."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from batch.output.runlog import RunLog, recover
from batch.running.health import PROBE_FIRST, PROBE_GRACE, ServiceHealth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def probing(probe_timeout: float = 600) -> tuple[Clock, list[str], ServiceHealth, int]:
    """A circuit opened (threshold 1, a 60 s limit) and its first probe let through: the clock, the
    outages given up, the health, the probe's number."""
    clock = Clock()
    outages: list[str] = []
    health = ServiceHealth(1, 60, outages.append, clock=clock, probe_timeout=probe_timeout)
    health.failed("503")
    clock.now += PROBE_FIRST
    return clock, outages, health, await health.admit()


def test_closed_circuit_admits_and_a_success_resets_the_count() -> None:
    """A service that answered everything opens the circuit after `threshold` failures in a row."""
    outages: list[str] = []
    health = ServiceHealth(3, 60, outages.append, clock=Clock())
    for _ in range(100):
        health.succeeded()
    health.failed("503")
    health.failed("503")
    health.succeeded()
    health.failed("503")
    health.failed("503")
    assert not health.is_open
    health.failed("503")
    assert health.is_open and health.outages == 1
    assert outages == []


def answering_one_in_five(clock: Clock, outages: list[str] | None = None) -> ServiceHealth:
    """A service that answered one request in five, its last one answered (threshold 5, a 60 s limit)."""
    health = ServiceHealth(5, 60, (outages if outages is not None else []).append, clock=clock)
    for _ in range(40):
        for _ in range(4):
            health.failed("503", billed=False)
        health.succeeded()
    return health


def test_a_service_that_answers_one_request_in_five_is_not_down_for_a_bad_run_of_failures() -> None:
    """80% answered 503: five in a row (the threshold) are common, and the circuit opened and closed
    again and again, its probes one at a time up to 30 s apart: the night crawled. Failures in a row
    open it only when that many are unlikely (1e-4) at the rate the service answered: 42 at one in five."""
    clock = Clock()
    outages: list[str] = []
    health = answering_one_in_five(clock, outages)
    for _ in range(41):
        clock.now += 1
        health.failed("503", billed=False)
    assert not health.is_open
    health.failed("503", billed=False)
    assert health.is_open and health.outages == 1
    # the outage limit counts from the first of them (41 s ago), not from the circuit's opening
    clock.now += 20
    health.failed("503", billed=False)
    assert len(outages) == 1 and "failing for 60 s" in outages[0]


def test_a_failure_that_bought_nothing_spends_no_attempt_while_the_service_fails_more_than_it_answers() -> (
    None
):
    """Six 503s met by chance at 80% failed a task for good. One that bought nothing is the service's
    fault while it fails more than it answers; one that may have been billed (a usage, a cut stream)
    spends an attempt as ever, or the same answer is bought over and over."""
    health = answering_one_in_five(Clock())
    assert health.failed("503", billed=False) is False
    assert health.failed("503 with a usage", billed=True) is True
    healthy = ServiceHealth(5, 60, [].append, clock=Clock())
    for _ in range(10):
        healthy.succeeded()
    assert healthy.failed("503", billed=False) is True  # answering mostly: this one is the task's


@pytest.mark.anyio
async def test_a_failed_probes_retry_after_puts_the_next_probe_off() -> None:
    """A 503 with `Retry-After: 20` on a probe, and the next probe went 0.5 s later all the same."""
    clock, _, health, probe = await probing()
    assert probe
    health.failed("503", probe, retry_after=20)
    clock.now += 19
    with anyio.move_on_after(0.05) as scope:
        await health.admit()
    assert scope.cancelled_caught  # not yet
    clock.now += 1
    assert await health.admit()  # the next probe


async def probe_times(health: ServiceHealth, clock: Clock, answered_at: int = 0) -> list[float]:
    """Drive an open circuit on `clock`, each wait for the next probe skipped at once: every probe fails
    (the `answered_at`th is answered, when given) until the circuit closes or gives up. The times of the
    probes, from the first failure."""
    opened = clock.now

    async def skipped(seconds: float) -> None:
        clock.now += max(0.0, seconds) + 0.001  # as the real wait, a millisecond more
        await anyio.lowlevel.checkpoint()

    health._wait = skipped  # type: ignore[method-assign]
    times: list[float] = []
    with anyio.fail_after(10):
        while health.is_open and (probe := await health.admit()):
            health.sending(probe)
            times.append(clock.now - opened)
            if len(times) == answered_at:
                health.succeeded()
            else:
                health.failed("HTTP 503", probe)
    return times


@pytest.mark.anyio
async def test_a_run_that_begins_in_a_partial_outage_probes_quickly_until_its_failures_tell() -> None:
    """Three requests in four answered 503 from the run's first: its first five failed (one run in four),
    the circuit opened, and its probes, one at a time, failed as often. Their waits doubled, 30 s apart
    after eight: 16 failures in a row and the run crawled for 92 s before its first answer. Five
    failures, or twenty, do not tell a dead service from one that answers one request in five: the
    probes go PROBE_FIRST apart until they do (or the outage's quick probes are spent: 14 at 900 s)."""
    clock = Clock()
    health = ServiceHealth(5, 900, lambda reason: None, clock=clock)
    for _ in range(5):
        health.failed("HTTP 503")
    assert health.is_open
    times = await probe_times(health, clock, answered_at=12)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(times) == 12 and not health.is_open
    assert all(gap <= PROBE_FIRST + 0.01 for gap in gaps), gaps


def doubling_schedule(limit: float) -> list[float]:
    """The probes of an outage as they went before: 0.25 s after its failures, each wait twice the last,
    30 s at most; those due before `limit`."""
    times, at, wait = [], 0.0, 0.25
    while at + wait < limit:
        at += wait
        times.append(at)
        wait = min(30.0, wait * 2)
    return times


@pytest.mark.anyio
@pytest.mark.parametrize("limit", [0.6, 4, 60, 120, 300, 900, 3600])
async def test_a_service_down_for_good_gets_no_more_probes_before_its_limit_than_the_doubling_schedule_sent(
    limit: float,
) -> None:
    """The quick probes of a run that begins in an outage are taken from the outage's later ones: a
    service that stays down is sent no more probes before --outage-limit than the doubling schedule sent
    (PROBE_FIRST, each wait twice the last, 30 s at most), and the run still gives up at the limit."""
    clock = Clock()
    outages: list[str] = []
    health = ServiceHealth(5, limit, outages.append, clock=clock)
    for _ in range(5):
        health.failed("HTTP 503")
    times = await probe_times(health, clock)
    assert len(times) <= len(doubling_schedule(limit)), times
    assert len(outages) == 1 and clock.now - 100 < limit + 0.1
    if limit >= 60:  # a service back late in a long outage is still found within a minute
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert limit - times[-1] <= 2 * 30 and max(gaps) <= 2 * 30, gaps


@pytest.mark.anyio
async def test_open_circuit_lets_one_probe_through_and_a_success_releases_everyone() -> None:
    clock = Clock()
    health = ServiceHealth(2, 600, lambda reason: None, clock=clock)
    await health.admit()  # healthy: at once
    health.failed("502")
    health.failed("502")
    assert health.is_open
    admitted: list[str] = []

    async def attempt(name: str) -> None:
        await health.admit()
        admitted.append(name)

    async with anyio.create_task_group() as group:
        clock.now += PROBE_FIRST  # the first probe is due
        group.start_soon(attempt, "probe")
        group.start_soon(attempt, "waiter-1")
        group.start_soon(attempt, "waiter-2")
        await anyio.wait_all_tasks_blocked()
        assert admitted == ["probe"]  # the others wait at the gate
        health.succeeded()  # the probe was answered: the service is back
    assert sorted(admitted) == ["probe", "waiter-1", "waiter-2"]
    assert not health.is_open


@pytest.mark.anyio
async def test_failed_probes_back_off_and_a_long_outage_gives_up() -> None:
    clock = Clock()
    outages: list[str] = []
    health = ServiceHealth(1, 60, outages.append, clock=clock)
    health.failed("timeout")
    clock.now += PROBE_FIRST
    await health.admit()  # probe 1
    health.failed("timeout")  # next probe in 0.5 s
    clock.now += 0.3
    with anyio.move_on_after(0.05) as scope:
        await health.admit()
    assert scope.cancelled_caught  # not yet: waiting for the next probe
    clock.now += 61
    health.failed("connection refused")
    assert outages and "failing for 62 s" in outages[0] and "connection refused" in outages[0]
    await health.admit()  # released: the runner sees it is stopping and sends nothing


@pytest.mark.anyio
async def test_an_outage_is_given_up_at_its_limit_though_no_attempt_asks() -> None:
    """Every task asleep in its retry's backoff (up to --backoff-max): none asks the gate again, and a
    run with --outage-limit 10 stopped after 22 s. The watch gives up at the limit itself."""
    import time

    outages: list[str] = []
    health = ServiceHealth(1, 0.2, outages.append)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(health.watch)
            await anyio.wait_all_tasks_blocked()  # no outage: it waits for one
            opened = time.monotonic()
            health.failed("503")  # the circuit opens; no attempt comes back to the gate
    assert time.monotonic() - opened >= 0.2
    assert len(outages) == 1 and re.search(r"the service has been failing for \d+ s", outages[0])


@pytest.mark.timeout(30)
def test_nothing_but_429_for_the_outage_limit_gives_up_and_any_other_answer_starts_the_count_again() -> None:
    """A gateway that throttles for good, each 429 with `Retry-After: 300`: every 429 counted as an answer,
    the outage limit was never reached and the run went on for days. A 429 still closes the circuit (the
    service answers), but nothing else for the limit gives up, as an outage does."""
    clock = Clock()
    outages: list[str] = []
    health = ServiceHealth(2, 60, outages.append, clock=clock)
    health.throttled("HTTP 429: slow down")
    clock.now += 59
    health.throttled("HTTP 429: slow down")
    health.succeeded()  # an answer: the count starts again at the next 429
    clock.now += 30
    health.throttled("HTTP 429: slow down")
    clock.now += 59
    health.throttled("HTTP 429: slow down")
    assert outages == []
    health.failed("503")  # a failure is no answer: it does not start the count again
    health.failed("503")
    assert health.is_open
    clock.now += 1
    health.throttled("HTTP 429: still")  # an answer: the circuit closes
    assert not health.is_open and len(outages) == 1
    assert re.search(
        r"answered nothing but HTTP 429 \(rate limited\) for 60 s \(last: HTTP 429: still\)", outages[0]
    )
    health.throttled("HTTP 429: still")
    assert len(outages) == 1  # given up once


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_nothing_but_429_is_given_up_at_the_limit_though_every_task_waits_out_its_retry_after() -> None:
    """Every task asleep in a Retry-After of 300 s: none answers in time, and the watch gives up itself."""
    import time

    outages: list[str] = []
    health = ServiceHealth(1, 0.2, outages.append)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(health.watch)
            await anyio.wait_all_tasks_blocked()
            throttled = time.monotonic()
            health.throttled("HTTP 429: slow down")
    assert time.monotonic() - throttled >= 0.2
    assert len(outages) == 1 and "answered nothing but HTTP 429" in outages[0]


@pytest.mark.timeout(30)
def test_an_endpoint_that_answers_nothing_but_429_while_another_answers_is_given_up_alone() -> None:
    """The chat endpoint throttled for good, the image one fine: the chat endpoint is given up at the limit
    (its tasks left pending) and the run goes on; an answer from it again takes it back."""
    clock = Clock()
    outages: list[str] = []
    health = ServiceHealth(2, 60, outages.append, clock=clock)
    health.throttled("HTTP 429: spent", "chat")
    health.succeeded("images")
    clock.now += 59
    health.throttled("HTTP 429: spent", "chat")
    health.succeeded("images")
    assert not health.given_up("chat")
    clock.now += 1
    health.throttled("HTTP 429: spent", "chat")
    assert health.given_up("chat") and not health.given_up("images") and outages == []
    assert health.endpoints_given_up == ["chat"]
    clock.now += 120  # its 429s no longer count against the run, though nothing else came since
    health.throttled("HTTP 429: sent before", "chat")
    assert outages == []
    health.throttled("HTTP 429: slow down", "images")  # the other endpoint's count is its own
    clock.now += 60
    health.throttled("HTTP 429: slow down", "images")  # no endpoint answers now: the run stops
    assert len(outages) == 1 and "answered nothing but HTTP 429" in outages[0]
    assert not health.given_up("images")
    health.succeeded("chat")  # a request sent before it was given up came back answered: it is back
    assert not health.given_up("chat")


def test_an_endpoint_is_not_given_up_alone_where_no_other_has_answered() -> None:
    """Nothing says that another endpoint works: the run-wide rule decides, and stops the run."""
    clock = Clock()
    outages: list[str] = []
    health = ServiceHealth(2, 60, outages.append, clock=clock)
    health.succeeded("chat")  # it answered once; then it throttles for good
    health.throttled("HTTP 429: spent", "chat")
    clock.now += 60
    health.throttled("HTTP 429: spent", "chat")
    assert not health.given_up("chat") and len(outages) == 1


@pytest.mark.timeout(30)
def test_an_endpoint_is_given_up_alone_where_another_of_the_runs_has_not_been_heard_from() -> None:
    """The throttled endpoint's tasks came first and hold every worker: the run's other endpoint has had
    no request yet, so it has not answered. It may: the throttled one is given up, not the run stopped
    with the other's tasks never sent. Once that one too answers nothing but 429, the run stops."""
    clock = Clock()
    outages: list[str] = []
    health = ServiceHealth(2, 60, outages.append, clock=clock, endpoints={"chat", "images"})
    health.throttled("HTTP 429: spent", "chat")
    clock.now += 60
    health.throttled("HTTP 429: spent", "chat")
    assert health.given_up("chat") and outages == []
    health.throttled("HTTP 429: slow down", "images")
    clock.now += 60
    health.throttled("HTTP 429: slow down", "images")
    assert not health.given_up("images") and len(outages) == 1


def test_endpoints_that_all_answer_nothing_but_429_stop_the_run_none_given_up_alone() -> None:
    """Both of the run's endpoints throttled from the start: neither may answer, the run-wide rule stops
    the run (as a gateway that throttles for good), neither is given up for the other."""
    clock = Clock()
    outages: list[str] = []
    health = ServiceHealth(2, 60, outages.append, clock=clock, endpoints={"chat", "images"})
    health.throttled("HTTP 429: spent", "chat")
    health.throttled("HTTP 429: spent", "images")
    clock.now += 60
    health.throttled("HTTP 429: spent", "chat")
    assert health.endpoints_given_up == [] and len(outages) == 1


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_the_watch_gives_an_endpoint_up_at_its_limit_and_wakes_its_tasks_from_their_waits() -> None:
    """Every task of the throttled endpoint asleep in a Retry-After of 300 s: the watch gives the endpoint
    up at the limit, and their waits end then, not 300 s later, freeing their workers for other tasks."""
    import time

    outages: list[str] = []
    health = ServiceHealth(1, 0.2, outages.append)
    health.succeeded("images")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(health.watch)
            await anyio.wait_all_tasks_blocked()
            throttled = time.monotonic()
            health.throttled("HTTP 429: slow down", "chat")
            await health.pause("chat", 300)
            assert health.given_up("chat") and time.monotonic() - throttled >= 0.2
            group.cancel_scope.cancel()
    assert outages == []


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_a_retry_wait_of_nothing_still_lets_the_other_tasks_run_first() -> None:
    """A task's retry wait of 0 (--backoff 0, a Retry-After of 0) is a checkpoint, as the run's sleep
    was: a task retrying at once does not keep the others from their turn."""
    health = ServiceHealth(1, 60, [].append)
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async with anyio.create_task_group() as group:
        group.start_soon(other)
        await health.pause("ep", 0)
        assert ran == ["other"]


def test_recover_marks_requests_of_a_killed_run_as_maybe_billed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    killed = RunLog(runs, "20260101T000000Z-aaaaaa")
    killed.open({"pid": 1})
    killed.sent("fox/aaaaaa.1", "fox")
    killed.done("fox/aaaaaa.1", "answered", status=200)
    killed.sent("owl/aaaaaa.1", "owl")
    killed.sent("cat/aaaaaa.1", "cat")
    # killed here: no end line; and a torn last line as a kill can leave
    with killed.path.open("ab") as handle:
        handle.write(b'{"event": "sent", "request_')
    clean = RunLog(runs, "20260101T000100Z-bbbbbb")
    clean.open({"pid": 2})
    clean.sent("eel/bbbbbb.1", "eel")
    clean.close({"exit_code": 75})  # an unresolved request at a clean end is closed as cancelled

    found = recover(runs)
    assert found.runs == 1
    assert sorted(found.requests) == ["cat/aaaaaa.1", "owl/aaaaaa.1"]
    assert dict(found.by_task) == {"owl": 1, "cat": 1}
    records = [json.loads(line) for line in killed.path.read_text().splitlines()]
    assert records[-1]["event"] == "end" and records[-1]["interrupted"] is True
    assert {r["request_id"] for r in records if r.get("outcome") == "interrupted"} == {
        "owl/aaaaaa.1",
        "cat/aaaaaa.1",
    }
    cancelled = [json.loads(line) for line in clean.path.read_text().splitlines()]
    assert {
        "event": "done",
        "request_id": "eel/bbbbbb.1",
        "outcome": "cancelled",
        "maybe_billed": True,
    }.items() <= cancelled[-2].items()
    assert recover(runs).runs == 0  # already closed


@pytest.mark.anyio
@pytest.mark.parametrize(
    "probe", ["answered", "failed", "ended unanswered", "another request failed, then answered"]
)
async def test_a_probe_sent_before_the_outage_limit_decides(probe: str) -> None:
    """The watch gave up at the limit while the probe was in flight: the run stopped with 69 though the
    probe's answer then said the service was back. Its answer now decides: an answer goes on, its failure
    or its attempt's end without an answer gives up. Another request's failure (one sent before the
    circuit opened) is not the probe's, and neither gives up nor lets a second probe go."""
    clock, outages, health, number = await probing()
    assert number == 1
    health.sending(number)  # the probe, sent
    clock.now += 61  # past the limit, the probe still in flight
    admitted: list[int] = []

    async def attempt() -> None:
        admitted.append(await health.admit())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(health.watch)
            group.start_soon(attempt)
            await anyio.wait_all_tasks_blocked()
            assert outages == [] and admitted == []  # both wait for the probe's answer
            if probe == "answered":
                health.succeeded()
            elif probe == "failed":
                health.failed("503 again", number)
            elif probe == "ended unanswered":
                health.ended(number + 1)  # not the probe in flight: nothing changes
                await anyio.wait_all_tasks_blocked()
                assert outages == [] and admitted == []
                health.ended(number)
            else:
                health.failed("a timeout of a request sent before the outage")
                await anyio.wait_all_tasks_blocked()
                assert outages == [] and admitted == []  # still the probe's to decide; no second probe
                health.succeeded()
            await anyio.wait_all_tasks_blocked()
            assert admitted == [0]  # let through: the service is back, or the run stops
            group.cancel_scope.cancel()  # the watch of a run that goes on
    gave_up = probe in ("failed", "ended unanswered")
    assert len(outages) == gave_up and health.is_open is gave_up
    health.ended(number)  # its attempt's end, after its answer: nothing more
    assert len(outages) == gave_up


@pytest.mark.anyio
@pytest.mark.parametrize("sent", [False, True], ids=["waiting to be sent", "sent, past its timeout"])
async def test_the_outage_limit_does_not_wait_for_a_probe_not_sent_or_past_its_timeout(sent: bool) -> None:
    """A probe let through may wait for a slot or a pacer (with --redis, on other runs) before it is sent:
    the limit waited for it, and a run with --outage-limit 1 stopped after 14 s, having sent it late. Now
    the limit gives up on a probe not sent (the stopping run never sends it), and on a sent one once its
    --timeout (and a grace) is over."""
    clock, outages, health, number = await probing(probe_timeout=30)
    clock.now = 100 + 59  # a minute into the outage
    if sent:
        health.sending(number)
        clock.now += 11  # past the limit, within its time: waited for
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(health.watch)
                await anyio.wait_all_tasks_blocked()
                assert outages == []
                group.cancel_scope.cancel()
        clock.now = 100 + 59 + 30 + PROBE_GRACE  # its --timeout, and the grace, over
    else:
        clock.now += 2
    with anyio.fail_after(10):
        await health.watch()
    assert len(outages) == 1
    assert await health.admit() == 0  # released: the run stops, and sends nothing


@pytest.mark.anyio
async def test_an_attempt_let_through_as_the_probe_lets_go_of_it_however_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attempt admitted as the probe that raised before its request left (a fault of ours, which fails
    its task only) held the probe for good: no other probe went, and the watch, which waits for a probe
    in flight at the limit, would have waited for it. Its end now lets go of it."""
    from types import SimpleNamespace
    from typing import Any

    from batch.running.attempt import TaskAttempts
    from batch.running.context import TaskState

    clock = Clock()
    outages: list[str] = []
    health = ServiceHealth(1, 60, outages.append, clock=clock)
    health.failed("503")
    clock.now += PROBE_FIRST
    attempts = TaskAttempts(SimpleNamespace(health=health))  # type: ignore[arg-type]

    async def broken(*args: Any) -> None:
        assert health.is_open  # let through as the probe
        raise ValueError("a fault of ours, before the request left")

    monkeypatch.setattr(attempts, "_admitted", broken)
    with pytest.raises(ValueError):
        await attempts._attempt(None, None, TaskState())  # type: ignore[arg-type]
    with anyio.fail_after(10):
        assert await health.admit() == 2  # the next probe goes
    assert outages == []


@pytest.mark.anyio
async def test_waiters_at_the_gate_do_not_spin_while_the_probe_is_out() -> None:
    """Past the next probe's time, with the probe out, each waiter woke every millisecond until its answer
    (up to --timeout, 600 s): a core spent all night on an outage. They now sleep until a change or the
    limit."""
    clock, _, health, number = await probing()
    health.sending(number)
    clock.now += 1  # the next probe's time is past; the probe is still out
    waits = 0
    real = health._wait

    async def counted(seconds: float) -> None:
        nonlocal waits
        waits += 1
        await real(seconds)

    health._wait = counted  # type: ignore[method-assign]
    admitted: list[int] = []

    async def waiter() -> None:
        admitted.append(await health.admit())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(waiter)
            await anyio.sleep(0.1)  # a window in which a spinning waiter wakes some 100 times
            assert waits == 8 and admitted == []
            health.succeeded()
    assert admitted == [0] * 8


@pytest.mark.anyio
async def test_a_probe_is_not_sent_once_the_run_stopped_while_its_sent_line_went_to_the_store() -> None:
    """An output on a store publishes each `sent` line before its request leaves, which may take a while:
    the probe counted as sent from before that wait, so the limit waited for a request not yet sent, and
    it left after the run had decided to stop. It is now marked sent as it leaves, and not sent at all
    when the run stopped meanwhile."""
    from types import SimpleNamespace
    from typing import Any

    from batch.running.attempt import TaskAttempts
    from batch.running.context import Stopped, TaskState

    clock, stopped, health, number = await probing()
    state = TaskState(probe=number)
    done: list[tuple[str, str]] = []
    sent: list[str] = []

    async def published() -> None:  # the store takes its time: the limit passes meanwhile
        clock.now += 61
        await health.watch()  # the probe is not sent yet: the limit gives up
        assert stopped

    async def send(*args: Any) -> None:
        sent.append("sent")

    log = SimpleNamespace(
        sent=lambda *a: None, published=published, done=lambda r, o, **k: done.append((r, o))
    )
    ctx = SimpleNamespace(
        log=log, health=health, stopping=lambda: bool(stopped), client=SimpleNamespace(send=send)
    )
    attempts = TaskAttempts(ctx)  # type: ignore[arg-type]
    with pytest.raises(Stopped):
        await attempts._send(SimpleNamespace(id="t", endpoint="e"), None, None, "t/r.1", state)  # type: ignore[arg-type]
    assert sent == [] and done == [("t/r.1", "unsent")]
