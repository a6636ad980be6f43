"""Expansions: one manifest entry, many tasks.

    prompts_file: prompts.txt          one task per non-blank line ('#' lines are comments): {prompt}
    matrix: {style: [a, b], animal: [c, d]}   the cartesian product: {style}, {animal}
    for_each: {glob: "photos/*.jpg"}   one task per file: {path}, {name}, {stem}
    for_each: {csv: rows.csv}          one task per row: a placeholder per column
    for_each: {jsonl: records.jsonl}   one task per object: a placeholder per key
    repeat: 3                          independent samples: {sample} is 1, 2, 3

They nest in that order, outermost first: for_each, prompts_file, matrix, repeat. Placeholders are filled
in every string of the entry (prompts, chat messages, paths, `id`, `meta`); `{{` and `}}` are literal
braces; a brace that does not form a placeholder is left as it is; an unknown placeholder is an error. A
string that is exactly one placeholder takes the value itself, so `n: "{n}"` stays a number.

Everything streams: a prompt file or a CSV of a million lines is read one line at a time.
"""

from __future__ import annotations

import csv
import difflib
import glob as globbing
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.errors import Problem, shorten
from batch.kind import Registry, prompt_field
from batch.manifest.inputs import resolve
from batch.manifest.placeholders import (
    PLACEHOLDER,
    MissingPlaceholder,
    placeholders_in,
    placeholders_in_order,
    render,
    slug,
)
from batch.manifest.read import Entry
from batch.manifest.regular import open_regular, why_not_regular
from batch.manifest.rows import LineTooLong, bounded_lines, csv_rows, jsonl_rows, text_lines

if TYPE_CHECKING:
    from batch.manifest.plancache import Sources

EXPANSION_KEYS = ("for_each", "prompts_file", "matrix", "repeat")
SOURCES = ("glob", "csv", "jsonl")
MAX_REPEAT = 100_000
MAX_PROMPT_LINE = 2**20  # a prompt is at most 32,000 characters; a longer line is refused unread


@dataclass(frozen=True)
class Variant:
    """One point of an expansion: its placeholder values and how to name it."""

    values: Mapping[str, Any] = field(default_factory=dict)
    label: tuple[str, ...] = ()  # for messages: "prompts.txt:12", "style=watercolor", "#2"
    readable: tuple[str, ...] = ()  # for ids: "watercolor", "2"
    meta: Mapping[str, Any] = field(default_factory=dict)  # record fields not used as placeholders
    problem: Problem | None = None  # this record could not be read

    def __add__(self, other: Variant) -> Variant:
        return Variant(
            {**self.values, **other.values},
            self.label + other.label,
            self.readable + other.readable,
            {**self.meta, **other.meta},
            self.problem or other.problem,
        )


_EXPANSION_KEYS = frozenset(EXPANSION_KEYS)


def expands(data: Mapping[str, Any]) -> bool:
    """Whether the entry has an expansion key (a set's test of the entry's few keys, not a generator's)."""
    return not _EXPANSION_KEYS.isdisjoint(data)


