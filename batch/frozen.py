"""A frozen dataclass made once or more a task, built faster: `@quick_init` over `@dataclass(frozen=True)`.

A frozen dataclass's own __init__ sets each field through `object.__setattr__` (its __setattr__ refuses),
about 0.3 us a field: a task's TaskSpec, manifest Entry, token counts, answer and events cost some 15 us
a task that way. `quick_init` gives the class an __init__ of the same signature that sets the instance's
__dict__ in one step. Everything else is the dataclass's: fields, defaults, repr, eq, hash, `replace`,
and the instance stays frozen.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

_Frozen = TypeVar("_Frozen")


def quick_init(cls: type[_Frozen]) -> type[_Frozen]:
    """`cls`, a frozen dataclass with no __post_init__, InitVar or field left out of __init__, with an
    __init__ that takes the same arguments and sets them all at once."""
    params = getattr(cls, "__dataclass_params__", None)
    frozen = params is not None and params.frozen
    if not frozen or hasattr(cls, "__post_init__") or hasattr(cls, "__slots__"):
        raise TypeError(
            f"{cls.__name__}: quick_init is for a frozen dataclass without __post_init__ or slots"
        )
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if any(not field.init or field.kw_only for field in fields):
        raise TypeError(f"{cls.__name__}: quick_init takes every field as an argument of __init__")
    names: dict[str, Any] = {"__object_setattr": object.__setattr__}
    arguments, made = [], []
    for field in fields:
        name = field.name
        if field.default_factory is not dataclasses.MISSING:
            names[f"__factory_{name}"] = field.default_factory
            arguments.append(f"{name}=__unset")
            made.append(f"{name!r}: __factory_{name}() if {name} is __unset else {name}")
        elif field.default is not dataclasses.MISSING:
            names[f"__default_{name}"] = field.default
            arguments.append(f"{name}=__default_{name}")
            made.append(f"{name!r}: {name}")
        else:
            arguments.append(name)
            made.append(f"{name!r}: {name}")
    names["__unset"] = _UNSET
    # a closure over `names`, as dataclasses builds its own __init__: the defaults are bound once
    source = (
        f"def __create_fn__({', '.join(names)}):\n"
        f"  def __init__(self, {', '.join(arguments)}):\n"
        f"    __object_setattr(self, '__dict__', {{{', '.join(made)}}})\n"
        f"  return __init__\n"
    )
    scope: dict[str, Any] = {}
    exec(source, {}, scope)
    init = scope["__create_fn__"](**names)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    init.__annotations__ = dict(cls.__init__.__annotations__)
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


class _Unset:
    """A default_factory's argument left out (None may be given)."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()
