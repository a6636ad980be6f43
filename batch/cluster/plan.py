"""A sharded batch's plan, written once by `submit` beside the outputs (DIR/cluster/plan.json) and read by
every worker and by `status`: the manifest, the run flags, and the shards as ranges of manifest positions.
Pure data and its file; no Redis here."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.errors import OutputError, UsageError
from batch.manifest.ids import ID_SCHEMES, READABLE_IDS
from batch.running.order import Order

if TYPE_CHECKING:
    from batch.output.remote import Store

PLAN = Path("cluster") / "plan.json"
SHARDS = "shards"
FORMAT = 1


@dataclass(frozen=True)
class Shard:
    """One message on the queue: run the tasks at positions [start, end) of the batch in `out`."""

    out: str  # the batch's DIR, absolute: the same path on every machine (a shared mount); or its URL
    index: int
    start: int
    end: int
    retry_failed: bool = False  # `retry-failed DIR`: send this shard's failed tasks again
    # with retry_failed: the `finished_at` of the shard's last failure when it was queued. Only failures
    # up to it are sent again: a message delivered twice (its worker taken for dead) found the failures
    # of its own first delivery, and bought them again
    retry_upto: str | None = None

    @property
    def size(self) -> int:
        return self.end - self.start

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Shard:
        retry = bool(data.get("retry_failed", False))
        upto = data.get("retry_upto")
        upto = upto if isinstance(upto, str) else None
        return cls(str(data["out"]), int(data["index"]), int(data["start"]), int(data["end"]), retry, upto)


@dataclass(frozen=True)
class BatchPlan:
    """What `submit` decided: workers run exactly this, and refuse a manifest that changed since."""

    manifest: str  # absolute path
    out: str  # absolute path, or the store's URL (s3://...)
    queue: str  # the queue's name, derived from `out`
    total: int  # tasks in the manifest
    order_digest: str  # sha256 of the tasks' id digests in manifest order: the manifest's identity
    shard_size: int
    shards: list[tuple[int, int]]  # [start, end) positions, in order
    run_flags: list[str] = field(default_factory=list)  # the flags of `run` each shard runs with
    endpoint: str | None = None  # for tasks the manifest gives none, as submit resolved it
    options: dict[str, Any] = field(default_factory=dict)  # the flags' values that differ from defaults
    version: str = ""  # of maas-batch that submitted
    redis: str | None = None  # the queue's Redis, without any password (for `status`)
    submitted: str = ""  # ISO time
    format: int = FORMAT
    # how the ids the manifest does not give were made (batch.manifest.ids): its workers make them the
    # same way whatever version they run; a plan written before it said was made with readable ids
    ids: int = READABLE_IDS

    def shard(self, index: int) -> Shard:
        start, end = self.shards[index]
        return Shard(self.out, index, start, end)

    def each_shard(self) -> Iterator[Shard]:
        return (self.shard(index) for index in range(len(self.shards)))


def split(total: int, size: int) -> list[tuple[int, int]]:
    """Positions 0..total-1 in consecutive ranges of `size` (the last one shorter)."""
    if size < 1:
        raise UsageError(f"--shard-size must be at least 1, not {size}")
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def order_digest(order: Order | Sequence[int] | bytes) -> str:
    """The identity of a manifest's tasks: their ids, in order (8-byte digests, as the plan holds them)."""
    if isinstance(order, Order):
        return order.sha256()  # a window at a time
    data = order if isinstance(order, bytes) else b"".join(d.to_bytes(8, "little") for d in order)
    return hashlib.sha256(data).hexdigest()


def queue_name(out: Path | str) -> str:
    """The queue of the batch in `out` (a DIR, or a store's URL): readable, and unique per absolute path
    or URL."""
    absolute = str(out.absolute()) if isinstance(out, Path) else out.rstrip("/")
    name = out.absolute().name if isinstance(out, Path) else absolute.rpartition("/")[2]
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40] or "batch"
    return f"maas-batch.{slug}.{hashlib.sha256(absolute.encode()).hexdigest()[:12]}"


def shard_dir(root: Path, index: int) -> Path:
    return root / SHARDS / str(index)


def is_sharded(root: Path) -> bool:
    return (root / PLAN).is_file()


def write_plan(root: Path, plan: BatchPlan) -> Path:
    """DIR/cluster/plan.json, created once (a second submit to the same DIR is refused)."""
    path = root / PLAN
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(plan_json(plan))
        os.link(temporary, path)  # fails if a plan is there: never two batches in one DIR
        temporary.unlink()
    except FileExistsError:
        raise UsageError(f"{root} already holds a submitted batch ({path})") from None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def read_plan(root: Path) -> BatchPlan:
    path = root / PLAN
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or exc
        raise UsageError(f"{root} holds no submitted batch: cannot read {path}: {reason}") from exc
    return plan_from(text, str(path))


def plan_from(text: str | bytes, where: str) -> BatchPlan:
    """The plan a plan.json holds (`where` names it in the error). A newer version's plan (a format, an id
    scheme or keys this one does not know) is refused with what to do: run as this version reads it, its
    workers would make other ids than its submit did, and buy finished tasks again."""
    try:
        data = json.loads(text)
        _refuse_newer(data, where)
        data["shards"] = [(int(start), int(end)) for start, end in data["shards"]]
        return BatchPlan(**data)
    except (ValueError, TypeError, KeyError) as exc:
        raise OutputError(f"{where} is not a plan maas-batch wrote: {exc}") from exc


def _refuse_newer(data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise TypeError(f"a {type(data).__name__}, not an object")
    unknown = sorted(set(data) - {item.name for item in fields(BatchPlan)})
    scheme, layout = data.get("ids", READABLE_IDS), data.get("format", FORMAT)
    newer = [f"keys {', '.join(map(repr, unknown))}"] if unknown else []
    if isinstance(layout, int) and layout > FORMAT:
        newer.append(f"format {layout}")
    if isinstance(scheme, int) and scheme not in ID_SCHEMES and scheme > max(ID_SCHEMES):
        newer.append(f"id scheme {scheme}")
    if newer:
        from batch import __version__

        version = data.get("version")
        by = f"maas-batch {version}" if isinstance(version, str) and version else "another maas-batch"
        raise OutputError(
            f"{where} was written by {by}, with {' and '.join(newer)} that maas-batch {__version__} does "
            "not know: upgrade this machine's maas-batch to the submitting one's version"
        )
    if scheme not in ID_SCHEMES or isinstance(scheme, bool):
        raise ValueError(f"'ids' is {scheme!r}, not one of {', '.join(map(str, ID_SCHEMES))}")
    if type(layout) is not int:
        raise ValueError(f"'format' is {layout!r}, not a number")


def plan_json(plan: BatchPlan) -> bytes:
    return (json.dumps(asdict(plan), indent=1) + "\n").encode()


def write_plan_to_store(store: Store, plan: BatchPlan) -> str:
    """PREFIX/cluster/plan.json in a store, created once (create-only: a second submit is refused)."""
    if not store.create(PLAN.as_posix(), plan_json(plan)):
        raise UsageError(f"{store.url} already holds a submitted batch ({PLAN.as_posix()})")
    return f"{store.url.rstrip('/')}/{PLAN.as_posix()}"


def read_plan_from_store(store: Store) -> BatchPlan:
    data = store.read(PLAN.as_posix())
    if data is None:
        raise UsageError(f"{store.url} holds no submitted batch (no {PLAN.as_posix()})")
    return plan_from(data, f"{store.url.rstrip('/')}/{PLAN.as_posix()}")
