"""The shards as Dramatiq messages on Redis. redis' and Dramatiq's exceptions are translated here and
nowhere else (QueueError, exit 78, as the shared limits refuse an unreachable Redis).

Dramatiq's RedisBroker keeps each fetched message in a per-worker "acks" set and requeues the messages of a
worker whose heartbeat is older than `heartbeat_timeout` (in its "maintenance", which runs on a share of
the commands sent). Two of its habits are adjusted here, each for a shard that runs for minutes or hours:

* A heartbeat is only sent with a command, and Dramatiq's own Worker stops fetching (so stops beating)
  while its prefetched messages run (dramatiq#692: a live worker's message requeued). `beat()` is called
  by the worker while a shard runs.
* Maintenance runs on every command rather than on 0.1% of them, so that a dead worker's shard is taken
  over within about `heartbeat_timeout` rather than a thousand polls later. It is cheap: a sorted-set
  range, and work only for a dead worker.

We use Dramatiq's broker and consumer, not its Worker: a shard is one message run for a long time, acked
when done, requeued at once on a graceful stop, with no time limit and no retries with backoff (the
engine retries requests; a shard that stops is requeued whole, and resumes from its directory).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker
from dramatiq.errors import BrokerConnectionError

from batch.cluster.plan import Shard
from batch.defaults import DEFAULT_HEARTBEAT_TIMEOUT
from batch.errors import ConfigError

log = logging.getLogger("batch.cluster.queue")

NAMESPACE = "maas-batch"
QUEUES = f"{NAMESPACE}:queues"  # the names of the queues submit has filled
ACTOR = "maas_batch_shard"
DEFAULT_POLL = 1.0  # seconds, the longest an idle worker waits between two looks at a queue


class QueueError(ConfigError):
    """Redis cannot be reached or refused a command (the URL is never in the message: it may hold a
    password)."""


@dataclass(frozen=True)
class QueueSettings:
    url: str = field(repr=False)  # redis://[:password@]host:port/db
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    poll: float = DEFAULT_POLL


@dataclass
class Taken:
    """A shard fetched from a queue: this worker's until acked or requeued (or until its heartbeat stops)."""

    queue: str
    shard: Shard
    message: Any  # dramatiq's MessageProxy


@contextmanager
def _translated(doing: str) -> Iterator[None]:
    try:
        yield
    except (redis.RedisError, BrokerConnectionError) as exc:
        raise QueueError(f"Redis: cannot {doing}: {type(exc).__name__}: {_without_url(exc)}") from None


def _without_url(exc: BaseException) -> str:
    text = str(exc)
    return text if "@" not in text else "(details withheld: they name the URL)"


class ShardQueue:
    """Shards put on, taken off, acked or requeued; one per process (its broker id is its heartbeat)."""

    def __init__(self, settings: QueueSettings) -> None:
        self.settings = settings
        with _translated("connect"):
            self.broker = RedisBroker(  # type: ignore[no-untyped-call]
                url=settings.url,
                middleware=[],  # no time limit, no retries, no age limit: see the module's docstring
                namespace=NAMESPACE,
                heartbeat_timeout=max(1, int(settings.heartbeat_timeout * 1000)),
                maintenance_chance=MAINTENANCE_SCALE,
            )
        self.client: redis.Redis = self.broker.client
        self._consumers: dict[str, Any] = {}

    def ping(self) -> None:
        with _translated("connect"):
            self.client.ping()

    def put(self, queue: str, shards: Iterable[Shard]) -> int:
        """Queue each shard as a message of `queue`; returns how many."""
        count = 0
        with _translated("queue the shards"):
            self.client.sadd(QUEUES, queue)
            for shard in shards:
                message: dramatiq.Message[Any] = dramatiq.Message(
                    queue_name=queue, actor_name=ACTOR, args=(), kwargs=shard.as_dict(), options={}
                )
                self.broker.enqueue(message)
                count += 1
        return count

    def names(self) -> list[str]:
        with _translated("list the queues"):
            found = self.client.smembers(QUEUES)
        return sorted(name.decode() if isinstance(name, bytes) else str(name) for name in found)

    def size(self, queue: str) -> int:
        """Messages of `queue` not acked yet: queued, or taken by a worker (alive or dead)."""
        with _translated("count a queue"):
            return int(self.broker.do_qsize(queue))

    def beat(self, queue: str) -> None:
        """Tell Redis this worker is alive (any command does), so its shard is not taken over."""
        self.size(queue)

    def take(self, queue: str) -> Taken | None:
        """A shard of `queue`, or None after waiting up to `poll` seconds for one."""
        consumer = self._consumers.get(queue)
        if consumer is None:
            timeout = max(1, int(self.settings.poll * 1000))
            consumer = self._consumers[queue] = self.broker.consume(queue, prefetch=1, timeout=timeout)
        with _translated("fetch a shard"):
            message = next(consumer)
        if message is None:
            return None
        return Taken(queue, Shard.from_dict(message.kwargs), message)

    def ack(self, taken: Taken) -> None:
        with _translated("acknowledge a shard"):
            self._consumers[taken.queue].ack(taken.message)

    def requeue(self, taken: Taken) -> None:
        """Back on its queue at once, for any worker (a graceful stop, or a shard this one cannot run)."""
        with _translated("requeue a shard"):
            self._consumers[taken.queue].requeue([taken.message])

    def close(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()
        self.broker.close()
