"""Reading a job manifest: a YAML file (`defaults:`, `endpoints:`, `tasks:`) or a JSONL file (one task per
line), into located entries. No defaults are applied and nothing is validated here beyond the file's shape.

YAML is read by batch.manifest.yamlfile, imported only for a YAML manifest. JSONL is streamed, so a
manifest of a million lines is never held in memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch import codec
from batch.errors import ManifestError, Problem, shorten
from batch.frozen import quick_init
from batch.manifest.fields import type_name, unknown_field_message
from batch.manifest.ids import safe_id
from batch.manifest.regular import open_regular, why_not_regular
from batch.manifest.repeats import REPEATED, repeated_key

TOP_LEVEL_KEYS = ("defaults", "endpoints", "tasks", "prices")
MAX_YAML_BYTES = 50 * 2**20
MAX_LINE_BYTES = 64 * 2**20
MAX_YAML_NODES = 2_000_000  # values a YAML manifest may expand to, aliases counted at every use


class LocatedDict(dict[Any, Any]):
    """A mapping read from YAML that remembers its own line, the line of each key, and the line of each
    item of its `tasks:` list."""

    line: int | None = None
    key_lines: dict[Any, int]
    item_lines: dict[Any, list[int]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines = {}
        self.item_lines = {}


@quick_init
@dataclass(frozen=True)
class Entry:
    """One task entry as written: its fields, its position in the manifest, and the line of each key."""

    data: Mapping[str, Any]
    index: int  # 0-based position in the manifest's list of tasks
    line: int | None
    key_lines: Mapping[str, int] = field(default_factory=dict)
    # Set on the tasks an expansion makes (batch.manifest.expand):
    label_text: str | None = None  # "tasks[2] prompts.txt:12 style=watercolor"
    readable: tuple[str, ...] = ()  # readable parts for a generated id
    extra_meta: Mapping[str, Any] = field(default_factory=dict)  # record fields for results' meta
    offset: int | None = None  # JSONL: the byte offset of its line (a shard's walk may start there)

    @property
    def label(self) -> str:
        return self.label_text or f"tasks[{self.index}]"


@dataclass(frozen=True)
class Mark:
    """Where a walk of a manifest may start rather than at its first entry: the entry whose first task is
    at `position` (its index; for JSONL its line and that line's byte offset), as a check walk saw it."""

    position: int
    index: int
    line: int | None
    offset: int | None


@dataclass
class Manifest:
    """A manifest file: its defaults and endpoints, and a way to walk its task entries (again and again)."""

    path: Path
    format: str  # "yaml" | "jsonl"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    endpoints: Mapping[str, Any] = field(default_factory=dict)
    tasks: list[Any] = field(default_factory=list)  # YAML only; JSONL is streamed from the file
    prices: Mapping[str, Any] = field(default_factory=dict)  # model -> prices per million tokens
    lines: Mapping[str, int] = field(default_factory=dict)  # line of each top-level key
    task_lines: Sequence[int] = ()  # YAML: the line of each item of `tasks:`
    origin: str | None = None  # what messages call a manifest that is not a file (built in code)

    @property
    def name(self) -> str:
        return self.origin or str(self.path)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def line_of(self, key: str, sub: Any = None) -> int | None:
        """The line of a top-level key, or of a key inside it."""
        value = getattr(self, key, None)
        if sub is not None and isinstance(value, LocatedDict) and sub in value.key_lines:
            return value.key_lines[sub]
        return self.lines.get(key)

    def entries(self, batch_urls: Mapping[str, str], begin: Mark | None = None) -> Iterator[Entry | Problem]:
        """Each task entry in order, or a Problem where a JSONL line cannot be read. `batch_urls` maps
        the OpenAI Batch URLs (`/v1/...`) JSONL lines may name to kinds (batch.kind.openai_batch_urls).
        `begin`: start at this entry (of a walk of this manifest before), not at the first: its index,
        and for JSONL its line and the byte offset of that line."""
        if self.format == "jsonl":
            yield from _jsonl_entries(self.path, batch_urls, begin)
            return
        first = begin.index if begin is not None else 0
        for index, item in enumerate(itertools.islice(self.tasks, first, None), start=first):
            if isinstance(item, LocatedDict):
                yield Entry(item, index, item.line, dict(item.key_lines))
            else:
                yield Problem(
                    self.name,
                    self.task_lines[index] if index < len(self.task_lines) else self.lines.get("tasks"),
                    f"must be a mapping with a kind and its fields, not {type_name(item)}",
                    task=f"tasks[{index}]",
                    value=shorten(item),
                )


def load(path: Path) -> Manifest:
    """Read a manifest's outer structure. Raises ManifestError for a file that cannot be a manifest."""
    name = str(path)
    why = why_not_regular(path)
    if why is not None:
        raise ManifestError([Problem(name, None, f"the manifest file {why}")])
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return Manifest(path, "jsonl")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ManifestError(
            [
                Problem(
                    name,
                    None,
                    f"a YAML manifest must be under {MAX_YAML_BYTES // 2**20} MB; "
                    "write large task lists as JSONL or use prompts_file",
                )
            ]
        )
    from batch.manifest.yamlfile import read_document  # YAML's parser only for a YAML manifest

    document = read_document(path, name)
    return _from_document(path, document)


def from_data(data: Mapping[str, Any], folder: Path, origin: str = "tasks") -> Manifest:
    """A manifest built in code: the same mapping a YAML manifest holds (`tasks:`, and optional
    `defaults:`, `endpoints:`, `prices:`), with paths relative to `folder`. Raises ManifestError as
    `load` does; messages name `origin` and the task's index (there are no lines)."""
    document = _located(data)
    manifest = _from_document(folder / f"<{origin}>", document, origin)
    manifest.origin = origin
    return manifest


def _located(value: Any) -> Any:
    """Plain dicts and lists into the LocatedDicts (without lines) a YAML manifest is made of."""
    if isinstance(value, Mapping):
        return LocatedDict((key, _located(item)) for key, item in value.items())
    if isinstance(value, list | tuple):
        return [_located(item) for item in value]
    return value


def _from_document(path: Path, document: Any, name: str | None = None) -> Manifest:
    name = name or str(path)
    if not isinstance(document, LocatedDict):
        raise ManifestError(
            [
                Problem(
                    name,
                    1,
                    "a YAML manifest must be a mapping with a 'tasks:' list "
                    f"(and optional 'defaults:' and 'endpoints:'), not {type_name(document)}",
                )
            ]
        )
    problems = []
    for key in document:
        # Keys starting with "x-" hold YAML anchors for reuse (the docker-compose convention).
        if key not in TOP_LEVEL_KEYS and not str(key).startswith("x-"):
            message = unknown_field_message(str(key), TOP_LEVEL_KEYS).split(" (")[0]
            message = message.replace("is not a known field", "is not a top-level key of a manifest", 1)
            problems.append(
                Problem(
                    name,
                    document.key_lines.get(key),
                    f"{message} (top-level keys starting with x- may hold YAML anchors)",
                    field=str(key),
                )
            )
    tasks = document.get("tasks")
    if not isinstance(tasks, list):
        problems.append(
            Problem(
                name,
                document.key_lines.get("tasks", 1),
                "must be a list of tasks",
                field="tasks",
                value=None if tasks is None else shorten(tasks),
            )
        )
    for key in ("defaults", "endpoints", "prices"):
        if key in document and not isinstance(document[key], dict):
            problems.append(
                Problem(
                    name,
                    document.key_lines.get(key),
                    "must be a mapping",
                    field=key,
                    value=shorten(document[key]),
                )
            )
    if problems:
        raise ManifestError(problems)
    return Manifest(
        path,
        "yaml",
        defaults=document.get("defaults") or LocatedDict(),
        endpoints=document.get("endpoints") or LocatedDict(),
        prices=document.get("prices") or LocatedDict(),
        tasks=tasks or [],
        lines=dict(document.key_lines),
        task_lines=document.item_lines.get("tasks", ()),
    )


def _jsonl_entries(
    path: Path, batch_urls: Mapping[str, str], begin: Mark | None = None
) -> Iterator[Entry | Problem]:
    name = str(path)
    index, first, offset = 0, 1, 0
    if begin is not None and begin.offset is not None and begin.line is not None:
        index, first, offset = begin.index, begin.line, begin.offset
    with open_regular(path) as handle:
        handle.seek(offset)
        for number, raw in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), start=first):
            at = offset
            offset += len(raw)
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                yield Problem(name, number, f"line is longer than {MAX_LINE_BYTES // 2**20} MB")
                _skip_rest_of_line(handle)
                offset = handle.tell()
                index += 1
                continue
            text = raw.strip()
            if not text or text.startswith(b"//"):
                continue
            try:
                item = codec.loads(text)
            except (ValueError, UnicodeDecodeError) as exc:
                yield Problem(name, number, f"not valid JSON: {exc}")
                index += 1
                continue
            except RecursionError:
                yield Problem(name, number, "not valid JSON: nested too deeply")
                index += 1
                continue
            if not isinstance(item, dict):
                yield Problem(
                    name, number, f"a task must be a JSON object, not {type_name(item)}", value=shorten(item)
                )
            elif (twice := repeated_key(text, item)) is not None:
                yield Problem(name, number, REPEATED, task=f"tasks[{index}]", field=twice)
            elif ("custom_id" in item and "body" in item) or (
                # an OpenAI Batch line with a part missing is told what it lacks, not that it has no kind
                "kind" not in item and ("url" in item or "body" in item)
            ):
                yield _openai_entry(name, item, index, number, batch_urls, at)
            else:
                yield Entry(item, index, number, dict.fromkeys(item, number), offset=at)
            index += 1


