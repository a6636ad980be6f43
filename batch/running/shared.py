"""Limits shared through Redis by every run on one API key and endpoint (`--redis URL`).

Everything lives under `maas:<key id>:<endpoint>:`, where the key id is the first 16 hex digits of the
key's SHA-256: the key itself, or any piece of it, never goes to Redis.
- `rate` (limits' keys): requests in `limits`' moving window, an exact log of timestamps, over a window of
  a few seconds (see `request_window`) so that a minute's budget does not go out in one burst; tokens in
  its sliding window counter over a minute (two counters: a log would hold one entry per token).
- `inflight`: a sorted set of leases, one per request in flight, scored by the moment it lapses (Redis'
  own clock). A run renews its leases every LEASE_SECONDS / 3, so a killed run's slots come back.
- `cooldown`: set for as long as a 429's Retry-After asks (PX expiry); every run waits it out.
- `auto`: the concurrency that `--concurrency auto` settled on, one value for all the runs.
Nothing about a task's results or the ledger is there.

Redis is an aid: the first error it gives mid-run switches this run to its local limits (limits.py),
with one WARNING, for the rest of the run.
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
from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError

from batch.errors import ConfigError

log = logging.getLogger(__name__)

SAFETY = 0.99  # as limits.SAFETY: aim just under the limit
LEASE_SECONDS = 15.0  # a killed run's slots come back after this long
POLL_SECONDS = 0.05  # how often a run waiting for a slot in flight asks again
LATE = 0.01  # seconds after a window frees a place before taking it: the server's clock is not ours
TIMEOUT = 2.0  # seconds for one Redis command; longer is Redis gone
AUTO_TTL_MS = 3_600_000  # a learnt concurrency is forgotten after an hour without news
ERRORS = (RedisError, StorageError, OSError, TimeoutError)

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
    """A Redis URL for a message: its password left out."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = (f"{parts.username}:***@" if parts.username else ":***@") + host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def request_window(rpm: float) -> RateLimitItemPerSecond:
    """`rpm` as N requests per W seconds: the shortest window (from 1 s) that loses under 5% of the rate
    to rounding, so that the budget is spread over the minute rather than spent in its first second."""
    per_second = rpm * SAFETY / 60
    for seconds in range(1, 61):
        allowed = math.floor(per_second * seconds)
        if allowed >= 1 and allowed >= 0.95 * per_second * seconds:
            return RateLimitItemPerSecond(allowed, seconds)
    return RateLimitItemPerSecond(max(1, math.floor(rpm * SAFETY)), 60)


@dataclass(frozen=True)
class SharedConfig:
    """Where the shared limits live, and whose they are."""

    url: str = field(repr=False)  # may hold a password
    key_id: str  # key_id(api key)
    lease_seconds: float = LEASE_SECONDS


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
        self.down = False
        # The run's own wait (its stop cuts it short) and its stop; the Runner sets both.
        self.sleep: Callable[[float], Awaitable[None]] = anyio.sleep
        self.stopping: Callable[[], bool] = lambda: False
        self._prefix = f"maas:{config.key_id}"
        url = config.url
        self._client: Any = aioredis.Redis.from_url(
            url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, decode_responses=True
        )
        self._storage = RedisStorage(
            "async+" + url,
            implementation="redispy",
            key_prefix=f"{self._prefix}:rate",
            wrap_exceptions=True,
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
        )
        self._requests = request_window(rpm) if rpm else None
        self._tokens = RateLimitItemPerSecond(max(1, math.floor(tpm * SAFETY)), 60) if tpm else None
        self._moving = MovingWindowRateLimiter(self._storage)
        self._sliding = SlidingWindowCounterRateLimiter(self._storage)
        self._lease = self._client.register_script(_LEASE)
        self._renew = self._client.register_script(_RENEW)
        self._run = secrets.token_hex(4)
        self._serial = itertools.count()
        self._leases: dict[str, set[str]] = {}  # endpoint -> members held by this run
        self._locks: dict[str, anyio.Lock] = {}
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
        with anyio.CancelScope(shield=True), anyio.move_on_after(TIMEOUT):
            with contextlib.suppress(*ERRORS):
                await self._client.aclose()
            limits_client: Any = getattr(self._storage.bridge, "storage", None)  # limits' own client
            if limits_client is not None:
                with contextlib.suppress(*ERRORS):
                    await limits_client.aclose()

    def _key(self, endpoint: str, what: str) -> str:
        return f"{self._prefix}:{endpoint}:{what}"

    async def _guard(self, call: Callable[[], Awaitable[T]], fallback: T) -> T:
        """Redis' answer, or `fallback` once Redis has failed (said once, as a WARNING)."""
        if self.down:
            return fallback
        try:
            with anyio.fail_after(TIMEOUT * 2):
                return await call()
        except ERRORS as exc:
            self._gone(exc)
            return fallback

    def _gone(self, exc: BaseException) -> None:
        if not self.down:
            self.down = True
            log.warning(
                "Redis at %s failed (%s: %s): this run goes on with its own limits, no longer shared",
                shown_url(self.config.url),
                type(exc).__name__,
                str(exc)[:200],
            )

    # -- requests and tokens per minute ---------------------------------------------------------

    async def pace(self, endpoint: str, tokens: int) -> None:
        """Wait until the shared windows take one more request of about `tokens` tokens, and book it.
        Tokens this run used beyond its bookings (see `correct`) are booked with it."""
        if self._requests is not None:
            await self._take(self._moving, self._requests, (endpoint, "requests"), 1)
        if self._tokens is not None:
            debt = self._token_debt.pop(endpoint, 0)
            cost = max(1, min(self._tokens.amount, tokens + debt))
            if tokens + debt < 1:
                self._token_debt[endpoint] = tokens + debt - 1  # a credit left for the next booking
            await self._take(self._sliding, self._tokens, (endpoint, "tokens"), cost)

    def correct(self, endpoint: str, estimated: int, actual: int) -> None:
        """The answer used `actual` tokens where `estimated` were booked. A window counter cannot give
        tokens back, and a booking past the limit would be refused: the difference, either way, is
        carried into this run's next booking on the endpoint."""
        if self._tokens is not None and not self.down:
            self._token_debt[endpoint] = self._token_debt.get(endpoint, 0) + actual - estimated

    async def _take(
        self,
        limiter: MovingWindowRateLimiter | SlidingWindowCounterRateLimiter,
        item: RateLimitItemPerSecond,
        identifiers: tuple[str, str],
        cost: int,
    ) -> None:
        while not (self.down or self.stopping()):
            if await self._guard(lambda: limiter.hit(item, *identifiers, cost=cost), True):
                return
            stats = await self._guard(lambda: limiter.get_window_stats(item, *identifiers), None)
            if stats is None:
                return
            if isinstance(limiter, MovingWindowRateLimiter):
                wait = stats.reset_time - time.time()  # the oldest request leaves the window
            else:  # the counter's previous window fades evenly: wait for the tokens missing to fade
                wait = (cost - stats.remaining) / item.amount * item.get_expiry()
            await self.sleep(max(0.0, wait) + LATE * (1 + random.random()))

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
        while not self.down:
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