class Expander:
    """Expands the entries of one manifest."""

    def __init__(
        self,
        manifest_name: str,
        folder: Path,
        registry: Registry,
        sources: Sources | None = None,
        transliterate: bool = True,
        used_column: bool = True,
        warn: Callable[[Problem], None] | None = None,
    ) -> None:
        self.name = manifest_name
        self.folder = folder
        self.registry = registry  # asked where a prompts_file's {prompt} goes in each kind
        self.sources = sources  # notes the files read, for the plan cache
        self.transliterate = transliterate  # ids' slugs in Latin letters from every script (readable ids)
        self.used_column = used_column  # a row's slug: its first column the task uses (not its first)
        self.warn = warn  # told of an entry that makes no task: its prompt file or records hold none

    def _slug(self, value: Any, limit: int = 40) -> str:
        return slug(value, limit, self.transliterate)

    def expand(self, entry: Entry, skip: Callable[[], bool] | None = None) -> Iterator[Entry | Problem]:
        """The entry itself when it has no expansion keys; otherwise one Entry per variant. `skip` is
        asked before each task is rendered: True passes over it (a finished task, on resume)."""
        data = entry.data
        if not expands(data):
            if skip is None or not skip():
                yield entry
            return
        problems = self._check_keys(entry)
        if problems:
            yield from problems
            return
        template = {key: value for key, value in data.items() if key not in EXPANSION_KEYS}
        # where the prompt goes is the kind's to say; a kind that is a placeholder is asked once rendered
        prompt_late = "prompts_file" in data and bool(placeholders_in(template.get("kind")))
        if "prompts_file" in data and (where := prompt_field(self.registry, template)) is not None:
            template[where] = "{prompt}"
        used = placeholders_in_order(template)  # in order: a row is named by the first it has
        prefix = (
            template.pop("id")
            if isinstance(template.get("id"), str) and not placeholders_in(template["id"])
            else None
        )
        made = False
        for variant in self._variants(entry, used):
            made = True
            if variant.problem is not None:
                yield variant.problem
                continue
            if skip is not None and skip():
                continue
            try:
                rendered = render(template, variant.values)
            except MissingPlaceholder as missing:
                yield self._unknown(entry, template, missing.name, variant)
                continue
            if prompt_late and (where := prompt_field(self.registry, rendered)) is not None:
                rendered[where] = variant.values["prompt"]
            if prefix is not None:
                rendered["id"] = "-".join((prefix, *(part for part in variant.readable if part)))
            label = " ".join((entry.label, *variant.label))
            yield replace(
                entry, data=rendered, label_text=label, readable=variant.readable, extra_meta=variant.meta
            )
        if not made and self.warn is not None:
            for problem in self._empty_sources(entry, used):
                self.warn(problem)

    # -- checking the expansion keys ------------------------------------------------------------------

    def _check_keys(self, entry: Entry) -> list[Problem]:
        data = entry.data
        problems = []

        def bad(key: str, message: str, value: Any = None) -> None:
            problems.append(
                Problem(
                    self.name,
                    entry.key_lines.get(key, entry.line),
                    message,
                    task=entry.label,
                    field=key,
                    value=None if value is None else shorten(value),
                )
            )

        if "prompts_file" in data:
            value = data["prompts_file"]
            if not isinstance(value, str) or not value:
                bad("prompts_file", "must be the path of a text file, one prompt per line", value)
            elif (why := why_not_regular(resolve(self.folder, value))) is not None:
                bad("prompts_file", why, str(resolve(self.folder, value)))
        if "matrix" in data:
            matrix = data["matrix"]
            if not isinstance(matrix, Mapping) or not matrix:
                bad("matrix", "must be a mapping of placeholder names to lists of values", matrix)
            else:
                for name, values in matrix.items():
                    if not isinstance(values, list) or not values:
                        bad(f"matrix.{name}", "must be a non-empty list of values", values)
                    elif not PLACEHOLDER.fullmatch("{" + str(name) + "}"):
                        bad(
                            f"matrix.{name}",
                            "is not a usable placeholder name (letters, digits, _ . -)",
                            name,
                        )
        if "repeat" in data:
            repeat = data["repeat"]
            if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= MAX_REPEAT:
                bad("repeat", f"must be a whole number from 1 to {MAX_REPEAT:,}", repeat)
        if "for_each" in data:
            problems += self._check_for_each(entry)
        names = [set(self._names(entry, key)) for key in EXPANSION_KEYS if key in data]
        for a, b in itertools.combinations(names, 2):
            for clash in sorted(a & b):
                bad(
                    "for_each" if "for_each" in data else "matrix",
                    f"the placeholder {{{clash}}} comes from two expansions; rename one",
                )
        return problems

    def _check_for_each(self, entry: Entry) -> list[Problem]:
        spec = entry.data["for_each"]
        line = entry.key_lines.get("for_each", entry.line)

        def bad(message: str, value: Any = None) -> list[Problem]:
            return [
                Problem(
                    self.name,
                    line,
                    message,
                    task=entry.label,
                    field="for_each",
                    value=None if value is None else shorten(value),
                )
            ]

        if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in SOURCES:
            return bad("must be one of {glob: PATTERN}, {csv: FILE}, {jsonl: FILE}", spec)
        source, value = next(iter(spec.items()))
        if not isinstance(value, str) or not value:
            return bad(f"{source} must be a path" + (" pattern" if source == "glob" else ""), value)
        if source == "glob":
            if not self._glob(value):
                return bad("the pattern matches no file", str(resolve(self.folder, value)))
        elif (why := why_not_regular(resolve(self.folder, value))) is not None:
            return bad(f"the {source} file {why}", str(resolve(self.folder, value)))
        elif source == "csv" and not (header := self._read_csv_header(value))[0]:
            return bad(header[1], value)
        return []

    def _names(self, entry: Entry, key: str) -> list[str]:
        """The placeholder names an expansion key provides (records: their columns / first object's keys)."""
        value = entry.data[key]
        if key == "prompts_file":
            return ["prompt"]
        if key == "repeat":
            return ["sample"]
        if key == "matrix":
            return [str(k) for k in value] if isinstance(value, Mapping) else []
        if isinstance(value, Mapping) and len(value) == 1:
            source, path = next(iter(value.items()))
            if source == "glob":
                return ["path", "name", "stem"]
            if source == "csv" and isinstance(path, str):
                return self._csv_header(path)
        return []

    # -- variants -------------------------------------------------------------------------------------

    def _variants(self, entry: Entry, used: list[str]) -> Iterator[Variant]:
        yield from _nested([level for _, level in self._levels(entry, used)])

    def _levels(self, entry: Entry, used: list[str]) -> list[tuple[str, Iterable[Variant]]]:
        """The entry's expansions, outermost first, by key."""
        data = entry.data
        levels: list[tuple[str, Iterable[Variant]]] = []
        if "for_each" in data:
            levels.append(("for_each", _Replayable(lambda: self._records(entry, used))))
        if "prompts_file" in data:
            levels.append(("prompts_file", _Replayable(lambda: self._prompts(entry, data["prompts_file"]))))
        if "matrix" in data:
            levels.append(("matrix", _Replayable(lambda: _matrix(data["matrix"], self._slug))))
        if "repeat" in data:
            levels.append(("repeat", _Replayable(lambda: _samples(data["repeat"]))))
        return levels

    def _empty_sources(self, entry: Entry, used: list[str]) -> Iterator[Problem]:
        """For an entry that made no task (not even a problem): each of its files that holds none, a
        prompt file of blank and # lines, a CSV of a header only, a JSONL file of blank lines. A run of
        such a file is not an error (a night with nothing to do), but it is not passed over in silence."""
        for key, level in self._levels(entry, used):
            if next(iter(level), None) is not None:
                continue
            if key == "prompts_file":
                raw, what = entry.data[key], "no prompt"
            else:  # a glob that matches nothing is refused before: a CSV or JSONL file
                source, raw = next(iter(entry.data[key].items()))
                what = "no row under its header" if source == "csv" else "no record"
            line = entry.key_lines.get(key, entry.line)
            yield Problem(self.name, line, f"{raw} holds no tasks: {what}", task=entry.label, field=key)

    def _prompts(self, entry: Entry, raw: str) -> Iterator[Variant]:
        path = resolve(self.folder, raw)
        if self.sources is not None:
            self.sources.file(path, expanded=True)
        with open_regular(path) as handle:
            for number, line in enumerate(bounded_lines(handle, MAX_PROMPT_LINE), start=1):
                if line is None:
                    message = f"the line is longer than {MAX_PROMPT_LINE // 2**20} MB"
                    yield Variant(problem=Problem(str(path), number, message, task=entry.label))
                    continue
                try:
                    text = line.decode("utf-8").removeprefix("\ufeff").strip()  # a byte order mark first
                except UnicodeDecodeError as exc:
                    message = f"is not UTF-8 text ({exc.reason})"
                    yield Variant(problem=Problem(str(path), number, message, task=entry.label))
                    continue
                if not text or text.startswith("#"):
                    continue
                yield Variant({"prompt": text}, (f"{raw}:{number}",), (self._slug(text, 32),))

    def _records(self, entry: Entry, used: list[str]) -> Iterator[Variant]:
        source, raw = next(iter(entry.data["for_each"].items()))
        if source == "glob":
            for path in self._glob(raw):
                relative = path.relative_to(self.folder) if path.is_relative_to(self.folder) else path
                yield Variant(
                    {"path": relative.as_posix(), "name": path.name, "stem": path.stem},
                    (relative.as_posix(),),
                    (path.stem,),
                )
            return
        path = resolve(self.folder, raw)
        if self.sources is not None:
            self.sources.file(path, expanded=True)
        records = csv_rows(path) if source == "csv" else jsonl_rows(path)
        for number, record in records:
            if isinstance(record, Problem):
                yield Variant(problem=replace(record, task=entry.label))
                continue
            key = record["id"] if "id" in record else self._row_key(record, used)
            meta = {k: v for k, v in record.items() if k not in used}
            yield Variant(dict(record), (f"{raw}:{number}",), (self._slug(key),), meta)

    def _row_key(self, record: Mapping[str, Any], used: list[str]) -> Any:
        """What names a row without an `id` column: the first column its task uses (`used`: in the order
        the task names them, whatever the order of a JSONL row's keys), so that a column nothing reads (a
        row number, a note) neither renames it nor makes it a new task; the first column where the task
        uses none, or in a directory of an older id scheme."""
        if self.used_column:
            for name in used:
                if name in record:
                    return record[name]
        return next(iter(record.values()), "")

    def _glob(self, pattern: str) -> list[Path]:
        base = resolve(self.folder, pattern)
        found = sorted(Path(p) for p in globbing.glob(str(base), recursive=True) if Path(p).is_file())
        if self.sources is not None:
            self.sources.glob(str(base), found)
        return found

    def _csv_header(self, raw: str) -> list[str]:
        """The column names (none for a file that is not a regular, readable CSV file)."""
        names, _ = self._read_csv_header(raw)
        return names

    def _read_csv_header(self, raw: str) -> tuple[list[str], str]:
        """The column names, or none and why."""
        try:
            with open_regular(resolve(self.folder, raw)) as handle:
                names = [name for name in next(csv.reader(text_lines(handle, str(raw))), []) if name]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            return [], f"the CSV file cannot be read: {getattr(exc, 'strerror', None) or exc}"
        except LineTooLong as exc:
            return [], f"the CSV file's header row cannot be read: {exc}"
        return names, "" if names else "the CSV file has no header row naming its columns"

    def _unknown(self, entry: Entry, template: Mapping[str, Any], name: str, variant: Variant) -> Problem:
        where = next((key for key in template if name in placeholders_in(template[key])), None)
        known = sorted(variant.values)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {{{close[0]}}}?" if close else f"; known: {', '.join(known) or 'none'}"
        return Problem(
            self.name,
            entry.key_lines.get(where, entry.line) if where else entry.line,
            f"uses the unknown placeholder {{{name}}}{hint} (write {{{{ and }}}} for literal braces)",
            task=" ".join((entry.label, *variant.label)),
            field=where,
        )


