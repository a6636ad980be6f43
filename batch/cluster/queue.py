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

`look()` reads a queue as Dramatiq keeps it (the message ids listed in `<queue>`, fetched ones in each
worker's `__acks__.<worker>.<queue>` set, their bodies in `<queue>.msgs`, the last heartbeat of each
broker in `__heartbeats__`) with plain reads, so that looking does not count as a heartbeat. Every broker
that sends a command beats (submit too), so workers also say who they are in WORKERS, with their
heartbeat timeout: a worker is alive while its heartbeat is younger than that.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
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
from batch.values import without_password

log = logging.getLogger("batch.cluster.queue")

NAMESPACE = "maas-batch"
QUEUES = f"{NAMESPACE}:queues"  # the names of the queues submit has filled
ACTOR = "maas_batch_shard"
WORKERS = f"{NAMESPACE}:workers"  # broker id -> {"host", "pid", "heartbeat_timeout", "started"}
HEARTBEATS = f"{NAMESPACE}:__heartbeats__"  # Dramatiq's: broker id -> last heartbeat (ms)
FORGET_AFTER = 10  # heartbeat timeouts of silence after which a worker's entry in WORKERS is dropped
DEFAULT_POLL = 1.0  # seconds, the longest an idle worker waits between two looks at a queue
CONNECT_TIMEOUT = 10.0  # seconds to reach Redis: an unreachable host is said, not waited for minutes


class QueueError(ConfigError):
    """Redis cannot be reached or refused a command (the URL is never in the message: it may hold a
    password)."""


@dataclass(frozen=True)
class QueueSettings:
    url: str = field(repr=False)  # redis://[:password@]host:port/db
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    poll: float = DEFAULT_POLL
    # Put the shards of workers silent past heartbeat_timeout back on their queue, as Dramatiq does on
    # each command: for workers only, which share one timeout. submit, resume, retry-failed and status
    # do not, or their own timeout (the default) would take a live worker with a longer one for dead.
    maintenance: bool = False


@dataclass
class Taken:
    """A shard fetched from a queue: this worker's until acked or requeued (or until its heartbeat stops)."""

    queue: str
    shard: Shard
    message: Any  # dramatiq's MessageProxy


