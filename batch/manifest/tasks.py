"""From manifest entries to TaskSpecs: defaults applied, endpoint chosen, paths resolved, every rule checked,
and an identity that survives reordering the manifest.

Order of precedence for a field: command line (`--set`) > the task > `defaults.<kind>` > shared `defaults`.
A shared default (or a `--set` without a kind) applies only to the kinds that know the field.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from batch.errors import Problem, shorten
from batch.frozen import quick_init
from batch.kind import InputInfo, Pointer, Registry, TaskKind
from batch.manifest.fields import MISSING, FieldIssue, closest, unknown_field_message
from batch.manifest.ids import LATEST_IDS, READABLE_IDS, valid_id
from batch.manifest.inputs import InputInspector, resolve
from batch.manifest.placeholders import slug
from batch.manifest.read import Entry, LocatedDict, Manifest
from batch.manifest.unused import mistyped_keys, unknown_model, unused_endpoints, unused_overrides
from batch.running.prices import PriceTable, model_of, parse_prices

if TYPE_CHECKING:
    from batch.manifest.plancache import Sources

ENDPOINT_PATTERN = re.compile(r"[^/?#\s\ud800-\udfff]{1,200}")  # no lone surrogate: not text
RESERVED = ("kind", "id", "endpoint", "meta", "custom_id")
_RESERVED_KEYS = frozenset(RESERVED)


@quick_init
@dataclass(frozen=True)
class TaskSpec:
    """A validated task, ready to be turned into a request."""

    id: str
    kind: str
    endpoint: str
    fields: Mapping[str, Any]  # canonical form, local paths made absolute
    file: str  # the manifest it came from
    line: int | None
    label: str  # "tasks[3]", for messages
    inputs: Mapping[Pointer, InputInfo] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    custom_id: str | None = None  # an OpenAI Batch line's own id, kept for joining
    # what is sent, as the first 16 hex digits of the sha256 of `canonical` (written in its result line):
    # a task with its own id that a later run would send otherwise is found changed by it
    request: str | None = None

    @property
    def model(self) -> str | None:
        model = self.fields.get("model")
        return model if isinstance(model, str) else None


@dataclass(frozen=True)
class BuildSettings:
    """What the command line and environment add to a manifest."""

    overrides: Mapping[str, Any] = field(default_factory=dict)  # --set: shared keys and {kind: {...}}
    endpoints: Mapping[str, str] = field(default_factory=dict)  # --endpoint: {kind|model|"*": endpoint}
    env_endpoint: str | None = None  # MAAS_ENDPOINT, or the simulator's
    allow_unknown: bool = False  # --allow-unknown: send fields and models that look like typos of known ones
    known_models: tuple[str, ...] = ()  # priced by --prices FILE (besides the built-in and the manifest's)
    prices_file: str | None = None  # where known_models come from, for messages (None: no --prices)
    prices_lines: Mapping[str, int] = field(default_factory=dict)  # the line of each in that file
    id_scheme: int = LATEST_IDS  # how ids not given are made: the output directory's (batch.manifest.ids)


class TaskBuilder:
    """Builds TaskSpecs from the entries of one manifest."""

    def __init__(
        self,
        manifest: Manifest,
        registry: Registry,
        settings: BuildSettings,
        inspector: InputInspector | None = None,
        sources: Sources | None = None,
    ) -> None:
        self.manifest = manifest
        self.registry = registry
        self.settings = settings
        self.sources = sources
        self.inspector = inspector or InputInspector(sources=sources)
        self.checking = True  # False once the manifest validated: the dispatch walk skips the field rules
        # kind name -> (the defaults under a task's fields, --set over them): see _layers_of
        self._layers: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self._kind_endpoints: dict[str, tuple[Any, Any]] = {}  # kind name -> see _kind_endpoints_of
        # MAAS_ENDPOINT checked once, not for each task of each walk
        self._env_endpoint_ok = settings.env_endpoint is None or _valid_endpoint(settings.env_endpoint)
        self.problems = self._check_top_level()
        # the models with a price: a task's model close to one of them but not one is taken for a typo
        priced = manifest.prices if isinstance(manifest.prices, Mapping) else {}
        self.known_models = {*PriceTable().prices, *map(str, priced), *settings.known_models}

    def trust(self) -> None:
        """Validation is over: stop noting the files read (the caller keeps that record), and skip the
        field rules, which it checked. Input files are still checked: they are inspected anyway."""
        self.sources = None
        self.inspector.sources = None
        self.checking = False

    # -- once per manifest --------------------------------------------------------------------------

    def _check_top_level(self) -> list[Problem]:
        """Problems of `defaults:` and `endpoints:` themselves, reported once rather than per task."""
        problems = []
        name = self.manifest.name
        all_known = set().union(*(kind.known_fields for kind in self.registry.values()))
        for key, value in self.manifest.defaults.items():
            line = self.manifest.line_of("defaults", key)
            if key in self.registry:
                if not isinstance(value, dict):
                    problems.append(
                        Problem(
                            name,
                            line,
                            "must be a mapping of fields for that kind",
                            field=f"defaults.{key}",
                            value=shorten(value),
                        )
                    )
            elif key in RESERVED and key != "endpoint":
                problems.append(Problem(name, line, "cannot be a default", field=f"defaults.{key}"))
            elif key not in all_known and key != "endpoint":
                message = self._unknown_default(key, value, all_known)
                problems.append(Problem(name, line, message, field=f"defaults.{key}"))
        _, mistakes = parse_prices(self.manifest.prices, "prices")
        for mistake in mistakes:
            where, _, message = mistake.partition(": ")
            model = model_of(where.removeprefix("prices."), self.manifest.prices)  # names hold dots
            problems.append(Problem(name, self.manifest.line_of("prices", model), message, field=where))
        for key, value in self.manifest.endpoints.items():
            if not _valid_endpoint(value):
                problems.append(
                    Problem(
                        name,
                        self.manifest.line_of("endpoints", key),
                        "must be an endpoint (deployment) id: no slashes or spaces",
                        field=f"endpoints.{key}",
                        value=shorten(value),
                    )
                )
        return problems

    def _unknown_default(self, key: Any, value: Any, all_known: set[str]) -> str:
        """What is said of a key of `defaults:` that is no kind and no field (`all_known`): a did-you-mean
        for a kind (`chta: {...}`) or a field (`qualty: low`) it is a typo of."""
        kinds = ", ".join(self.registry)
        near = closest(str(key), self.registry) if isinstance(value, Mapping) else None
        if near is not None:
            hint = f"fields for one kind go under defaults.<kind>: {kinds}"
            return f"is not a task kind; did you mean {near!r}? ({hint})"
        near = closest(str(key), all_known)
        if near is not None:
            return f"is not a field of any task kind; did you mean {near!r}?"
        return f"is not a field of any task kind; put fields for one kind under defaults.<kind> ({kinds})"

    # -- per entry ----------------------------------------------------------------------------------

    def build(self, entry: Entry) -> TaskSpec | list[Problem]:
        """A TaskSpec for `entry`, or every problem found in it."""
        data = entry.data
        kind_name = data.get("kind")
        kind = self.registry.get(kind_name) if isinstance(kind_name, str) else None
        if kind is None:
            message = (
                "is required: one of " + ", ".join(self.registry)
                if kind_name is None
                else unknown_field_message(str(kind_name), self.registry)
                .split(" (")[0]
                .replace("is not a known field", "is not a task kind")
            )
            return [self._problem(entry, "kind", message, kind_name)]
        problems: list[Problem] = []
        fields = kind.normalize(self._merged(kind, data))
        issues = kind.check(fields) if self.checking else []
        if self.settings.allow_unknown:  # the user means the fields and models the tool does not know
            issues = [issue for issue in issues if not issue.guess]
        elif self.checking and isinstance(fields.get("model"), str):
            typo = unknown_model(fields["model"], self.known_models)
            if typo:
                issues.append(FieldIssue("model", typo, fields["model"], guess=True))
        # the input files are looked at whatever else is wrong: every problem of a task is said at once
        fields, inputs = self._resolve_inputs(kind, fields)
        issues += kind.check_inputs(fields, inputs)
        problems += [self._issue_problem(entry, kind.name, issue) for issue in issues]
        endpoint = self._endpoint(entry, kind, fields, problems)
        task_id = data.get("id")
        content = request = ""
        # The digest's JSON encoding is also the check that the fields are plain JSON, and its UTF-8 that
        # they are text a request can carry (no lone surrogate: `"\ud800"` in a JSONL line). It names a task
        # without an id, and is what the result line says was sent (TaskSpec.request): every task is
        # encoded in the dispatch walk too, as it is sent.
        try:
            content = canonical(kind.name, endpoint or "", fields, inputs)
            request = _sha256(content)
        except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
            problems += self._json_problems(entry, fields)
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            problems.append(self._problem(entry, "meta", "must be a mapping", meta))
        if task_id is not None and not valid_id(task_id):
            message = "must be 1-100 characters of A-Z a-z 0-9 . _ - (and not only dots)"
            problems.append(self._problem(entry, "id", message, task_id))
        if problems:
            return problems
        assert endpoint is not None
        if task_id is None:  # an id made from the digest
            task_id = self._generated_id(kind, fields, entry.readable, request)
        custom_id = data.get("custom_id")
        return TaskSpec(
            task_id,
            kind.name,
            endpoint,
            fields,
            self.manifest.name,
            entry.line,
            entry.label,
            inputs,
            {**entry.extra_meta, **meta},
            custom_id if isinstance(custom_id, str) else None,
            request[:16],
        )

    def _generated_id(
        self, kind: TaskKind, fields: Mapping[str, Any], readable: tuple[str, ...], digest: str
    ) -> str:
        """An id for a task the manifest gave none (see generated_id); with readable ids, a task of no
        expansion is named by its prompt (`a-red-fox-1a2b3c4d5e6f`)."""
        if self.settings.id_scheme < READABLE_IDS:
            return generated_id(kind.name, readable, digest)
        if not any(readable):
            prompt = slug(kind.describe(fields)[0], 32, transliterate=True)
            return f"{prompt}-{digest[:12]}" if prompt else f"{kind.name}-{digest[:16]}"
        return generated_id(kind.name, readable, digest)

    def _merged(self, kind: TaskKind, data: Mapping[str, Any]) -> dict[str, Any]:
        below, above = self._layers.get(kind.name) or self._layers_of(kind)
        merged = {**below, **{k: v for k, v in data.items() if k not in _RESERVED_KEYS}}
        merged.update(above)
        return merged

    def _layers_of(self, kind: TaskKind) -> tuple[dict[str, Any], dict[str, Any]]:
        """What a task of `kind` takes from beside it: the manifest's defaults, under the task's own
        fields, and --set, over them. The same for every task of the kind: made once per walk's kind."""
        defaults = self.manifest.defaults
        overrides = self.settings.overrides
        below = {k: v for k, v in defaults.items() if k in kind.known_fields}
        below.update(defaults.get(kind.name) or {})
        above = {k: v for k, v in overrides.items() if k in kind.known_fields}
        scoped = overrides.get(kind.name)
        above.update(scoped if isinstance(scoped, Mapping) else {})  # `--set chat=3` is reported apart
        self._layers[kind.name] = (below, above)
        return below, above

    def _resolve_inputs(
        self, kind: TaskKind, fields: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[Pointer, InputInfo]]:
        refs = kind.file_refs(fields)
        if not refs:
            return fields, {}
        fields = copy.deepcopy(fields)
        inputs = {}
        for ref in refs:
            path = resolve(self.manifest.folder, ref.path)
            _set(fields, ref.pointer, str(path))
            inputs[ref.pointer] = self.inspector.inspect(path)
        return fields, inputs

    def _endpoint(
        self, entry: Entry, kind: TaskKind, fields: Mapping[str, Any], problems: list[Problem]
    ) -> str | None:
        """--endpoint (by model, by kind, for all) > the task's own > the manifest's endpoints[model] >
        endpoints[kind] > defaults > MAAS_ENDPOINT."""
        model = fields.get("model")
        by_flag, by_manifest = self._kind_endpoints.get(kind.name) or self._kind_endpoints_of(kind)
        candidates = (
            self.settings.endpoints.get(model, MISSING) if isinstance(model, str) else MISSING,
            by_flag,
            entry.data.get("endpoint", MISSING),
            self.manifest.endpoints.get(model, MISSING) if isinstance(model, str) else MISSING,
            by_manifest,
        )
        for value in candidates:
            if value is MISSING:
                continue
            if not _valid_endpoint(value):
                problems.append(
                    self._problem(
                        entry, "endpoint", "must be an endpoint (deployment) id: no slashes or spaces", value
                    )
                )
                return None
            return str(value)
        if self.settings.env_endpoint:
            if self._env_endpoint_ok:
                return self.settings.env_endpoint
            # `MAAS_ENDPOINT=..` sent every task to /v1/google/... (a 404, taken for a wrong key)
            message = "MAAS_ENDPOINT must be an endpoint (deployment) id: no slashes or spaces"
            shown = shorten(self.settings.env_endpoint)
            problem = Problem(
                self.manifest.name, entry.line, message, entry.label, "endpoint", shown, config=True
            )
            problems.append(problem)
            return None
        problems.append(
            Problem(
                self.manifest.name,
                entry.line,
                f"no endpoint for this {kind.name} task: set MAAS_ENDPOINT, or "
                f"'endpoints: {{{kind.name}: ...}}' in the manifest, or the task's own 'endpoint'",
                task=entry.label,
                field="endpoint",
                config=True,
            )
        )
        return None

    def _kind_endpoints_of(self, kind: TaskKind) -> tuple[Any, Any]:
        """The endpoints a task of `kind` may take that depend on neither its model nor its entry, each
        the first that is given (MISSING if none): --endpoint for the kind, or for all; the manifest's
        endpoints[kind], defaults.<kind>.endpoint, defaults.endpoint. Made once per walk's kind."""
        chosen, defaults = self.settings.endpoints, self.manifest.defaults
        by_flag = _first_given(chosen.get(kind.name, MISSING), chosen.get("*", MISSING))
        by_manifest = _first_given(
            self.manifest.endpoints.get(kind.name, MISSING),
            (defaults.get(kind.name) or {}).get("endpoint", MISSING),
            defaults.get("endpoint", MISSING),
        )
        self._kind_endpoints[kind.name] = (by_flag, by_manifest)
        return by_flag, by_manifest

    def _json_problems(self, entry: Entry, fields: Mapping[str, Any]) -> list[Problem]:
        """The fields that are not plain JSON text (TaskBuilder.build could not encode them); at least
        one problem."""
        found = []
        surrogate = "holds a lone surrogate (half of a UTF-16 pair, such as \\ud800): not text; fix it"
        for key, value in fields.items():
            try:
                json.dumps({key: value}, allow_nan=False, ensure_ascii=False).encode()
            except UnicodeEncodeError:
                # named as the task wrote it where it can be (its `prompt`, not the `messages` made of it)
                written = [] if key in entry.data else _not_text(entry.data, fields)
                for name, held in written or [(key, value)]:
                    problem = self._problem(entry, str(name), surrogate, held)
                    found += [] if problem in found else [problem]
            except (TypeError, ValueError):
                message = "is not plain JSON data (a YAML date, binary or NaN?); quote it"
                found.append(self._problem(entry, str(key), message, value))
        if not found:  # what else went into the task's encoding: its endpoint (ENDPOINT_PATTERN takes none)
            found.append(self._problem(entry, "endpoint", "is not plain JSON text"))
        return found

    def _issue_problem(self, entry: Entry, kind: str, issue: FieldIssue) -> Problem:
        return self._problem(entry, issue.field, issue.message, issue.value)

    def _problem(self, entry: Entry, field_path: str, message: str, value: Any = MISSING) -> Problem:
        """A problem located where the field was set: `--set` (which wins over the manifest), else the
        line of the task's own field, or of the defaults'."""
        root = re.split(r"[.\[]", field_path, maxsplit=1)[0]
        kind = entry.data.get("kind")
        if self._set_by_flag(kind, root):
            return Problem(
                "--set",
                None,
                message,
                task=entry.label,
                field=field_path,
                value=None if value is MISSING else shorten(value),
            )
        line = _line_within(entry.data, field_path) if root in entry.key_lines else None
        origin = ""
        if line is None:
            kind_defaults = self.manifest.defaults.get(kind) if isinstance(kind, str) else None
            if isinstance(kind_defaults, LocatedDict) and root in kind_defaults.key_lines:
                line, origin = kind_defaults.key_lines[root], f" (set in defaults.{kind})"
            elif root in self.manifest.defaults:
                line, origin = self.manifest.line_of("defaults", root), " (set in defaults)"
            if line is None:
                line = entry.line
        return Problem(
            self.manifest.name,
            line,
            message + origin,
            task=entry.label,
            field=field_path,
            value=None if value is MISSING else shorten(value),
        )

    def _set_by_flag(self, kind: Any, root: str) -> bool:
        """Whether `--set` gave the task's field `root` (shared, to a kind that knows it, or kind.field)."""
        overrides = self.settings.overrides
        if not isinstance(kind, str) or kind not in self.registry:
            return False
        scoped = overrides.get(kind)
        if isinstance(scoped, Mapping) and root in scoped:
            return True
        return root in overrides and root in self.registry[kind].known_fields

    # -- after the whole manifest -------------------------------------------------------------------

    def unused_settings(self, kinds: set[str], models: set[str] | None) -> list[Problem]:
        """The `--set` and `--endpoint` keys that reach no task of the manifest: `kinds` and `models`
        are its tasks' (models None: not all known, a key that may be one is let be)."""
        found = unused_overrides(self.settings.overrides, self.registry, kinds) + unused_endpoints(
            self.settings.endpoints, self.registry, kinds, models
        )
        manifest = self.manifest
        where = (manifest.name, manifest.line_of)
        endpoints = manifest.endpoints if isinstance(manifest.endpoints, Mapping) else {}
        # a key one typo from any kind (`genrate`, though the manifest has no generate task), and from one
        # of the tasks' models
        every_kind = set(self.registry)
        if models is None:
            # the models of tasks with problems are not known; a kind's typo is said all the same: those
            # tasks may have failed for want of the endpoint it meant to give them
            return found + mistyped_keys("endpoints", endpoints, every_kind, every_kind, set(), where)
        found += mistyped_keys("endpoints", endpoints, every_kind, every_kind, models, where)
        prices = manifest.prices if isinstance(manifest.prices, Mapping) else {}
        priced = {*PriceTable().prices, *self.settings.known_models}  # built-in, and --prices FILE's
        found += mistyped_keys("prices", prices, priced, set(), models, where)
        return found

    def unused_file_prices(self, models: set[str]) -> list[Problem]:
        """The models of --prices FILE one typo from a model of the tasks that the file gives no price (the
        check of `prices:`), said as warnings, not refused: one price file is shared by many manifests, and
        lists models that are siblings of the tasks' (imagen-4.0-fast-generate-001 beside
        imagen-4.0-generate-001); a sibling of a model the file prices too is no typo."""
        if self.settings.prices_file is None:
            return []
        lines = self.settings.prices_lines
        in_file = (self.settings.prices_file, lambda _, model: lines.get(model))
        prices = self.manifest.prices if isinstance(self.manifest.prices, Mapping) else {}
        priced = {*PriceTable().prices, *map(str, prices)}  # built-in, and the manifest's
        unpriced = models - set(self.settings.known_models)
        found = mistyped_keys("", self.settings.known_models, priced, set(), unpriced, in_file)
        note = " (if so, its price reaches no task of this manifest)"
        return [replace(problem, message=problem.message + note) for problem in found]


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _line_within(data: Any, field_path: str) -> int | None:
    """The line of the deepest part of `messages[0].content[2].image_url` that YAML located."""
    line = None
    for name, index in _PATH_PART.findall(field_path):
        if name and isinstance(data, LocatedDict) and name in data:
            line = data.key_lines.get(name, line)
            data = data[name]
        elif index and isinstance(data, list) and int(index) < len(data):
            data = data[int(index)]
            line = getattr(data, "line", None) or line
        else:
            break
    return line


