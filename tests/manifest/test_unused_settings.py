"""A setting that would change nothing is an error with a did-you-mean, not a silence: `--set` and
`--endpoint` keys that reach no task, chat fields and model names one typo away from known ones."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from batch.manifest.checked import check
from batch.manifest.plan import iter_tasks
from batch.manifest.tasks import BuildSettings
from tests.conftest import KEY, Outcome, checked, messages, registry
from tests.stub import stub_server

Write = Callable[..., Path]
Cli = Callable[..., Outcome]

MIXED = """
    defaults:
      generate: {model: gpt-image-1}
    tasks:
      - kind: generate
        prompt: a fox
        quality: low
      - kind: chat
        model: gemini-2.5-flash
        prompt: hello
"""

CHAT_ONLY = """
    tasks:
      - kind: chat
        model: gemini-2.5-flash
        prompt: hello
"""


def settings_problems(path: Path, **settings: object) -> list[str]:
    build = BuildSettings(env_endpoint="ep", **settings)  # type: ignore[arg-type]
    return [str(problem) for problem in check(path, build, registry()).plan.problems]


def found_in(path: Path) -> list[str]:
    """The problems of the manifest at `path`, validated as `run` does, its folder left out."""
    return [message.replace(f"{path.parent}/", "") for message in messages(checked(path))]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"qualty": "low"}, "--set: qualty: is not a field of any task kind; did you mean 'quality'?"),
        ({"gen": {"quality": "low"}}, "--set: gen.quality: 'gen' is not a task kind"),
        ({"chat": 3}, "--set: chat: is a task kind; set one of its fields with --set chat.FIELD=VALUE"),
        (
            {"edit": {"quality": "low"}},
            "--set: edit: this manifest has no edit tasks (its tasks: chat, generate)",
        ),
    ],
)
def test_a_set_key_that_reaches_no_task_is_named_with_a_guess(
    write: Write, overrides: dict[str, object], expected: str
) -> None:
    found = settings_problems(write(MIXED), overrides=overrides)
    assert found and found[0].startswith(expected), found
    assert len(found) == 1, found


def test_a_field_of_a_kind_the_manifest_does_not_hold_is_refused(write: Write) -> None:
    """The overnight example's `--set quality=high` on a manifest of chat tasks only: a night of drafts."""
    found = settings_problems(write(CHAT_ONLY), overrides={"quality": "high"})
    assert found == [
        "--set: quality: is a field of edit, generate tasks; this manifest has none (its tasks: chat)"
    ]


def test_a_set_that_reaches_a_task_is_applied_and_not_refused(write: Write) -> None:
    path = write(MIXED)
    result = check(path, BuildSettings(overrides={"quality": "high"}, env_endpoint="ep"), registry())
    assert result.plan.ok, messages(result)
    specs = {spec.kind: spec for spec in iter_tasks(result.manifest, result.builder)}
    assert specs["generate"].fields["quality"] == "high"
    assert "quality" not in specs["chat"].fields


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        ({"chatt": "x"}, "--endpoint: chatt: is neither a task kind nor a model of this manifest"),
        ({"edit": "x"}, "--endpoint: edit: this manifest has no edit tasks"),
        ({"gpt-image-2": "x"}, "did you mean 'gpt-image-1'?"),
    ],
)
def test_an_endpoint_key_that_chooses_no_task_is_refused(
    write: Write, endpoints: dict[str, str], expected: str
) -> None:
    found = settings_problems(write(MIXED), endpoints=endpoints)
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize("key", ["*", "chat", "gemini-2.5-flash"])
def test_an_endpoint_for_all_a_kind_or_a_model_of_the_manifest_is_fine(write: Write, key: str) -> None:
    assert settings_problems(write(MIXED), endpoints={key: "x"}) == []


def test_a_set_error_names_set_not_the_manifest_line_it_replaced(write: Write) -> None:
    path = write(MIXED)
    found = settings_problems(path, overrides={"quality": "best"})
    assert len(found) == 1
    assert found[0].startswith("--set: tasks[0]: quality: must be one of"), found
    assert "job.yaml" not in found[0]


