"""Limits shared through Redis by every run on one API key and endpoint (`--redis URL`).

Everything lives under `maas:<key id>:<endpoint>:`, where the key id is the first 16 hex digits of the
key's SHA-256: the key itself, or any piece of it, never goes to Redis.
- `requests`, `tokens`: pyrate-limiter's GCRA state (one theoretical arrival time each, in a hash, moved by
  its Lua script): requests spaced evenly, a minute's budget never spent in its first second.
- `inflight`: a sorted set of leases, one per request in flight, scored by the moment it lapses (Redis'
  own clock). A run renews its leases every LEASE_SECONDS / 3, so a killed run's slots come back.
- `cooldown`: set for as long as a 429's Retry-After asks (PX expiry); every run waits it out.
- `auto`: the concurrency that `--concurrency auto` settled on, one value for all the runs.
Nothing about a task's results or the ledger is there.

Redis is an aid: the first error it gives mid-run switches this run to its local limits (limits.py),
with one WARNING. Every RETRY_SECONDS one call asks Redis again (the others keep to the local limits
meanwhile); once it answers, the run shares its limits again, with one more WARNING. A restarted Redis
(empty, or not) would otherwise have left every run on the key to its own limits all night, together
asking the key for several times its rate.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import redis.asyncio as aioredis
from pyrate_limiter import GCRA, Rate, RedisStateStore
from pyrate_limiter.abstracts.algorithm import Decision
from redis.exceptions import RedisError

from batch.errors import ConfigError

log = logging.getLogger(__name__)

SAFETY = 0.97  # aim under the limit: requests sent on time by all runs still reach it a little bunched
BURST = 1  # requests that may go at once (GCRA's burst): none, the runs' requests are spaced evenly
LEASE_SECONDS = 15.0  # a killed run's slots come back after this long
RETRY_SECONDS = 10.0  # a run on its own limits since Redis failed asks it again this often
POLL_SECONDS = 0.05  # how often a run waiting for a slot in flight asks again
LATE = 0.001  # up to this many seconds of jitter on a wait, so that waiting runs do not ask in step
TIMEOUT = 2.0  # seconds for one Redis command; longer is Redis gone
CONNECTIONS = 32  # a run's connections to Redis; a command takes well under a millisecond on a LAN
# How long a command waits for a free connection. Longer than TIMEOUT: every command in hand ends within
# TIMEOUT, so a long wait means a slow Redis far away, not a gone one (that is not a reason to stop sharing)
POOL_WAIT = 30.0
AUTO_TTL_MS = 3_600_000  # a learnt concurrency is forgotten after an hour without news
ERRORS = (RedisError, OSError, TimeoutError)
GCRA_ = GCRA()  # stateless: one for every bucket

T = TypeVar("T")

# Take a lease if fewer than the limit are in flight (leases past their moment are dropped first).
# KEYS: leases, auto; ARGV: lease ms, member, limit. Returns {taken, limit, in flight}.
_LEASE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(redis.call('GET', KEYS[2]) or ARGV[3])
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return {1, limit, count + 1}
end
return {0, limit, count}
"""