def _first_given(*values: Any) -> Any:
    """The first of `values` that is not MISSING (MISSING if none is)."""
    return next((value for value in values if value is not MISSING), MISSING)


def _not_text(data: Mapping[str, Any], fields: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The fields a task wrote that its kind renamed (none of `fields`, none of RESERVED) whose name or
    value holds a lone surrogate: no UTF-8 JSON."""
    found = []
    for key, value in data.items():
        if key in fields or key in _RESERVED_KEYS:
            continue
        try:
            json.dumps({key: value}, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            found.append((key, value))
        except (TypeError, ValueError):
            pass  # not a surrogate's: said otherwise
    return found


def _valid_endpoint(value: Any) -> bool:
    return isinstance(value, str) and bool(ENDPOINT_PATTERN.fullmatch(value)) and value not in (".", "..")


def _set(data: Any, pointer: Pointer, value: Any) -> None:
    for part in pointer[:-1]:
        data = data[part]
    data[pointer[-1]] = value


# The canonical string is the JSON of {"kind", "endpoint", "fields"} with sorted keys, no spaces, no ASCII
# escapes and no NaN: json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
# allow_nan=False).encode of that mapping, byte for byte (tests/manifest/test_canonical.py). Its three keys
# sort as endpoint, fields, kind, so only the fields go through the encoder: the standard library's C
# encoder itself, called as JSONEncoder.encode calls it (a fresh one a call, for its circular check),
# without encode's and iterencode's Python frames around it, nor the mapping around the fields (1.9 us
# less a chat task, about half, in each of the two walks).
_canonical_encoder = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_encode_canonical = _canonical_encoder.encode
_make_encoder = getattr(json.encoder, "c_make_encoder", None)  # None without the C accelerator (PyPy)
_encode_string = json.encoder.encode_basestring


def _encode_fields(fields: dict[str, Any]) -> str:
    """`_encode_canonical(fields)`, through the C encoder where there is one."""
    if _make_encoder is None:
        return _encode_canonical(fields)
    encoder = _make_encoder(
        {}, _canonical_encoder.default, _encode_string, None, ":", ",", True, False, False
    )
    return "".join(encoder(fields, 0))


def canonical(
    kind: str, endpoint: str, fields: Mapping[str, Any], inputs: Mapping[Pointer, InputInfo]
) -> str:
    """What is sent, as one string: kind, endpoint, fields, and the bytes (not the paths) of input files.
    Its sha256 names a task the manifest gave no id, and its first 16 hex digits are what every task's
    result line says was sent (TaskSpec.request). Raises TypeError or ValueError for fields that are not
    plain JSON."""
    plain = copy.deepcopy(dict(fields)) if inputs else fields if type(fields) is dict else dict(fields)
    for pointer, info in inputs.items():
        _set(plain, pointer, f"sha256:{info.digest}")
    fields_json = _encode_fields(plain)
    return f'{{"endpoint":{_encode_string(endpoint)},"fields":{fields_json},"kind":{_encode_string(kind)}}}'


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def generated_id(kind: str, readable: tuple[str, ...], digest: str) -> str:
    """An id for a task the manifest gave none: `<kind>-<digest>`, or for a task an expansion made, its
    readable parts and a short digest (`watercolor-fox-3-1a2b3c4d`): stable, readable, and unique across
    entries even when two of them expand the same folder."""
    parts = "-".join(part for part in readable if part)[:80].strip("-")
    return f"{parts}-{digest[:8]}" if parts else f"{kind}-{digest[:16]}"
