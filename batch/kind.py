"""What the engine needs from a task kind, and the plain data that crosses between them.

A kind (one module in ``jobs/``) is a small, mostly pure translation: fields -> problems, fields -> HTTP
request, answer body -> files, text and usage. It subclasses `TaskKind` and writes only what differs from
the defaults. The engine never names a kind: it asks a registry (kind name -> kind) for everything it needs
to know about one, such as its OpenAI Batch URLs, its prompt fields and the media types of its answers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard

from batch.frozen import quick_init
from batch.manifest.fields import FieldIssue

Pointer = tuple[str | int, ...]  # where a value sits inside a task's fields, e.g. ("messages", 0, "content")


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image file says (read without decoding the pixels)."""

    format: str  # Pillow's name: "PNG", "JPEG", "WEBP", ...
    width: int
    height: int
    mode: str
    has_alpha: bool


@dataclass(frozen=True)
class InputInfo:
    """A local file a task reads, as inspected before the run. `error` is set when it cannot be used."""

    path: Path
    size: int = 0
    digest: str = ""  # sha256 hex of the bytes; part of the task's identity
    image: ImageInfo | None = None
    error: str | None = None


@dataclass(frozen=True)
class FileRef:
    """A field value that names a local file."""

    pointer: Pointer
    path: str  # as found in the fields: relative to the manifest until the engine resolves it
    role: str  # what the file is for, in messages: "image", "mask", "chat image"


@dataclass(frozen=True)
class FormField:
    """One multipart field: a text value, or a file when `filename` is set."""

    name: str
    value: str | bytes
    filename: str | None = None
    content_type: str | None = None


@quick_init
@dataclass(frozen=True)
class ApiRequest:
    """An HTTP request as a kind wants it sent: POST to `{base}/{endpoint}/{path}`."""

    path: str
    json: Mapping[str, Any] | None = None
    form: Sequence[FormField] | None = None
    stream: bool = False  # the answer is server-sent events


@dataclass(frozen=True)
class EncodedImage:
    """An image in an answer as the API sent it: base64 text, or (`url` set, `b64` empty) a link to
    download. `data` holds the bytes once a linked image has been fetched."""

    b64: str
    mime: str | None = None  # as declared (a data: URL's type), if the API said
    url: str | None = None
    data: bytes | None = None


@quick_init
@dataclass(frozen=True)
class Answer:
    """The useful part of a successful answer. `images_missing`: images asked for (`n`) but not sent."""

    images: tuple[EncodedImage, ...] = ()
    text: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # kind-specific result fields
    images_missing: int = 0


@quick_init
@dataclass(frozen=True)
class TokenCounts:
    """Usage normalised across kinds: what went in, what came out, the total billed."""

    input: int
    output: int  # thinking included, also when a gateway reports it only in the total
    total: int
    image_input: int = 0  # of `input`, the tokens of input images (priced apart from text)
    cached_input: int = 0  # of `input`, the tokens served from a prompt cache (priced apart, if priced)
    reasoning: int = 0  # of `output`, the thinking tokens


FileReader = Callable[[Path], bytes]

IMAGE_MEDIA_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
"""What the engine can check an answer's files against today (Pillow reads them)."""


