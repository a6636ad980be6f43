"""Reading a YAML manifest into LocatedDicts, with a subclass of yaml.SafeLoader that only adds line numbers
to mappings: no tag can construct a Python object. Apart from batch.manifest.read so that a run of a JSONL
manifest does without importing PyYAML (about 25 ms at start-up).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from batch.errors import ManifestError, Problem
from batch.manifest.read import MAX_YAML_NODES, LocatedDict
from batch.manifest.regular import open_regular

# libyaml's parser when PyYAML was built with it (about ten times faster); construction stays in Python,
# with SafeConstructor's rules: no tag can build a Python object either way.
_SafeBase: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _LocatingLoader(_SafeBase):  # type: ignore[misc]
    """A safe loader whose mappings are LocatedDicts and which refuses duplicate keys."""


def _construct_mapping(loader: _LocatingLoader, node: yaml.MappingNode) -> Iterator[LocatedDict]:
    data = LocatedDict()
    data.line = node.start_mark.line + 1
    yield data
    own = {id(key_node) for key_node, _ in node.value}
    loader.flatten_mapping(node)  # resolves `<<: *anchor` merges into node.value, merged keys first
    seen: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                "found a key that is not a plain value",
                key_node.start_mark,
            ) from None
        line = key_node.start_mark.line + 1
        if id(key_node) in own:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key {key!r} twice (first on line {seen[key]})",
                    key_node.start_mark,
                )
            seen[key] = line
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_lines[key] = line
        # the line of each task: one that is not a mapping is put there
        if key == "tasks" and isinstance(value_node, yaml.SequenceNode):
            data.item_lines[key] = [item.start_mark.line + 1 for item in value_node.value]


_LocatingLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def read_document(path: Path, name: str) -> Any:
    """The YAML document of the manifest at `path` (named `name` in problems); ManifestError if unusable."""
    try:
        with open_regular(path) as handle:
            return parse_document(handle, name)
    except OSError as exc:
        raise ManifestError(
            [Problem(name, None, f"the manifest file cannot be read: {exc.strerror or exc}")]
        ) from None


def parse_document(source: BinaryIO | str, name: str) -> Any:
    """The YAML document in `source` (a file opened for reading, or its text), its mappings LocatedDicts
    and a key twice in one of them refused: ManifestError, named `name`, if unusable."""
    try:
        loader = _LocatingLoader(source)  # a SafeLoader subclass: no object tags
        try:
            node = loader.get_single_node()
            if node is not None and _expanded_size(node, {}) > MAX_YAML_NODES:
                raise ManifestError(
                    [
                        Problem(
                            name,
                            None,
                            f"the YAML expands to more than "
                            f"{MAX_YAML_NODES:,} values through its aliases "
                            "(an alias bomb?)",
                        )
                    ]
                )
            return loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as exc:
        # its own text names the stream PyYAML was given: a file descriptor's number ("in "3"")
        raise ManifestError([Problem(name, _line_at(source, exc.position), _unreadable(exc))]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise ManifestError([Problem(name, line, f"not valid YAML: {message}")]) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ManifestError([Problem(name, None, f"not valid YAML: {exc}")]) from None
    except RecursionError:
        raise ManifestError([Problem(name, None, "not valid YAML: nested too deeply")]) from None


def _unreadable(exc: yaml.reader.ReaderError) -> str:
    """What a byte YAML cannot read is, without the stream's name."""
    if "not allowed" in exc.reason and isinstance(exc.character, int):  # UTF-8, but a control character
        where = f"#x{exc.character:02x} at byte {exc.position}"
        return f"not valid YAML: the control character {where} is not allowed"
    return f"not valid YAML: not UTF-8 text near byte {exc.position} ({exc.reason}); save the file as UTF-8"


def _line_at(source: BinaryIO | str, position: int) -> int | None:
    """The line of byte `position` of the YAML (libyaml counts bytes), or None if it cannot be read."""
    if isinstance(source, str):
        return source.encode("utf-8", "surrogateescape")[:position].count(b"\n") + 1
    try:
        source.seek(0)
        lines, left = 1, position
        while left > 0 and (block := source.read(min(left, 1 << 20))):
            lines += block.count(b"\n")
            left -= len(block)
    except OSError:
        return None
    return lines


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values `node` stands for once every alias is followed: linear in distinct nodes (each is
    counted once and remembered), so a billion-laughs document is caught without being expanded."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = 1  # a recursive alias counts once
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    sizes[id(node)] = total = min(total, MAX_YAML_NODES + 1)
    return total
