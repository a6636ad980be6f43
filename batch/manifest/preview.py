"""`validate --show N`: requests printed exactly as they would be sent, with file contents and inline
images shown as their type, size and hash rather than their bytes. The key is never shown."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from batch.kind import ApiRequest, FileReader, FormField, TaskKind
from batch.manifest.tasks import TaskSpec


def describe_bytes(data: bytes, mime: str | None) -> str:
    return f"<{mime or 'bytes'}, {len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}>"


def _hide_data_urls(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("data:") and ";base64," in value:
        head, b64 = value.split(",", 1)
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            return value[:60] + "..."
        return "data:" + describe_bytes(data, head[5:].split(";")[0])
    if isinstance(value, dict):
        return {key: _hide_data_urls(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_hide_data_urls(item) for item in value]
    return value


def _form_line(part: FormField) -> str:
    if part.filename is not None and isinstance(part.value, bytes):
        return f"  {part.name}: {part.filename} {describe_bytes(part.value, part.content_type)}"
    return f"  {part.name}: {part.value if isinstance(part.value, str) else describe_bytes(part.value, None)}"


def describe_request(spec: TaskSpec, kind: TaskKind, base_url: str, read: FileReader) -> str:
    """One task's request as text: the task, the method and URL, the headers, and the body."""
    request: ApiRequest = kind.build_request(spec.fields, read)
    lines = [
        f"# {spec.label}: {spec.id} ({spec.kind}), {spec.file}:{spec.line}",
        f"POST {base_url.rstrip('/')}/{spec.endpoint}/{request.path}",
        "Authorization: Bearer $MAAS_API_KEY",
    ]
    if request.form is not None:
        lines.append("Content-Type: multipart/form-data")
        lines += [_form_line(part) for part in request.form]
    else:
        lines.append("Content-Type: application/json")
        lines.append(json.dumps(_hide_data_urls(request.json), indent=2, ensure_ascii=False))
    return "\n".join(lines)
