"""Rate pacing (--rpm, --tpm) and adaptive concurrency (--concurrency auto): the arithmetic on a fake clock,
then end to end against a simulator that enforces the limits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
import anyio
import pytest

from batch.running.limits import SAFETY, AdaptiveLimit, RatePacer
from batch.simulator import SimConfig, running_simulator, simulator_in_thread
from tests.conftest import FAST, KEY, Outcome, env_for, results


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rpm_spaces_requests_evenly_just_under_the_limit() -> None:
    clock = Clock()
    pacer = RatePacer(rpm=600, tpm=None, clock=clock)
    waits = [pacer.book(0) for _ in range(5)]  # five requests asked for at once
    gap = 60 / (600 * SAFETY)
    assert waits == pytest.approx([0, gap, 2 * gap, 3 * gap, 4 * gap])
    clock.now += 10  # after a quiet spell, the next one goes at once (no catching up in a burst)
    assert pacer.book(0) == 0
    assert pacer.book(0) == pytest.approx(gap)


def test_any_minute_holds_at_most_the_rpm_limit() -> None:
    clock = Clock()
    pacer = RatePacer(rpm=120, tpm=None, clock=clock)
    sent = []
    for _ in range(400):
        clock.now += pacer.book(0)
        sent.append(clock.now)
    worst = max(sum(1 for t in sent if start <= t < start + 60) for start in sent)
    assert 118 <= worst <= 120


def test_tpm_pays_for_each_requests_tokens_and_corrects_by_usage() -> None:
    clock = Clock()
    pacer = RatePacer(rpm=None, tpm=6000, clock=clock)
    per_token = 60 / (6000 * SAFETY)
    assert pacer.book(1000) == 0
    assert pacer.book(1000) == pytest.approx(1000 * per_token)  # waits for the first one's tokens
    pacer.correct(estimated=1000, actual=200)  # the second used far less than booked
    assert pacer.book(10) == pytest.approx(1200 * per_token)


@pytest.mark.anyio
async def test_adaptive_limit_finds_a_hard_limit_and_follows_it_down_and_up() -> None:
    clock = Clock()
    limit = AdaptiveLimit(start=2, ceiling=100, clock=clock)
    limit.waiting = 1  # a backlog of work: the limit is what holds it back

    async def answer() -> None:
        started = await limit.acquire()
        clock.now += 0.01
        limit.answered(started)
        limit.release()

    async def refuse() -> None:
        clock.now += 0.001  # sent after whatever came before
        started = await limit.acquire()
        clock.now += 0.01
        limit.throttled(started)
        limit.release()

    async def answers_until_growth() -> int:
        count, before = 0, limit.limit
        while limit.limit == before:
            await answer()
            count += 1
        return count

    for _ in range(10):  # slow start: +1 per answer
        await answer()
    assert limit.limit == 12
    await refuse()  # slow start overshot
    assert limit.limit == 11
    assert await answers_until_growth() == 11  # a round at 11, then a probe to 12...
    await refuse()  # ...refused: back to 11, and twice as patient
    assert limit.limit == 11 and limit.cuts == 2
    assert await answers_until_growth() == 22
    await refuse()
    assert await answers_until_growth() == 44  # patience 4: a hard limit costs ever fewer refusals

    clock.now += 1.0
    await refuse()  # the probe to 12 is refused: back to 11...
    await refuse()  # ...then 11, which worked, is refused within a few round trips: the capacity fell
    assert limit.limit == 8
    assert await answers_until_growth() == 8  # cut to 3/4, and probing eagerly again
    assert await answers_until_growth() == 9
    await answers_until_growth()
    assert limit.limit == 11
    await answers_until_growth()  # 11, refused before, passes a whole round now:
    assert limit.limit == 12
    await answer()  # the capacity grew: slow start again, +1 per answer
    assert limit.limit == 13


def test_an_idle_limit_does_not_grow() -> None:
    limit = AdaptiveLimit(start=4)
    limit.in_flight = 1  # one request in flight, nobody waiting: the limit is not in use
    limit.answered(0.0)
    assert limit.limit == 4


@pytest.mark.anyio
async def test_adaptive_limit_makes_extra_requests_wait_for_room() -> None:
    limit = AdaptiveLimit(start=2)
    await limit.acquire()
    await limit.acquire()
    entered = []

    async def third() -> None:
        await limit.acquire()
        entered.append(True)

    async with anyio.create_task_group() as group:
        group.start_soon(third)
        await anyio.wait_all_tasks_blocked()
        assert entered == []  # two in flight: the third waits
        limit.release()
    assert entered == [True]


def chat_manifest(write: Callable[..., Path], count: int) -> Path:
    return write(
        "tasks:\n"
        + "".join(f"  - {{kind: chat, model: m, prompt: q {i}, max_tokens: 50}}\n" for i in range(count))
    )


def test_rpm_keeps_under_an_enforced_limit(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = chat_manifest(write, 25)
    with simulator_in_thread(SimConfig(api_key=KEY, rpm=1200)) as sim:
        outcome = cli(
            "run",
            manifest,
            "--out",
            tmp_path / "out",
            *FAST,
            "--concurrency",
            "16",
            "--rpm",
            "1200",
            env=env_for(sim),
        )
        statuses = sim.state.status_counts()
    assert outcome.code == 0, outcome.err
    assert statuses == {200: 25}  # not a single 429


def test_tpm_keeps_under_an_enforced_limit(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = chat_manifest(write, 12)  # each estimated at about 55 tokens (prompt + max_tokens 50)
    with simulator_in_thread(SimConfig(api_key=KEY, tpm=30_000)) as sim:
        outcome = cli(
            "run",
            manifest,
            "--out",
            tmp_path / "out",
            *FAST,
            "--concurrency",
            "8",
            "--tpm",
            "30000",
            env=env_for(sim),
        )
        statuses = sim.state.status_counts()
    assert outcome.code == 0, outcome.err
    assert statuses == {200: 12}


def test_without_pacing_the_enforced_limit_answers_429(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """The control: the same simulator does refuse a run that does not pace itself. A 429 spends no
    attempt; the deadline ends the tasks' retries at once (left pending), or they wait out the minute."""
    manifest = chat_manifest(write, 25)
    with simulator_in_thread(SimConfig(api_key=KEY, rpm=10, retry_after=0)) as sim:
        outcome = cli(
            "run",
            manifest,
            "--out",
            tmp_path / "out",
            *FAST,
            "--concurrency",
            "16",
            "--task-deadline",
            "0.1",
            env=env_for(sim),
        )
        assert sim.state.status_counts().get(429, 0) >= 10
    assert outcome.code == 69 and "left pending, rate limited" in outcome.err, outcome.err


