"""A --prices FILE is read as carefully as a manifest's `prices:`: a model or a price written twice is
refused (PyYAML keeps the last without a word), each mistake is located by the file's line, and a model
one typo away from a model of the manifest's tasks is refused with a did-you-mean, as under `prices:`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Outcome, checked, messages

Write = Callable[..., Path]
CHAT = """
    tasks:
      - kind: chat
        model: gemini-2.5-flash
        prompt: hello
"""


# a mistake in a --prices file: refused (65), at its line, with what is wrong
@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        (  # a model written twice
            "prices.yaml",
            "gemini-2.5-flash: {text_input: 0.3, output: 2.5}\ngemini-2.5-flash: {text_input: 30, output: 250}\n",
            [
                ":2: not valid YAML or JSON: while reading a mapping found the key 'gemini-2.5-flash' twice "
                "(first on line 1)"
            ],
        ),
        (  # a price written twice, in JSON
            "p.json",
            '{"gemini-2.5-flash": {"text_input": 0.3, "output": 2.5, "output": 25}}\n',
            [":1: not valid YAML or JSON: ", "found the key 'output' twice"],
        ),
        (  # a price that is no number, under a prices: key
            "prices.yaml",
            "prices:\n  gpt-image-1: {text_input: 5, output: 40}\n  gemini-2.5-flash: {text_input: 1, output: x}\n",
            [
                ":3: prices.gemini-2.5-flash.output: must be a finite number of dollars per million tokens, "
                "not 'x'"
            ],
        ),
    ],
    ids=["model twice", "price twice in JSON", "no number"],
)
def test_a_mistake_in_a_prices_file_is_refused_at_its_line(
    name: str, text: str, said: list[str], cli: Callable[..., Outcome], write: Write
) -> None:
    manifest = write(CHAT)
    prices = write(text, name)
    outcome = cli("validate", manifest, "--prices", prices, env={"MAAS_ENDPOINT": "ep"})
    assert outcome.code == 65
    assert f"{prices}{said[0]}" in outcome.err, outcome.err
    assert all(part in outcome.err for part in said[1:]), outcome.err


def test_a_model_typo_in_a_prices_file_is_said_as_under_the_manifests_prices(
    cli: Callable[..., Outcome], write: Write
) -> None:
    """`gemini-2.5-flsh` under the manifest's `prices:` was refused with a did-you-mean; in a --prices
    file it passed without a word, and the price reached no task. A price file is shared by many
    manifests: there it is a warning, and the run goes on."""
    manifest = write(CHAT)
    prices = write(
        "gpt-image-1: {text_input: 5, output: 40}\ngemini-2.5-flsh: {text_input: 3, output: 25}\n",
        "prices.yaml",
    )
    said = "gemini-2.5-flsh: is no kind or model of this manifest's tasks; did you mean 'gemini-2.5-flash'?"
    env = {"MAAS_ENDPOINT": "ep", "MAAS_API_KEY": "k"}
    out = manifest.parent / "out"
    for command in (["validate", manifest], ["run", manifest, "--out", out, "--dry-run"]):
        outcome = cli(*command, "--prices", prices, env=env)
        assert outcome.code == 0, outcome.err
        assert f"WARNING {prices}:2: {said} (if so, its price reaches no task" in outcome.err
    inline = CHAT + "    prices:\n      gemini-2.5-flsh: {text_input: 3, output: 25}\n"
    under_prices = write(inline, "inline.yaml")
    outcome = cli("validate", under_prices, env={"MAAS_ENDPOINT": "ep"})
    assert f"{under_prices}:6: prices.{said}" in outcome.err


def test_a_sibling_of_a_model_the_prices_file_prices_too_is_no_typo(
    cli: Callable[..., Outcome], write: Write
) -> None:
    """A shared price file listing imagen-4.0-fast-generate-001 beside imagen-4.0-generate-001, for a
    manifest of the second alone, was refused (65) as a typo of it, and every night failed."""
    manifest = write("tasks:\n  - {kind: generate, model: imagen-4.0-generate-001, prompt: a fox}\n")
    prices = write(
        "imagen-4.0-generate-001: {text_input: 1, output: 40}\n"
        "imagen-4.0-fast-generate-001: {text_input: 1, output: 20}\n",
        "prices.yaml",
    )
    outcome = cli("validate", manifest, "--prices", prices, env={"MAAS_ENDPOINT": "ep"})
    assert outcome.code == 0 and "WARNING" not in outcome.err, outcome.err


def test_a_prices_file_for_many_manifests_passes_with_models_this_one_has_not(
    cli: Callable[..., Outcome], write: Write
) -> None:
    manifest = write(CHAT)
    prices = write(
        "gemini-2.0-flash: {text_input: 0.1, output: 0.4}\nhouse-model: {text_input: 1, output: 2}\n",
        "prices.yaml",
    )
    assert cli("validate", manifest, "--prices", prices, env={"MAAS_ENDPOINT": "ep"}).code == 0


def test_a_mistake_under_the_manifests_prices_is_at_its_models_line(write: Write) -> None:
    """A model name holds dots: `prices.gemini-2.5-flash.output` was looked up as the model `gemini-2`, and
    the mistake put at the `prices:` line."""
    manifest = write(
        CHAT
        + "    prices:\n      gpt-image-1: {text_input: 5, output: 40}\n      gemini-2.5-flash: {text_input: 1, output: x}\n"
    )
    found = messages(checked(manifest))
    assert found == [
        f"{manifest}:7: prices.gemini-2.5-flash.output: must be a finite number of dollars per million tokens, "
        "not 'x'"
    ]