class TaskKind:
    """A kind of task: one endpoint of the API. Subclass it and write only what differs from the defaults:
    `name`, `check`, `build_request` and `parse_answer` have none; everything else has one that suits a
    JSON request that reads no files and answers in one piece."""

    name: str = ""  # what a task's `kind:` says
    known_fields: frozenset[str] = frozenset()  # the fields a shared default or --set may apply to
    # The OpenAI Batch API URLs (`/v1/...`) whose request lines are tasks of this kind.
    openai_batch_urls: tuple[str, ...] = ()
    # The fields that hold a task's prompt; an expansion's `prompts_file` writes `{prompt}` into the first
    # when the task states none of them.
    prompt_fields: tuple[str, ...] = ("prompt",)
    # The media types an answer's files may have; an answer with files of any other type is unusable.
    output_media_types: frozenset[str] = frozenset()
    # The shape of this kind's answer in an OpenAI Batch output file (`export --format openai`): the body
    # of an images answer (`data[]` of `b64_json`) or a `chat.completion` (choices with messages).
    openai_answer_object: Literal["images", "chat.completion"] = "images"

    def normalize(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Fields in their one canonical form (shorthands expanded); never raises, `check` reports."""
        return dict(fields)

    def check(self, fields: Mapping[str, Any]) -> list[FieldIssue]:
        """Every rule of the API that `fields` break, without touching any file."""
        raise NotImplementedError(f"the {self.name!r} kind does not say how to check its fields")

    def file_refs(self, fields: Mapping[str, Any]) -> list[FileRef]:
        """The local files named by `fields` (only well-typed ones; `check` reports the rest)."""
        return []

    def check_inputs(
        self, fields: Mapping[str, Any], inputs: Mapping[Pointer, InputInfo]
    ) -> list[FieldIssue]:
        """Rules about the input files' contents: formats, sizes, dimensions. Called whatever `check` found
        (every problem of a task is said at once): `fields` may hold values `check` refused, so a rule
        reads `inputs`, and a field only after checking its type."""
        return []

    def build_request(self, fields: Mapping[str, Any], read: FileReader) -> ApiRequest:
        """The HTTP request for these (validated, path-resolved) fields."""
        raise NotImplementedError(f"the {self.name!r} kind does not say how to build its request")

    def describe(self, fields: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The prompt (as a person would read it) and the other request parameters, for result lines and
        the gallery: by default the first prompt field's text and every other plain (number, text,
        boolean) field."""
        prompt = next((fields[key] for key in self.prompt_fields if key in fields), "")
        params = {
            key: value
            for key, value in fields.items()
            if key not in self.prompt_fields and isinstance(value, str | int | float | bool)
        }
        return str(prompt), params

    def estimate(self, fields: Mapping[str, Any]) -> TokenCounts:
        """Tokens the request will likely use, before it is sent (for --tpm, budgets, dry runs): by
        default the prompt's text at 4 characters a token, and no output."""
        prompt, _ = self.describe(fields)
        tokens = -(-len(prompt) // CHARS_PER_TOKEN)
        return TokenCounts(tokens, 0, tokens)

    def usage_of(self, body: Any) -> Mapping[str, Any] | None:
        """The raw usage an answer body reports, or None. Never raises. By default its `usage` mapping."""
        return usage_in(body)

    def token_counts(self, usage: Mapping[str, Any]) -> TokenCounts:
        """Normalised counts from a raw usage mapping; by default the chat-completions names
        (`prompt_tokens`, `completion_tokens`, `total_tokens`)."""
        return usage_counts(usage, "prompt_tokens", "completion_tokens")

    def parse_answer(self, fields: Mapping[str, Any], body: Any) -> Answer:
        """The files and text of an answer body; raises BrokenAnswerError when it has none."""
        raise NotImplementedError(f"the {self.name!r} kind does not say how to read its answers")

    def stream_complete(self, fields: Mapping[str, Any], chunks: list[Any]) -> bool:
        """Whether a stream that ended without its end mark still holds the whole answer. By default
        never: a kind that streams says when it is."""
        return False


CHARS_PER_TOKEN = 4  # English text, roughly


def usage_counts(
    usage: Mapping[str, Any],
    input_key: str,
    output_key: str,
    input_details: str = "prompt_tokens_details",
    output_details: str = "completion_tokens_details",
) -> TokenCounts:
    """Normalised counts; absent or junk figures count 0, a missing total is input + output.

    What the total holds beyond input + output is thinking that a gateway reported only there: it is billed
    as output; so are `reasoning_tokens` more than the output holds, with no total that holds them.
    `reasoning_tokens` and `cached_tokens` (from the details mappings) are kept as their own figures."""
    tokens_in = count_of(usage.get(input_key))
    tokens_out = count_of(usage.get(output_key))
    said = usage.get("total_tokens")
    total = max(count_of(said), tokens_in + tokens_out) if said is not None else tokens_in + tokens_out
    hidden = total - tokens_in - tokens_out
    details_in, details_out = usage.get(input_details), usage.get(output_details)
    # None, the usual details, told without the check of an abstract class (three times a plain one)
    cached = count_of(details_in.get("cached_tokens")) if _is_mapping(details_in) else 0
    reasoning = count_of(details_out.get("reasoning_tokens")) if _is_mapping(details_out) else 0
    if reasoning > tokens_out and reasoning > hidden:
        # more thinking than the whole output: it is not in the output, and the total (if any) does not
        # hold it either; billed as output all the same, as the provider bills it
        hidden = reasoning
        total = tokens_in + tokens_out + hidden
    return TokenCounts(
        tokens_in,
        tokens_out + hidden,
        total,
        cached_input=min(cached, tokens_in),
        reasoning=max(reasoning, hidden),
    )


def usage_in(body: Any) -> Mapping[str, Any] | None:
    """The `usage` mapping of a JSON answer body, or None."""
    usage = body.get("usage") if isinstance(body, Mapping) else None
    return usage if isinstance(usage, Mapping) else None


MAX_COUNT = 10**12  # tokens of one answer: more is no count (400 digits would overflow a cost)


def _is_mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    return type(value) is dict or (value is not None and isinstance(value, Mapping))


def count_of(value: Any) -> int:
    """A token count as reported: a non-negative integer up to MAX_COUNT, else 0."""
    if type(value) is int:  # the usual figure, told without the checks for a bool or a subclass
        return value if 0 <= value <= MAX_COUNT else 0
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT else 0


def counts_readable(usage: Mapping[str, Any]) -> bool:
    """Whether every token figure of a usage (its `*_tokens` keys) reads as a count (count_of): not a
    string of digits, a float, a negative number or one beyond MAX_COUNT. One that does not makes the
    whole usage unreadable (the answer is booked at its estimate): it cannot be told which figure lies."""
    for key, value in usage.items():
        if type(value) is int and 0 <= value <= MAX_COUNT:
            continue  # a count, whatever its key: the usual figure, told without reading its key
        if not isinstance(key, str) or not key.endswith("_tokens") or value is None:
            continue
        if count_of(value) != value or isinstance(value, bool):
            return False
    return True


Registry = Mapping[str, TaskKind]


def openai_batch_urls(registry: Registry) -> dict[str, str]:
    """OpenAI Batch URL -> the name of the kind its request lines are, from every kind in `registry`."""
    return {url: kind.name for kind in registry.values() for url in kind.openai_batch_urls}


def prompt_field(registry: Registry, fields: Mapping[str, Any]) -> str | None:
    """Where a prompt goes in the fields of a task that states none: the first prompt field of its kind;
    None when the kind is unknown, takes no prompt, or the fields already hold one."""
    name = fields.get("kind")
    kind = registry.get(name) if isinstance(name, str) else None
    if kind is None or not kind.prompt_fields or any(key in fields for key in kind.prompt_fields):
        return None
    return kind.prompt_fields[0]


KINDS_PACKAGE = "batch.jobs"  # the top-level folder jobs/ of the source tree, installed as batch/jobs/


def builtin_registry(extra: Iterable[TaskKind] = ()) -> Registry:
    """The built-in kinds, then `extra` (a kind there replaces one of the same name). They are reached as
    `batch.jobs`, never as a top-level `jobs`: a program with a `jobs` package of its own still runs."""
    extra = list(extra)
    for kind in extra:
        if not isinstance(kind, TaskKind):  # a class, or a kind's name, failed deep in the run
            from batch.errors import UsageError

            shown = kind.__name__ if isinstance(kind, type) else repr(kind)
            raise UsageError(f"kinds: {shown} is not a task kind; give instances of batch.kind.TaskKind")
    module = importlib.import_module(KINDS_PACKAGE)
    build: Callable[[Iterable[TaskKind]], Registry] = module.registry
    return build(extra)