def _nested(levels: list[Iterable[Variant]]) -> Iterator[Variant]:
    """The product of the levels, lazily: inner levels are iterated again for each outer value (a file
    is re-read rather than held), unlike itertools.product, which materialises every input first."""
    if not levels:
        yield Variant()
        return
    for head in levels[0]:
        if head.problem is not None:
            yield head
            continue
        for tail in _nested(levels[1:]):
            yield head + tail


class _Replayable:
    """An iterable that calls its factory each time it is iterated (a file read again per outer value)."""

    def __init__(self, factory: Any) -> None:
        self._factory = factory

    def __iter__(self) -> Iterator[Variant]:
        iterator: Iterator[Variant] = self._factory()
        return iterator


def _matrix(matrix: Mapping[str, list[Any]], slug: Callable[[Any, int], str]) -> Iterator[Variant]:
    names = list(matrix)
    for values in itertools.product(*(matrix[name] for name in names)):
        label = tuple(
            f"{name}={shorten(value, 30) if not isinstance(value, str) else value}"
            for name, value in zip(names, values, strict=True)
        )
        yield Variant(dict(zip(names, values, strict=True)), label, tuple(slug(v, 24) for v in values))


def _samples(count: int) -> Iterator[Variant]:
    for k in range(1, count + 1):
        yield Variant({"sample": k}, (f"#{k}",), (str(k),))