def test_auto_concurrency_finds_a_hidden_limit_with_few_refusals(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """Slow start overshoots once, by as much as arrives before the first 429 comes back: on a loaded
    machine, where the simulator's thread waits for the GIL, that burst alone has been 26 refusals. The
    claim is about what follows: at the limit, about one refusal per probe."""
    manifest = chat_manifest(write, 300)
    with simulator_in_thread(SimConfig(api_key=KEY, max_inflight=6, latency=0.02)) as sim:
        outcome = cli(
            "run",
            manifest,
            "--out",
            tmp_path / "out",
            *FAST,
            "--concurrency",
            "auto",
            "--max-attempts",
            "20",
            env=env_for(sim),
        )
        statuses = [record.status for record in sim.state.records]
        peak = sim.state.max_inflight_seen
    assert outcome.code == 0, outcome.err
    assert len(results(tmp_path / "out")) == 300
    assert peak >= 6  # it reached the limit
    after_start = statuses[statuses.index(200, statuses.index(429)) + 60 :]  # 10 rounds after the first 429
    assert after_start.count(429) <= 0.1 * after_start.count(200)  # and did not keep hammering past it


@pytest.mark.anyio
async def test_simulator_limits_can_change_while_it_runs() -> None:
    async with running_simulator(SimConfig(api_key=KEY, max_inflight=4)) as sim:
        url = f"http://127.0.0.1:{sim.port}/_sim/limits"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json={"max_inflight": 9}) as response:
                assert response.status == 200 and (await response.json()) == {"max_inflight": 9}
            async with session.post(url, json={"nothing": 1}) as response:
                assert response.status == 400
        assert sim.state.max_inflight == 9


@pytest.mark.anyio
async def test_a_patient_limit_still_probes_at_least_every_second() -> None:
    clock = Clock()
    limit = AdaptiveLimit(start=4, clock=clock)
    limit.waiting = 1

    async def step(refused: bool) -> None:
        clock.now += 0.001
        started = await limit.acquire()
        clock.now += 0.001
        limit.throttled(started) if refused else limit.answered(started)
        limit.release()

    await step(refused=True)  # slow start ends at 3
    for _ in range(4):  # four refused probes: patience 2, 4, 8, 16
        while limit.limit == 3:
            await step(refused=False)
        await step(refused=True)
    assert limit.limit == 3
    for _ in range(3):  # a round passes quickly: patience 16 holds the next probe back
        await step(refused=False)
    assert limit.limit == 3
    clock.now += 1.5  # but once a second has passed, one more round is enough
    for _ in range(3):
        await step(refused=False)
    assert limit.limit == 4
