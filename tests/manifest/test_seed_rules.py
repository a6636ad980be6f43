"""What the seeds and the API notes fix, held exactly: an edit's multipart carries only what was asked for
it, the name of its multi-image field can be switched, and an `extra_body` nested in itself is refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from batch.jobs import registry

from batch.kind import FormField
from batch.manifest.inputs import read_file
from batch.manifest.plan import iter_tasks
from batch.manifest.tasks import TaskSpec
from tests.conftest import Outcome, checked, make_image, messages

OUTPUT_FIELDS = {"output_format", "output_compression", "moderation"}


def specs(path: Path, **overrides: object) -> dict[str, TaskSpec]:
    result = checked(path, **overrides)
    assert messages(result) == []
    return {spec.id: spec for spec in iter_tasks(result.manifest, result.builder)}


def form_of(spec: TaskSpec) -> list[FormField]:
    request = registry()[spec.kind].build_request(spec.fields, read_file)
    assert request.form is not None, "an edit is multipart"
    return list(request.form)


def text_fields(form: list[FormField]) -> dict[str, str | bytes]:
    return {f.name: f.value for f in form if f.filename is None}


def file_fields(form: list[FormField]) -> list[tuple[str, str | None]]:
    return [(f.name, f.filename) for f in form if f.filename is not None]


@pytest.mark.timeout(30)
def test_shared_output_defaults_reach_generate_but_never_an_edit(
    write: Callable[..., Path], tmp_path: Path
) -> None:
    make_image(tmp_path / "fox.png")
    manifest = write("""
        defaults:
          output_format: webp
          output_compression: 80
          moderation: low
          quality: low
        tasks:
          - {kind: generate, id: gen, prompt: a fox}
          - {kind: edit, id: plain, prompt: make it blue, image: fox.png}
    """)
    found = specs(manifest, output_format="jpeg")  # a --set without a kind is shared too
    plain = text_fields(form_of(found["plain"]))
    assert not OUTPUT_FIELDS & set(plain), plain
    assert plain["quality"] == "low", "a shared default edit knows still applies"
    generate = registry()["generate"].build_request(found["gen"].fields, read_file).json
    assert generate is not None
    assert (generate["output_format"], generate["output_compression"], generate["moderation"]) == (
        "jpeg",
        80,
        "low",
    )


@pytest.mark.timeout(30)
def test_an_edit_that_asks_for_an_output_format_sends_it(write: Callable[..., Path], tmp_path: Path) -> None:
    make_image(tmp_path / "fox.png")
    manifest = write("""
        defaults:
          output_format: webp
          edit: {moderation: low}
        tasks:
          - {kind: edit, id: asks, prompt: make it blue, image: fox.png, output_format: jpeg}
          - {kind: edit, id: kind-default, prompt: make it red, image: fox.png}
    """)
    found = specs(manifest)
    asks = text_fields(form_of(found["asks"]))
    assert asks["output_format"] == "jpeg" and asks["moderation"] == "low"
    by_kind = text_fields(form_of(found["kind-default"]))
    assert by_kind["moderation"] == "low" and "output_format" not in by_kind


@pytest.mark.timeout(30)
def test_several_images_go_as_image_brackets_or_as_repeated_image_when_configured(
    write: Callable[..., Path], tmp_path: Path
) -> None:
    for name in ("a.png", "b.png"):
        make_image(tmp_path / name)
    manifest = write("""
        defaults:
          edit: {prompt: combine them}
        tasks:
          - {kind: edit, id: brackets, image: [a.png, b.png]}
          - {kind: edit, id: repeated, image: [a.png, b.png], image_field: image}
          - {kind: edit, id: single, image: a.png, image_field: "image[]"}
    """)
    found = specs(manifest)
    assert file_fields(form_of(found["brackets"])) == [("image[]", "a.png"), ("image[]", "b.png")]
    repeated = form_of(found["repeated"])
    assert file_fields(repeated) == [("image", "a.png"), ("image", "b.png")]
    assert "image_field" not in text_fields(repeated), "a setting of the form is never sent"
    assert file_fields(form_of(found["single"])) == [("image", "a.png")], "one image goes as `image`"


@pytest.mark.timeout(30)
def test_image_field_switch_from_shared_defaults_and_its_wrong_values(
    write: Callable[..., Path], tmp_path: Path, cli: Callable[..., Outcome]
) -> None:
    for name in ("a.png", "b.png"):
        make_image(tmp_path / name)
    shared = write(
        """
        defaults: {image_field: image}
        tasks:
          - {kind: edit, id: two, prompt: combine, image: [a.png, b.png]}
        """,
        "shared.yaml",
    )
    assert file_fields(form_of(specs(shared)["two"])) == [("image", "a.png"), ("image", "b.png")]
    wrong = write(
        """
        tasks:
          - kind: edit
            prompt: combine
            image: [a.png, b.png]
            image_field: images
        """,
        "wrong.yaml",
    )
    outcome = cli("validate", wrong, env={"MAAS_ENDPOINT": "ep"})
    assert outcome.code == 65
    assert f"{wrong}:5: tasks[0]: image_field: must be one of image[], image" in outcome.err


@pytest.mark.timeout(30)
def test_extra_body_nested_in_extra_body_is_refused_with_a_hint(
    write: Callable[..., Path], cli: Callable[..., Outcome]
) -> None:
    manifest = write("""
        tasks:
          - kind: chat
            model: gemini-2.5-flash
            prompt: hi
            extra_body:
              extra_body:
                google: {thinking_config: {thinking_budget: 0}}
          - kind: chat
            model: gemini-2.5-flash
            prompt: fine
            extra_body:
              google: {thinking_config: {thinking_budget: 0}}
    """)
    outcome = cli("validate", manifest, env={"MAAS_ENDPOINT": "ep"})
    assert outcome.code == 65
    assert (
        f"{manifest}:6: tasks[0]: extra_body.extra_body: nested once too often; "
        "write extra_body: {google: ...}" in outcome.err
    )
    assert "tasks[1]" not in outcome.err and "1 problem;" in outcome.err