# Push the leases named back to a full term from now. KEYS: leases; ARGV: lease ms, members...
_RENEW = """
local t = redis.call('TIME')
local until_ = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', until_, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


def key_id(api_key: str) -> str:
    """What Redis knows a key by: 16 hex digits of its SHA-256, from which the key cannot be found."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def shown_url(url: str) -> str:
    """A Redis URL for a message: its password left out; host and port as written (a port that is no
    number is what the message is about)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    netloc = (f"{parts.username}:***@" if parts.username else ":***@") + host
    return urlunsplit(parts._replace(netloc=netloc))


def request_rate(rpm: float) -> Rate:
    """`rpm` as GCRA's even spacing: one request every 60 / (rpm * SAFETY) seconds among all the runs,
    never a minute's budget in its first second. Its burst of 2 admits a request up to one interval
    early; `_take` then holds it until its moment (so a late wake-up costs nothing, and no two requests
    go back to back: a service that counts by the second would refuse the second)."""
    return Rate(max(1, math.floor(rpm * SAFETY)), 60_000, burst=2)


def token_rate(tpm: float) -> Rate:
    """`tpm` as GCRA: a tenth of the budget may go at once, the rest flows evenly; any 60 seconds hold
    at most tpm * SAFETY tokens."""
    budget = tpm * SAFETY
    return Rate(max(1, math.floor(budget * 0.9)), 60_000, burst=max(1, math.floor(budget * 0.1)))


@dataclass(frozen=True)
class SharedConfig:
    """Where the shared limits live, and whose they are."""

    url: str = field(repr=False)  # may hold a password
    key_id: str  # key_id(api key)
    lease_seconds: float = LEASE_SECONDS
    retry_seconds: float = RETRY_SECONDS


@dataclass
class Lease:
    """A slot in flight, in Redis (member set) or, once Redis is gone, nowhere."""

    member: str | None
    limit: int  # the shared limit when it was taken
    in_flight: int  # all runs' requests in flight then, this one included
    waited: bool = False  # requests were waiting for a slot: the limit held them back


class SharedLimits:
    """One run's view of the limits it shares with the other runs on its key: each method falls back to
    'no shared limit' (the caller's local limits then hold) once Redis has failed."""

    def __init__(
        self,
        config: SharedConfig,
        rpm: float | None,
        tpm: float | None,
    ) -> None:
        self.config = config
        self._retry_at: float | None = None  # Redis failed: asked again from this moment (monotonic)
        self._probing = False  # a call is asking Redis whether it is back; the others keep away
        # The run's own wait (its stop cuts it short) and its stop; the Runner sets both.
        self.sleep: Callable[[float], Awaitable[None]] = anyio.sleep
        self.stopping: Callable[[], bool] = lambda: False
        self._prefix = f"maas:{config.key_id}"
        url = config.url
        try:
            # A few connections, waited for (up to TIMEOUT) rather than refused: redis-py's default pool
            # raises MaxConnectionsError past 100, and at --concurrency 128 a run fell back to its own limits
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=CONNECTIONS,
                timeout=POOL_WAIT,
                socket_timeout=TIMEOUT,
                socket_connect_timeout=TIMEOUT,
                decode_responses=True,
            )
            self._client: Any = aioredis.Redis.from_pool(pool)  # closes the pool with the client
        except ValueError as exc:  # not a Redis URL
            raise ConfigError(f"--redis {shown_url(url)}: {exc}") from None
        self._requests = request_rate(rpm) if rpm else None
        self._tokens = token_rate(tpm) if tpm else None
        self._lease = self._client.register_script(_LEASE)
        self._renew = self._client.register_script(_RENEW)
        self._run = secrets.token_hex(4)
        self._serial = itertools.count()
        self._leases: dict[str, set[str]] = {}  # endpoint -> members held by this run
        self._locks: dict[str, anyio.Lock] = {}  # endpoint -> the right to ask for a slot in flight
        self._pace_locks: dict[str, anyio.Lock] = {}  # endpoint -> the right to ask for a moment
        self._token_debt: dict[str, int] = {}  # endpoint -> tokens used beyond (or short of) the booking

    async def connect(self) -> None:
        """Make sure Redis answers, before anything is sent; ConfigError (exit 78) if it does not."""
        try:
            with anyio.fail_after(TIMEOUT * 2):
                await self._client.ping()
        except Exception as exc:  # whatever it is, the run cannot share its limits: say so, send nothing
            await self.aclose()
            raise ConfigError(
                f"Redis at {shown_url(self.config.url)} does not answer ({type(exc).__name__}): "
                "start it, or run without --redis (and MAAS_REDIS_URL)"
            ) from None

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(TIMEOUT), contextlib.suppress(*ERRORS):
            await self._client.aclose()

    @property
    def down(self) -> bool:
        """Redis failed and is not to be asked yet (or one call is asking it): the local limits hold."""
        return self._retry_at is not None and (self._probing or time.monotonic() < self._retry_at)

    def _key(self, endpoint: str, what: str) -> str:
        return f"{self._prefix}:{endpoint}:{what}"

    async def _guard(self, call: Callable[[], Awaitable[T]], fallback: T) -> T:
        """Redis' answer, or `fallback` while Redis is down (see `down`). A call made once it is time to
        ask Redis again is the one that asks: its answer means Redis is back."""
        if self.down:
            return fallback
        probe = self._retry_at is not None
        if probe:
            self._probing = True
        try:
            with anyio.fail_after(TIMEOUT * 2):
                if probe:  # the pool's connections are to the Redis that went: each would fail once
                    await self._client.connection_pool.disconnect()
                answer = await call()
        except ERRORS as exc:
            self._gone(exc)
            return fallback
        finally:
            if probe:
                self._probing = False
        if probe:
            self._retry_at = None
            log.warning(
                "Redis at %s answers again: this run shares its limits again", shown_url(self.config.url)
            )
        return answer

    def _gone(self, exc: BaseException) -> None:
        """Redis failed: said once per outage (the calls that fail with it, or ask it again, say nothing)."""
        if self._retry_at is None:
            log.warning(
                "Redis at %s failed (%s: %s): this run goes on with its own limits, no longer shared, "
                "and asks Redis again every %g s",
                shown_url(self.config.url),
                type(exc).__name__,
                str(exc)[:200],
                self.config.retry_seconds,
            )
        self._retry_at = time.monotonic() + self.config.retry_seconds

    # -- requests and tokens per minute ---------------------------------------------------------

    async def pace(self, endpoint: str, tokens: int) -> None:
        """Wait until the shared budgets take one more request of about `tokens` tokens, and book it.
        Tokens this run used beyond its bookings (see `correct`) are booked with it."""
        # One request of this run asks at a time; the others queue here rather than all asking Redis
        # each time a moment frees (and all waking up for it).
        async with self._pace_locks.setdefault(endpoint, anyio.Lock()):
            if self._requests is not None:
                await self._take(self._key(endpoint, "requests"), self._requests, 1, on_time=True)
            if self._tokens is not None:
                owed = tokens + self._token_debt.pop(endpoint, 0)
                cost = max(1, min(self._tokens.burst, owed))  # more than a burst never fits: the rest waits
                if owed != cost:
                    self._token_debt[endpoint] = owed - cost
                await self._take(self._key(endpoint, "tokens"), self._tokens, cost)

    def correct(self, endpoint: str, estimated: int, actual: int) -> None:
        """The answer used `actual` tokens where `estimated` were booked. GCRA cannot give tokens back,
        and booking more at once could be refused: the difference, either way, is carried into this
        run's next booking on the endpoint."""
        if self._tokens is not None and not self.down:
            self._token_debt[endpoint] = self._token_debt.get(endpoint, 0) + actual - estimated

    async def _take(self, key: str, rate: Rate, cost: int, on_time: bool = False) -> None:
        """Book `cost` with GCRA, waiting as it says. `on_time`: once admitted, wait for the moment
        GCRA's state had the request due (known from the refusal before it): a burst of 2 admits it up
        to one interval early, so a late wake-up loses nothing, and the request still goes on time."""
        store: Any = RedisStateStore(self._client, key)  # untyped: check(algorithm, rates, now ms, weight)
        emission = rate.interval / 1000 / rate.limit
        due = None
        while not (self.down or self.stopping()):
            now_ms = int(time.time() * 1000)
            decision: Decision | None = await self._guard(
                lambda now_ms=now_ms: store.check(GCRA_, [rate], now_ms, cost),  # type: ignore[misc]
                None,
            )
            if decision is None or decision.allowed:
                if on_time and decision is not None:
                    if due is None:  # admitted at once: its moment is the state's, less its own share
                        state = await self._guard(lambda: store.read(GCRA_, [rate]), (0,))
                        due = state[0] / 1_000_000 - cost * emission
                    if due > time.time():
                        await self.sleep(due - time.time())
                return
            wait_ms = decision.retry_after_ms if decision.retry_after_ms is not None else 1000
            # allowed from TAT - (burst - cost) intervals: the request is due at TAT
            due = (now_ms + wait_ms) / 1000 + (rate.burst - cost) * emission
            await self.sleep(wait_ms / 1000)

    # -- requests in flight -----------------------------------------------------------------------

    async def acquire(self, endpoint: str, limit: int, is_auto: bool) -> Lease:
        """A slot among all runs' requests in flight (at most `limit`, or the shared `auto` limit);
        waits for one. Once Redis is gone, a lease of nothing: the local limits hold."""
        lock = self._locks.setdefault(endpoint, anyio.Lock())
        waited = False
        async with lock:  # one poller per endpoint in this run; the others queue here
            while not self.stopping():
                member = f"{self._run}:{next(self._serial)}"
                keys = [self._key(endpoint, "inflight"), self._key(endpoint, "auto" if is_auto else "-")]
                args: list[str | int] = [int(self.config.lease_seconds * 1000), member, limit]
                answer = await self._guard(
                    lambda keys=keys, args=args: self._lease(keys=keys, args=args),  # type: ignore[misc]
                    None,
                )
                if answer is None:
                    return Lease(None, limit, 0)
                taken, shared_limit, count = (int(value) for value in answer)
                if taken:
                    self._leases.setdefault(endpoint, set()).add(member)
                    return Lease(member, shared_limit, count, waited or lock.statistics().tasks_waiting > 0)
                waited = True
                await self.sleep(POLL_SECONDS * (0.5 + random.random()))
            return Lease(None, limit, 0)  # stopping: the caller sees it and sends nothing

    async def release(self, endpoint: str, lease: Lease) -> None:
        if lease.member is None:
            return
        self._leases.get(endpoint, set()).discard(lease.member)
        key = self._key(endpoint, "inflight")
        with anyio.CancelScope(shield=True):  # a cancelled request still gives its slot back
            await self._guard(lambda: self._client.zrem(key, lease.member), 0)

    async def keep_leases(self) -> None:
        """Renew this run's leases for as long as it runs (a task of the run's background group)."""
        while True:
            await anyio.sleep(self.config.lease_seconds / 3)
            for endpoint, members in list(self._leases.items()):
                if members:
                    keys = [self._key(endpoint, "inflight")]
                    args: list[str | int] = [int(self.config.lease_seconds * 1000), *members]
                    await self._guard(
                        lambda keys=keys, args=args: self._renew(keys=keys, args=args),  # type: ignore[misc]
                        0,
                    )

    async def learnt(self, endpoint: str, limit: int) -> None:
        """`--concurrency auto` moved the limit: every run takes it up at its next lease."""
        key = self._key(endpoint, "auto")
        await self._guard(lambda: self._client.set(key, limit, px=AUTO_TTL_MS), None)

    # -- cool-downs -------------------------------------------------------------------------------

    async def cool_down(self, endpoint: str, seconds: float) -> None:
        """A 429 asked to wait `seconds`: every run on the key and endpoint waits (the longest asked)."""
        key, ms = self._key(endpoint, "cooldown"), max(1, int(seconds * 1000))

        async def set_longest() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(key, 1, px=ms, nx=True)
                pipe.pexpire(key, ms, gt=True)
                await pipe.execute()

        await self._guard(set_longest, None)

    async def cooled(self, endpoint: str) -> None:
        """Wait out a shared cool-down, if one is on."""
        key = self._key(endpoint, "cooldown")
        while not self.stopping():
            left_ms = await self._guard(lambda: self._client.pttl(key), -2)
            if left_ms <= 0:
                return
            await self.sleep(left_ms / 1000 + LATE * random.random())