def test_a_chat_field_one_typo_away_is_refused_unless_allowed(write: Write) -> None:
    path = write("""
        tasks:
          - kind: chat
            model: gemini-2.5-flash
            prompt: hello
            temprature: 0.2
            top_k: 40
    """)
    found = found_in(path)
    assert len(found) == 2, found
    assert found[0].startswith(
        "job.yaml:5: tasks[0]: temprature: is not a chat-completions field; did you mean 'temperature'?"
    )
    assert "top_k: is not a chat-completions field; did you mean 'top_p'?" in found[1]
    allowed = check(path, BuildSettings(env_endpoint="ep", allow_unknown=True), registry())
    assert allowed.plan.ok, messages(allowed)


def test_a_chat_field_one_typo_away_from_a_tasks_own_key_is_refused(write: Write) -> None:
    """`endpiont` and `metaa` would be sent in the body (chat passes unknown fields), the task going to
    the default endpoint and its meta lost, without a word."""
    path = write("""
        tasks:
          - {kind: chat, id: a, model: gemini-2.5-flash, prompt: hi, endpiont: my-other, metaa: {sku: 1}}
    """)
    found = found_in(path)
    assert len(found) == 2, found
    assert "endpiont: is not a chat-completions field; did you mean 'endpoint'?" in found[0]
    assert "metaa: is not a chat-completions field; did you mean 'meta'?" in found[1]


def test_a_key_of_endpoints_or_prices_one_typo_away_from_a_model_of_the_tasks_is_refused(
    write: Write,
) -> None:
    """`endpoints: {gemini-2.5-flsh: special}` sent the tasks to the fallback endpoint, and `prices:
    {gpt-image1: ...}` left the built-in price in force (for budgets too), both without a word."""
    path = write("""
        endpoints:
          chat: default-gemini
          gemini-2.5-flsh: special-gemini
          caht: other
        prices:
          gpt-image1: {text_input: 1, output: 2}
        tasks:
          - {kind: chat, model: gemini-2.5-flash, prompt: hi}
          - {kind: generate, model: gpt-image-1, prompt: a fox}
    """)
    found = found_in(path)
    assert len(found) == 3, found
    assert found[0].startswith("job.yaml:3: endpoints.gemini-2.5-flsh: is no kind or model of this manifest")
    assert found[0].endswith("did you mean 'gemini-2.5-flash'?")
    assert found[1].startswith("job.yaml:4: endpoints.caht:") and found[1].endswith("did you mean 'chat'?")
    assert found[2].startswith("job.yaml:6: prices.gpt-image1:") and "did you mean 'gpt-image-1'?" in found[2]


def test_endpoints_and_prices_for_other_kinds_and_models_pass(write: Write) -> None:
    """A manifest reusing one endpoints and prices block: keys far from its tasks', or known ones."""
    path = write("""
        endpoints: {generate: gen-ep, edit: edit-ep, gpt-image-1-mini: mini-ep, my-house-model: house, gemini-2.0-flash: old}
        prices:
          gpt-image-1-mini: {text_input: 1, output: 2}
          my-house-model: {text_input: 1, output: 4}
        tasks:
          - {kind: chat, model: gemini-2.5-flash, prompt: hi}
    """)
    assert checked(path).plan.ok, messages(checked(path))


def test_a_chat_field_far_from_every_known_one_passes_as_it_is(write: Write) -> None:
    path = write("""
        tasks:
          - kind: chat
            model: gemini-2.5-flash
            prompt: hello
            safety_settings: [{category: HARM_CATEGORY_HATE_SPEECH, threshold: BLOCK_NONE}]
    """)
    assert checked(path).plan.ok


