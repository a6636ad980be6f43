"""When an outage's next probe goes: the doubling schedule's count, and the waits that keep to it."""

from __future__ import annotations

import pytest

from batch.running.probes import PROBE_MAX, next_wait, probes_within, quick_probes


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("seconds", "probes"),
    [
        (0.25, 0),
        (0.26, 1),
        (0.6, 1),
        (4, 4),
        (61.75, 7),
        (61.8, 8),
        (91.8, 9),
        (900, 35),
        (1e9, 7 + 33333333 - 1),
    ],
)
def test_the_doubling_schedule_sends_its_probes_before_the_limit_only(seconds: float, probes: int) -> None:
    """0.25 s, 0.75 s, 1.75 s ... 61.75 s, then every 30 s: a probe due at the limit itself is not sent
    (the run gives up first); a limit of a billion seconds is counted, not walked."""
    assert probes_within(seconds) == probes


@pytest.mark.timeout(10)
def test_the_next_wait_doubles_within_the_budget_and_stretches_beyond_it() -> None:
    """With the probes of the doubling schedule left, the wait doubles (30 s at most); with fewer, the
    later waits stretch so that the rest fit before the limit; with none, the next is past the limit."""
    assert next_wait(900, probes_within(900), 0.5) == 0.5
    assert next_wait(900, probes_within(900), 64) == PROBE_MAX
    at, left, wait, waits = 0.0, 5, 32.0, []
    while at + (wait := next_wait(600 - at, left, wait * 2)) < 600:  # 5 probes left, 10 minutes
        at, left = at + wait, left - 1
        waits.append(wait)
    assert len(waits) <= 5 and waits[0] == 64 and max(waits) > 64, waits
    assert next_wait(100, 0, 0.5) >= 100
    # two left for 100 s, too few for doubling waits from 0.5 s (probes let through, never sent): evenly
    assert next_wait(100, 2, 0.5) == pytest.approx(100 / 3)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("seconds", "quick"), [(4, 0), (62, 0), (120, 1), (300, 4), (900, 14)])
def test_the_quick_probes_are_half_of_those_the_schedule_sends_30_s_apart(seconds: float, quick: int) -> None:
    """A limit of a minute keeps the doubling schedule as it was (all of it doubling waits); the default
    900 s sends 28 probes 30 s apart, after 7 doubling waits: 14 of them may go quickly first."""
    assert quick_probes(seconds) == quick
