"""What the engine needs from a task kind, and the plain data that crosses between them.

A kind (``jobs/generate.py``, ``jobs/edit.py``, ``jobs/chat.py``) is a small, mostly pure translation:
fields -> problems, fields -> HTTP request, answer body -> images, text and usage. The engine never names
a kind; it finds them in the registry that ``jobs`` exports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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


@dataclass(frozen=True)
class Answer:
    """The useful part of a successful answer. `images_missing`: images asked for (`n`) but not sent."""

    images: tuple[EncodedImage, ...] = ()
    text: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # kind-specific result fields
    images_missing: int = 0


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


class TaskKind(Protocol):
    """A kind of task: one endpoint of the API."""

    name: str
    known_fields: frozenset[str]  # the fields a shared default or --set may apply to

    def normalize(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Fields in their one canonical form (shorthands expanded); never raises, `check` reports."""
        ...

    def check(self, fields: Mapping[str, Any]) -> list[FieldIssue]:
        """Every rule of the API that `fields` break, without touching any file."""
        ...

    def file_refs(self, fields: Mapping[str, Any]) -> list[FileRef]:
        """The local files named by `fields` (only well-typed ones; `check` reports the rest)."""
        ...

    def check_inputs(
        self, fields: Mapping[str, Any], inputs: Mapping[Pointer, InputInfo]
    ) -> list[FieldIssue]:
        """Rules about the input files' contents: formats, sizes, dimensions."""
        ...

    def build_request(self, fields: Mapping[str, Any], read: FileReader) -> ApiRequest:
        """The HTTP request for these (validated, path-resolved) fields."""
        ...

    def describe(self, fields: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The prompt (as a person would read it) and the other request parameters, for result lines and
        the gallery."""
        ...

    def estimate(self, fields: Mapping[str, Any]) -> TokenCounts:
        """Tokens the request will likely use, before it is sent (for --tpm, budgets, dry runs)."""
        ...

    def usage_of(self, body: Any) -> Mapping[str, Any] | None:
        """The raw usage an answer body reports, or None. Never raises."""
        ...

    def token_counts(self, usage: Mapping[str, Any]) -> TokenCounts:
        """Normalised counts from a raw usage mapping."""
        ...

    def parse_answer(self, fields: Mapping[str, Any], body: Any) -> Answer:
        """The images and text of an answer body; raises BrokenAnswerError when it has none."""
        ...

    def stream_complete(self, fields: Mapping[str, Any], chunks: list[Any]) -> bool:
        """Whether a stream that ended without its end mark still holds the whole answer."""
        ...


Registry = Mapping[str, TaskKind]
