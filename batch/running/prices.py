"""What tokens cost: a price table per model (configuration, not code), and the arithmetic on it.

A price is in US dollars per million tokens, for text input, image input and output. The table comes from
the manifest (`prices:`), a `--prices FILE` (YAML or JSON, the same shape), and the defaults below, in
that order of precedence.

The defaults are list prices as the model makers publish them. OpenAI's model pages were read for
gpt-image-1 and gpt-image-1-mini, and Google's pricing for Gemini 2.5 Flash and Flash Image; the copies
read were from 2026-11. A MaaS reseller charges its own prices: set yours under `prices:`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from batch.errors import ManifestError, Problem
from batch.kind import TokenCounts

PRICES_SOURCE = (
    "list prices per million tokens from OpenAI's model pages (gpt-image-1, gpt-image-1-mini) and Google's "
    "Gemini pricing (gemini-2.5-flash, gemini-2.5-flash-image), read 2026-11; your provider may charge "
    "otherwise: set prices: in the manifest or --prices FILE"
)
FIELDS = ("text_input", "image_input", "output")
OPTIONAL_FIELDS = ("cached_input",)  # absent: cached input tokens cost the text input price


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens. Output includes thinking; `cached_input` prices prompt tokens served
    from a cache (None: the text input price)."""

    text_input: float
    image_input: float
    output: float
    cached_input: float | None = None

    def cost(self, tokens: TokenCounts) -> float:
        cached = min(tokens.cached_input, max(0, tokens.input - tokens.image_input))
        text = max(0, tokens.input - tokens.image_input - cached)
        cached_price = self.text_input if self.cached_input is None else self.cached_input
        return (
            text * self.text_input
            + cached * cached_price
            + tokens.image_input * self.image_input
            + tokens.output * self.output
        ) / 1_000_000


DEFAULT_PRICES: Mapping[str, Price] = {
    "gpt-image-1": Price(text_input=5.00, image_input=10.00, output=40.00),
    "gpt-image-1-mini": Price(text_input=2.00, image_input=2.50, output=8.00),
    "gemini-2.5-flash": Price(text_input=0.30, image_input=0.30, output=2.50),
    "gemini-2.5-flash-image": Price(text_input=0.30, image_input=0.30, output=30.00),
}


DEFAULT_ORIGIN = "built-in list price, read 2026-11"


class PriceTable:
    """Model name -> Price (and where each came from); `cost` is None for a model with no price."""

    def __init__(
        self, prices: Mapping[str, Price] | None = None, origins: Mapping[str, str] | None = None
    ) -> None:
        self.prices = dict(DEFAULT_PRICES if prices is None else prices)
        self.origins = (
            dict(origins or {}) if prices is not None else dict.fromkeys(self.prices, DEFAULT_ORIGIN)
        )

    def price(self, model: str | None) -> Price | None:
        return self.prices.get(model) if model else None

    def cost(self, model: str | None, tokens: TokenCounts) -> float | None:
        price = self.price(model)
        return None if price is None else price.cost(tokens)

    def with_overrides(self, overrides: Mapping[str, Price], origin: str) -> PriceTable:
        return PriceTable({**self.prices, **overrides}, {**self.origins, **dict.fromkeys(overrides, origin)})

    def describe(self, models: Iterable[str]) -> list[str]:
        """A line per model: its prices and where they came from."""
        lines = []
        for model in sorted(set(models)):
            price = self.price(model)
            if price is None:
                lines.append(f"  {model:<25} no price: add it under prices: or in a --prices FILE")
            else:
                cached = "" if price.cached_input is None else f" (cached ${price.cached_input:g})"
                lines.append(
                    f"  {model:<25} ${price.text_input:g}{cached} / ${price.image_input:g} / "
                    f"${price.output:g}  ({self.origins.get(model, '?')})"
                )
        return lines


