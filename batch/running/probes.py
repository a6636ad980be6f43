"""When an outage's next probe goes: pure arithmetic over the time left and the probes left.

The doubling schedule (0.25 s, 0.5 s, 1 s ... up to 30 s apart) spares a service that is down, and finds
one that comes back in a time of the order of its outage. It is the budget: an outage never sends more
probes before its limit than this schedule would. A run that meets a partial outage at its very start
(three requests in four answered 503) cannot tell it from a dead service after its first failures; its
probes, one at a time, fail as often as its requests, and the doubling waits reached 30 s before an
answer came (30 s or more in one run in 55, its first 14 requests failed; 90 s or more in one in 100).
So `health.py` first sends quick probes (`PROBE_FIRST` apart) while the failures in a row are too few to
tell: half as many as the schedule sends `PROBE_MAX` apart before the limit (none for a limit of 62 s or
less, where the schedule is all doubling), and pays for them here: the later waits of a long outage grow
past `PROBE_MAX` (about twice it), as far as it takes to keep to the budget. That is resilience4j's
half-open state, where several calls judge a service, not one; here they go one after another, from the
doubling schedule's fixed count.
"""

from __future__ import annotations

import math

PROBE_FIRST = 0.25
PROBE_MAX = 30.0


def _doubling() -> int:
    count, wait = 0, PROBE_FIRST
    while wait < PROBE_MAX:
        count, wait = count + 1, wait * 2
    return count


DOUBLING = _doubling()  # the schedule's probes after waits below PROBE_MAX: 7 (0.25 s ... 16 s)


def probes_within(seconds: float, first: float = PROBE_FIRST, longest: float = PROBE_MAX) -> int:
    """How many probes a schedule sends before `seconds` have passed: the first after `first`, each
    wait twice the last, `longest` at most (a probe due at `seconds` itself is not sent: the limit is
    reached first)."""
    count, at, wait = 0, 0.0, min(first, longest)
    while wait < longest:
        if at + wait >= seconds:
            return count
        at, count, wait = at + wait, count + 1, min(longest, wait * 2)
    left = seconds - at
    return count + max(0, math.ceil(left / longest) - 1)


def quick_probes(seconds: float) -> int:
    """The quick probes an outage may send first: half of those the doubling schedule sends `PROBE_MAX`
    apart within `seconds` (after the probes of its doubling waits, which are all kept). None within a
    62 s limit: there, the schedule is all doubling waits."""
    return max(0, probes_within(seconds) - DOUBLING) // 2


def next_wait(seconds: float, probes: int, doubled: float) -> float:
    """The wait before the next probe, of an outage that may send `probes` more within `seconds`:
    `doubled` (the last wait doubled), `PROBE_MAX` at most, where the doubling schedule from there keeps
    to that budget; otherwise capped higher, at the least cap that keeps to it. With no probe left, a
    wait past the limit: none is sent."""
    if probes <= 0:
        return max(doubled, seconds)

    def keeps_to_it(longest: float) -> bool:
        return probes_within(seconds, min(doubled, longest), longest) <= probes

    low, high = PROBE_MAX, max(PROBE_MAX, seconds)
    if keeps_to_it(low):
        return min(doubled, low)
    if not keeps_to_it(high):  # too few left for doubling waits (probes let through but never sent)
        return max(doubled, seconds / (probes + 1))  # spread evenly to the limit
    for _ in range(50):  # the least cap that keeps to the budget, to a part in 2**50
        middle = (low + high) / 2
        low, high = (low, middle) if keeps_to_it(middle) else (middle, high)
    return min(doubled, high)
