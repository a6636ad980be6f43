"""batch.frozen.quick_init: the __init__ it gives a frozen dataclass makes the instance the dataclass's own
__init__ makes (fields, defaults, fresh default_factory values, repr, eq, frozen), with the same
arguments and the same refusals. No server, no disk."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from batch.events import AttemptFailed, Billed, TaskFinished, TaskStarted
from batch.frozen import quick_init
from batch.kind import Answer, ApiRequest, TokenCounts
from batch.manifest.read import Entry
from batch.manifest.tasks import TaskSpec
from batch.running.client import Reply


@dataclasses.dataclass(frozen=True)
class Plain:
    name: str
    count: int = 3
    tags: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    label: str | None = None


Quick = quick_init(dataclasses.make_dataclass("Quick", [], bases=(Plain,), frozen=True))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [(("a",), {}), (("a", 5), {"label": "x"}), ((), {"name": "a", "tags": {"k": 1}}), (("a", 1, None), {})],
)
def test_the_instance_is_the_one_the_dataclass_makes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    plain, quick = Plain(*args, **kwargs), Quick(*args, **kwargs)
    assert vars(quick) == vars(plain) and list(vars(quick)) == [f.name for f in dataclasses.fields(Plain)]
    assert repr(quick) == repr(plain).replace("Plain(", "Quick(")
    assert quick == Quick(*args, **kwargs) and quick != Quick("other")
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.name = "b"  # type: ignore[misc]
    assert dataclasses.replace(quick, count=9).count == 9


def test_a_default_factory_makes_a_value_of_each_instances_own() -> None:
    first, second = Quick("a"), Quick("b")
    assert first.tags == {} and first.tags is not second.tags
    assert Quick("a", tags=None).tags is None  # given, even as None: kept


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), (("a",), {"nope": 1}), (("a", 1, {}, None, 5), {}), (("a",), {"name": "b"})],
)
def test_the_same_arguments_are_refused(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        Plain(*args, **kwargs)
    with pytest.raises(TypeError):
        Quick(*args, **kwargs)


def test_a_class_it_cannot_make_faithfully_is_refused() -> None:
    @dataclasses.dataclass
    class Mutable:
        name: str

    @dataclasses.dataclass(frozen=True)
    class Checked:
        name: str

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True)
    class Hidden:
        name: str
        cache: int = dataclasses.field(default=0, init=False)

    for cls in (Mutable, Checked, Hidden, dict):
        with pytest.raises(TypeError):
            quick_init(cls)


@pytest.mark.parametrize(
    "instance",
    [
        TaskSpec("a", "chat", "ep", {"prompt": "hi"}, "t.jsonl", 1, "line 1", request="0123456789abcdef"),
        Entry({"prompt": "hi"}, 0, 1, {"prompt": 1}, offset=0),
        TokenCounts(1, 2, 3, cached_input=1),
        Answer(text="hi", extra={"finish_reason": "stop"}),
        ApiRequest("chat/completions", {"model": "m"}),
        Reply(200, {"id": "x"}, 0.1, "req", b"{}"),
        TaskStarted("a", "chat"),
        AttemptFailed("a", 1, "HTTP 503", 0.5),
        Billed("a", "m", 1, 2, 3, 0.01),
        TaskFinished({"id": "a", "status": "succeeded"}),
    ],
)
def test_the_records_made_each_task_are_the_dataclasses_they_were(instance: Any) -> None:
    """The engine's per-task records and events use it: each holds every field, as before."""
    cls = type(instance)
    names = [field.name for field in dataclasses.fields(cls)]
    assert list(vars(instance)) == names
    assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
    assert dataclasses.replace(instance) == instance