def _openai_entry(
    name: str, item: dict[str, Any], index: int, number: int, batch_urls: Mapping[str, str], offset: int
) -> Entry | Problem:
    """A line of an OpenAI Batch API input file, `{"custom_id", "method", "url", "body"}`, as a task of
    the kind `batch_urls` gives its URL (matched by its end: `/v1/` may be written with a host before it)."""
    url = item.get("url")
    kind = next(
        (
            kind
            for known, kind in batch_urls.items()
            if isinstance(url, str) and url.rstrip("/").endswith(known.removeprefix("/v1/"))
        ),
        None,
    )
    custom_id = item.get("custom_id")
    problem = None
    if kind is None:
        problem = (
            "url",
            "must be one of " + (", ".join(batch_urls) or "no URL: no task kind takes one"),
            url,
        )
    elif str(item.get("method", "POST")).upper() != "POST":
        problem = ("method", "must be POST", item.get("method"))
    elif "body" not in item:
        problem = ("body", "is required: the request's fields, a JSON object", None)
    elif not isinstance(item["body"], dict):
        problem = (
            "body",
            f"must be a JSON object of request fields, not {type_name(item['body'])}",
            item["body"],
        )
    elif not isinstance(custom_id, str) or not custom_id:
        problem = ("custom_id", "must be a non-empty string", custom_id)
    if problem is not None:
        return Problem(
            name, number, problem[1], task=f"tasks[{index}]", field=problem[0], value=shorten(problem[2])
        )
    assert isinstance(custom_id, str)
    data = {**item["body"], "kind": kind, "id": safe_id(custom_id), "custom_id": custom_id}
    return Entry(data, index, number, dict.fromkeys(data, number), offset=offset)


def _skip_rest_of_line(handle: Any) -> None:
    while True:
        chunk = handle.readline(MAX_LINE_BYTES)
        if not chunk or chunk.endswith(b"\n"):
            return
