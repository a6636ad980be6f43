"""A key written twice on a JSONL line is refused, located by file, line and field: JSON keeps only the
last, so one of the two values would have been dropped without a word (and paid for as the other)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.manifest.repeats import repeated_key
from tests.conftest import Outcome, checked, messages

Write = Callable[..., Path]


def test_a_jsonl_task_with_a_key_twice_is_refused_at_its_line(
    cli: Callable[..., Outcome], write: Write
) -> None:
    path = write(
        '{"kind": "chat", "model": "gemini-2.5-flash", "id": "a", "prompt": "fine"}\n'
        '{"kind": "chat", "model": "gemini-2.5-flash", "id": "b", "prompt": "x", "prompt": "y"}\n',
        "night.jsonl",
    )
    outcome = cli("validate", path, env={"MAAS_ENDPOINT": "ep"})
    assert outcome.code == 65
    assert f"{path}:2: tasks[1]: prompt: is written twice on the line" in outcome.err
    assert "nothing was sent" in outcome.err


def test_a_key_twice_inside_an_openai_batch_body_is_named_by_its_path(write: Write) -> None:
    path = write(
        '{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": '
        '{"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "a: b"}], '
        '"messages": [{"role": "user", "content": "c"}]}}\n'
        '{"kind": "chat", "model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "x",'
        ' "content": "y"}]}\n',
        "batch.jsonl",
    )
    found = messages(checked(path))
    assert len(found) == 2, found
    assert found[0].startswith(f"{path}:1: tasks[0]: body.messages: is written twice")
    assert found[1].startswith(f"{path}:2: tasks[1]: messages[0].content: is written twice")


def test_a_record_with_a_key_twice_is_refused_at_the_record_files_line(write: Write) -> None:
    write('{"p": "a fox"}\n{"p": "an owl", "p": "a cat"}\n', "records.jsonl")
    path = write("""
        tasks:
          - kind: chat
            model: gemini-2.5-flash
            prompt: "{p}"
            for_each: {jsonl: records.jsonl}
    """)
    found = messages(checked(path))
    assert len(found) == 1, found
    records = path.parent / "records.jsonl"
    assert found[0].startswith(f"{records}:2: tasks[0]: p: is written twice on the line")


def test_colons_and_json_inside_strings_are_no_repeated_keys(write: Write) -> None:
    """The lines the quick count cannot clear (a colon in a prompt, escaped JSON with a key twice inside
    a string, a space before a key's colon) are read again and pass."""
    path = write(
        '{"kind": "chat", "model": "gemini-2.5-flash", "prompt": "Time: 12:30, at https://x.org"}\n'
        '{"kind": "chat", "model": "gemini-2.5-flash", "prompt": "as JSON: {\\"a\\": 1, \\"a\\": 2}"}\n'
        '{"kind" : "chat", "model" : "gemini-2.5-flash", "prompt" : "\\":"}\n',
        "fine.jsonl",
    )
    result = checked(path)
    assert messages(result) == []
    assert result.plan.total == 3


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (rb'{"a": 1, "b": 2}', None),
        (rb'{"a": 1, "a": 2}', "a"),
        (b'{"a" : 1, "a"\t: 2}', "a"),  # a space or a tab before the colon
        (rb'{"a": "x: y", "b": {"c": [1, {"d": 1, "d": 2}]}}', "b.c[1].d"),
        (rb'{"p": "{\"k\": 1, \"k\": 2}", "q": 1}', None),  # JSON inside a string
        (rb'{"p": "\":", "a\\": 1, "a\\": 2}', "a\\"),  # a key ending in a backslash, twice
        (rb'{"p": "\\\":", "q": 1}', None),
    ],
)
def test_the_quick_count_never_hides_a_repeated_key(line: bytes, expected: str | None) -> None:
    assert repeated_key(line, json.loads(line)) == expected