@dataclass(frozen=True)
class QueueState:
    """A queue as Redis holds it now (see the module's docstring)."""

    queued: list[Shard]  # waiting for a worker, in queue order
    taken: dict[str, list[Shard]]  # by broker id: fetched and not acked
    alive: dict[str, dict[str, Any]]  # the workers alive now (of every queue), by broker id

    def held(self) -> list[Shard]:
        """The shards taken by a live worker."""
        return [shard for worker, shards in self.taken.items() if worker in self.alive for shard in shards]

    def orphaned(self) -> list[Shard]:
        """The shards taken by a dead worker: back on the queue at the next poll of a live one."""
        return [s for worker, shards in self.taken.items() if worker not in self.alive for s in shards]


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
        try:
            client = redis.Redis.from_url(settings.url, socket_connect_timeout=CONNECT_TIMEOUT)
        except ValueError as exc:  # not a Redis URL: a traceback before
            raise QueueError(f"--redis {without_password(settings.url)}: {_without_url(exc)}") from None
        with _translated("connect"):
            self.broker = RedisBroker(  # type: ignore[no-untyped-call]
                client=client,
                middleware=[],  # no time limit, no retries, no age limit: see the module's docstring
                namespace=NAMESPACE,
                heartbeat_timeout=max(1, int(settings.heartbeat_timeout * 1000)),
                maintenance_chance=MAINTENANCE_SCALE if settings.maintenance else 0,
            )
        self.client: redis.Redis = self.broker.client
        self._consumers: dict[str, Any] = {}
        self._registered = False  # as a worker (take): unregistered as it closes

    def ping(self) -> None:
        with _translated("connect"):
            self.client.ping()

    def look(self, queue: str) -> QueueState:
        """What `queue` holds and who works on it, read without a heartbeat (status, resume)."""
        namespace = NAMESPACE
        with _translated("read the queue"):
            # One snapshot (MULTI/EXEC): a shard moving between the queue and a worker's taken set while
            # they were read one by one could be seen in neither, and `submit --resume` queue it twice.
            # A worker's heartbeat is written in the same step as its first take, so the taken sets to
            # read are those of the workers with a heartbeat: read again if one came meanwhile.
            workers: list[str] = [_text(key) for key in self.client.zrange(HEARTBEATS, 0, -1)]
            while True:
                snapshot = self.client.pipeline(transaction=True)
                snapshot.zrange(HEARTBEATS, 0, -1, withscores=True)
                snapshot.hgetall(WORKERS)
                snapshot.lrange(f"{namespace}:{queue}", 0, -1)
                for worker in workers:
                    snapshot.smembers(f"{namespace}:__acks__.{worker}.{queue}")
                scored, registered, waiting, *acks = snapshot.execute()
                beats = {_text(key): float(score) for key, score in scored}
                if set(beats) <= set(workers):
                    break
                workers = list(beats)
            now = time.time() * 1000
            alive = {}
            for worker, raw in registered.items():
                info = _decoded(raw)
                timeout = float(info.get("heartbeat_timeout") or self.settings.heartbeat_timeout) * 1000
                if _text(worker) in beats and beats[_text(worker)] >= now - timeout:
                    alive[_text(worker)] = info
            queued = self._shards(queue, waiting)
            taken = {}
            for worker, ids in zip(workers, acks, strict=True):
                if ids:
                    taken[worker] = self._shards(queue, sorted(ids))
        return QueueState(queued, taken, alive)

    def _shards(self, queue: str, ids: list[Any]) -> list[Shard]:
        if not ids:
            return []
        bodies = self.client.hmget(f"{NAMESPACE}:{queue}.msgs", ids)
        found = []
        for body in bodies:
            kwargs = _decoded(body).get("kwargs")
            if isinstance(kwargs, Mapping):
                try:
                    found.append(Shard.from_dict(kwargs))
                except (KeyError, TypeError, ValueError):
                    log.warning("a message of %s is not a shard: left alone", queue)
        return found

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

    def lost(self, taken: Taken) -> bool:
        """Whether `taken` was given to another worker: its message is no longer among this worker's
        taken ones, while the queue still holds it (queued again, or another worker's, after this one
        was silent past its heartbeat timeout: a machine suspended, a long pause, Redis out of reach).
        A message the queue no longer knows (Redis came back empty) is no one else's: not lost."""
        message_id = taken.message.options["redis_message_id"]  # the broker's id of it, in Redis
        with _translated("check a shard"):
            check = self.client.pipeline(transaction=True)
            check.sismember(f"{NAMESPACE}:__acks__.{self.broker.broker_id}.{taken.queue}", message_id)
            check.hexists(f"{NAMESPACE}:{taken.queue}.msgs", message_id)
            mine, known = check.execute()
        return not mine and bool(known)

    def take(self, queue: str) -> Taken | None:
        """A shard of `queue`, or None after waiting up to `poll` seconds for one."""
        consumer = self._consumers.get(queue)
        if consumer is None:
            if not self._registered:
                self._register()
                self._registered = True
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
        """Back on its queue at once, for any worker (a graceful stop, or a shard this one cannot run).
        Its consumer is let go: Dramatiq's still counted the message as taken (a requeue is meant for
        its shutdown), so with one shard at a time it fetched none again, and the worker stalled."""
        with _translated("requeue a shard"):
            self._consumers.pop(taken.queue).requeue([taken.message])

    def _register(self) -> None:
        """Say who this worker is (for `status`): its heartbeat is Dramatiq's. The workers that died
        without saying so (kill -9) are forgotten once silent for FORGET_AFTER heartbeat timeouts."""
        now = time.time()
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat_timeout": self.settings.heartbeat_timeout,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "since": now,
        }
        with _translated("register the worker"):
            for worker, raw in self.client.hgetall(WORKERS).items():
                known = _decoded(raw)
                beat = (self.client.zscore(HEARTBEATS, worker) or 0) / 1000
                silent = now - max(beat, float(known.get("since") or 0))
                if silent > FORGET_AFTER * float(
                    known.get("heartbeat_timeout") or self.settings.heartbeat_timeout
                ):
                    self.client.hdel(WORKERS, worker)
            self.client.hset(WORKERS, self.broker.broker_id, json.dumps(info))

    def close(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()
        if self._registered:
            try:
                with _translated("unregister the worker"):
                    self.client.hdel(WORKERS, self.broker.broker_id)
            except QueueError as exc:  # a worker that ends without Redis: its heartbeat ages all the same
                log.debug("%s", exc)
        self.broker.close()
        self.client.connection_pool.disconnect()  # Dramatiq leaves its connections to the collector


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decoded(raw: Any) -> dict[str, Any]:
    """A JSON object stored in Redis, or {} for anything else."""
    try:
        found = json.loads(raw) if raw is not None else {}
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}