@pytest.mark.parametrize(
    ("model", "guess"),
    [("gpt-image1", "gpt-image-1"), ("GPT_Image-1", "gpt-image-1"), ("gemini-2.5-flsh", "gemini-2.5-flash")],
)
def test_a_model_one_typo_away_from_a_priced_one_is_refused(write: Write, model: str, guess: str) -> None:
    path = write(f"""
        tasks:
          - kind: generate
            prompt: a fox
            model: {model}
    """)
    found = found_in(path)
    assert found == [
        f"job.yaml:4: tasks[0]: model: is not a known model; did you mean {guess!r}? (a new model: give its "
        f"price under prices:, or pass --allow-unknown) (got {model!r})"
    ]


def test_a_new_model_passes_when_priced_allowed_or_far_from_known_ones(write: Write) -> None:
    typo = """
        tasks:
          - kind: generate
            prompt: a fox
            model: gpt-image-2
    """
    assert not checked(write(typo)).plan.ok
    assert check(write(typo), BuildSettings(env_endpoint="ep", allow_unknown=True), registry()).plan.ok
    priced = (
        typo.rstrip(" ")
        + "        prices:\n          gpt-image-2: {text_input: 5, image_input: 10, output: 40}\n"
    )
    assert checked(write(priced)).plan.ok
    by_flag = check(write(typo), BuildSettings(env_endpoint="ep", known_models=("gpt-image-2",)), registry())
    assert by_flag.plan.ok
    assert checked(write(typo.replace("gpt-image-2", "flux-schnell"))).plan.ok


def test_extra_fields_of_a_chat_are_sent_as_they_are(write: Write, tmp_path: Path) -> None:
    path = write("""
        tasks:
          - kind: chat
            model: gemini-2.5-flash
            prompt: hello
            extra: {top_k: 40, temprature_scale: 2}
    """)
    result = checked(path)
    assert result.plan.ok, messages(result)
    spec = next(iter_tasks(result.manifest, result.builder))
    body = registry()["chat"].build_request(spec.fields, lambda p: b"").json
    assert body is not None
    assert body["top_k"] == 40 and body["temprature_scale"] == 2 and "extra" not in body
    shadow = write("""
        tasks:
          - kind: chat
            model: gemini-2.5-flash
            prompt: hello
            extra: {temperature: 3}
    """)
    assert found_in(shadow) == [
        "job.yaml:5: tasks[0]: extra.temperature: is a checked field; set it directly, not under extra (got 3)"
    ]


def test_the_command_line_refuses_a_typo_with_exit_65_before_sending_anything(
    write: Write, cli: Cli, tmp_path: Path
) -> None:
    path = write(MIXED)

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response({"data": []})

    with stub_server(answer) as stub:
        env = {"MAAS_API_KEY": KEY, "MAAS_BASE_URL": stub.base_url, "MAAS_ENDPOINT": "ep"}
        refused = cli("run", path, "--out", tmp_path / "out", "--set", "qualty=high", env=env)
        assert refused.code == 65, refused.err
        assert "--set: qualty: is not a field of any task kind; did you mean 'quality'?" in refused.err
        assert stub.requests == []
        listed = cli("validate", path, "--set", "chat.temprature=0", "--allow-unknown", env=env)
        assert listed.code == 0, listed.err
        refused = cli("validate", path, "--set", "chat.temprature=0", env=env)
        assert refused.code == 65
        assert (
            "--set: tasks[1]: temprature: is not a chat-completions field; did you mean 'temperature'?"
            in refused.err
        )


def test_a_set_that_reaches_no_task_is_said_beside_a_mistake_under_defaults(write: Write) -> None:
    """A typo under `defaults:` hid the `--set` and `endpoints:` mistakes until it was mended: one night's
    fix, then the next night's refusal for the next mistake. Every mistake is said at once."""
    path = write("""
        defaults:
          qualty: low
        endpoints:
          chta: ep-x
        tasks:
          - {kind: chat, id: a, model: gemini-2.5-flash, prompt: hi}
    """)
    found = settings_problems(path, overrides={"temprature": 0.5})
    assert any("defaults.qualty" in message for message in found), found
    assert any("--set: temprature" in message and "'temperature'" in message for message in found), found
    assert any("endpoints.chta" in message and "'chat'" in message for message in found), found