def parse_prices(data: Any, where: str) -> tuple[dict[str, Price], list[str]]:
    """`{model: {text_input, image_input, output}}` into Prices, and a message for each mistake, which
    names the key under `where` (a --prices file's mistakes are located by the file: `where` is "")."""
    if not isinstance(data, Mapping):
        return {}, [f"{where or 'the file'}: must be a mapping of model names to prices"]
    found: dict[str, Price] = {}
    problems = []
    for model, entry in data.items():
        at = f"{where}.{model}" if where else str(model)
        if not isinstance(entry, Mapping):
            problems.append(f"{at}: must be a mapping with text_input, image_input and output")
            continue
        unknown = sorted(set(entry) - set(FIELDS) - set(OPTIONAL_FIELDS))
        if unknown:
            names = ", ".join(FIELDS + OPTIONAL_FIELDS)
            problems.append(f"{at}: unknown keys {unknown}; prices are {names}")
            continue
        values: dict[str, float] = {}
        for name in FIELDS + OPTIONAL_FIELDS:
            if name in OPTIONAL_FIELDS and entry.get(name) is None:
                continue
            value = entry.get(name, entry.get("text_input") if name == "image_input" else None)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                # NaN (YAML's .nan) compares false with everything: it would turn every cost, and so
                # every budget, into NaN; an infinite price into NaN too, once multiplied by 0 tokens
                problems.append(
                    f"{at}.{name}: must be a finite number of dollars per million tokens, not {value!r}"
                )
                break
            values[name] = float(value)
        else:
            found[str(model)] = Price(**values)
    return found, problems


PRICES_FILE_MAX = 16 * 2**20  # bytes of a --prices file: a table of thousands of models is a few hundred KB


@dataclass(frozen=True)
class PricesFile:
    """A --prices file as read: its prices, its mistakes (located by file, line and model), and the line
    of each model's key."""

    prices: dict[str, Price]
    problems: list[Problem]
    lines: dict[str, int]


def load_prices(path: Path) -> PricesFile:
    """A --prices file: YAML or JSON, `{model: {text_input, image_input, output}}` (or under `prices:`),
    read as a YAML manifest is: a model or a price written twice is refused, not the last one taken."""
    from batch.manifest.read import LocatedDict
    from batch.manifest.regular import open_regular
    from batch.manifest.yamlfile import parse_document  # PyYAML only with --prices (or a YAML manifest)
    from batch.output.files import reason

    name = str(path)
    try:
        with open_regular(path) as handle:  # a FIFO blocked for ever, /dev/zero filled memory
            raw = handle.read(PRICES_FILE_MAX + 1)
        if len(raw) > PRICES_FILE_MAX:
            message = f"is larger than {PRICES_FILE_MAX // 2**20} MB: no price table is"
            return PricesFile({}, [Problem(name, None, message)], {})
        data = parse_document(raw.decode("utf-8"), name)
    except UnicodeDecodeError:
        return PricesFile({}, [Problem(name, None, "cannot be read: not UTF-8 text")], {})
    except OSError as exc:
        return PricesFile({}, [Problem(name, None, f"cannot be read: {reason(exc)}")], {})
    except ManifestError as exc:
        problems = [replace(p, message=p.message.replace("YAML", "YAML or JSON", 1)) for p in exc.problems]
        return PricesFile({}, problems, {})
    under = isinstance(data, Mapping) and set(data) == {"prices"}
    table = data["prices"] if under else data
    found, mistakes = parse_prices(table, "prices" if under else "")
    lines = dict(table.key_lines) if isinstance(table, LocatedDict) else {}
    problems = []
    for mistake in mistakes:
        where, _, message = mistake.partition(": ")
        model = model_of(where.removeprefix("prices.") if under else where, lines)
        if model is None:
            problems.append(Problem(name, None, mistake))
        else:
            problems.append(Problem(name, lines[model], message, field=where))
    return PricesFile(found, problems, {str(model): line for model, line in lines.items()})


def model_of(where: str, models: Iterable[Any]) -> Any:
    """The model that a mistake's `gemini-2.5-flash.output` is of (names hold dots: the longest model
    it starts with), or None."""
    named = [model for model in models if where == str(model) or where.startswith(f"{model}.")]
    return max(named, key=lambda model: len(str(model)), default=None)


def money(value: float | None) -> str:
    """$1,234.56 (or 'unknown'); small amounts keep their cents' fractions."""
    if value is None:
        return "unknown (no price for a model)"
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"
