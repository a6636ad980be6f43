"""Manifest validation: every API rule, located by file, line and field, all reported at once."""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from batch.jobs import registry
from PIL import Image

from batch.errors import ManifestError
from batch.manifest.checked import check
from batch.manifest.plan import iter_tasks
from batch.manifest.tasks import BuildSettings
from tests.conftest import Outcome, checked, make_image, make_mask, messages

Write = Callable[..., Path]


def one_problem(path: Path, **kwargs: object) -> str:
    result = checked(path, **kwargs)
    found = messages(result)
    assert len(found) == 1, found
    return found[0]


def test_valid_manifest_counts_tasks_per_kind_and_model(write: Write, tmp_path: Path) -> None:
    make_image(tmp_path / "fox.png")
    path = write("""
        defaults:
          model: gpt-image-1
        endpoints:
          generate: ep-img
          edit: ep-img
          gemini-2.5-flash: ep-chat
        tasks:
          - kind: generate
            prompt: a fox
          - kind: generate
            prompt: an owl
            size: 1536x1024
          - kind: edit
            prompt: add a hat
            image: fox.png
          - kind: chat
            model: gemini-2.5-flash
            prompt: describe it
            images: [fox.png]
    """)
    result = checked(path)
    assert result.plan.ok, messages(result)
    assert result.plan.total == 4
    assert dict(result.plan.counts) == {
        ("generate", "gpt-image-1", "ep-img"): 2,
        ("edit", "gpt-image-1", "ep-img"): 1,
        ("chat", "gemini-2.5-flash", "ep-chat"): 1,
    }


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("n", "11", "must be between 1 and 10"),
        ("n", "0", "must be between 1 and 10"),
        ("n", "'2'", "must be an integer, not a string"),
        ("n", "true", "must be an integer, not a boolean"),
        ("size", "512x512", "must be one of 1024x1024, 1536x1024, 1024x1536, auto"),
        ("quality", "ultra", "must be one of auto, high, medium, low"),
        ("background", "clear", "must be one of transparent, opaque, auto"),
        ("output_format", "gif", "must be one of png, jpeg, webp"),
        ("output_compression", "101", "must be between 0 and 100"),
        ("moderation", "none", "must be one of low, auto"),
        ("user", "42", "must be a string, not an integer"),
        ("model", "[a]", "must be a string, not a list"),
    ],
)
def test_generate_field_rules_are_located(write: Write, field: str, value: str, expected: str) -> None:
    path = write(f"""
        tasks:
          - kind: generate
            prompt: a fox
            {field}: {value}
    """)
    problem = one_problem(path)
    assert problem.startswith(f"{path}:4: tasks[0]: {field}: {expected}")
    assert "(got " in problem


def test_prompt_is_required_non_empty_and_at_most_32000_characters(write: Write) -> None:
    long_prompt = "x" * 32_001
    path = write(f"""
        tasks:
          - kind: generate
          - kind: generate
            prompt: "  "
          - kind: generate
            prompt: {long_prompt}
          - kind: generate
            prompt: {"y" * 32_000}
    """)
    found = messages(checked(path))
    assert found[0] == f"{path}:2: tasks[0]: prompt: is required"
    assert found[1].startswith(f"{path}:4: tasks[1]: prompt: must not be empty")
    assert found[2].startswith(f"{path}:6: tasks[2]: prompt: is 32,001 characters long; the limit is 32,000")
    assert "[32001 chars]" in found[2]  # the value is shortened, not dumped
    assert len(found) == 3


def test_transparent_background_needs_png_or_webp(write: Write) -> None:
    path = write("""
        tasks:
          - {kind: generate, prompt: a, background: transparent, output_format: jpeg}
          - {kind: generate, prompt: b, background: transparent, output_format: webp}
          - {kind: generate, prompt: c, background: transparent}
    """)
    assert one_problem(path).startswith(
        f"{path}:2: tasks[0]: background: transparent needs output_format png or webp"
    )


def test_output_compression_with_png_is_refused_unless_it_is_the_default(write: Write) -> None:
    path = write("""
        tasks:
          - {kind: generate, prompt: a, output_compression: 50}
          - {kind: generate, prompt: b, output_compression: 50, output_format: webp}
          - {kind: generate, prompt: c, output_compression: 100, output_format: png}
    """)
    assert one_problem(path).startswith(
        f"{path}:2: tasks[0]: output_compression: only applies to jpeg and webp"
    )


def test_unknown_field_suggests_the_near_one_and_extra_passes_through(write: Write) -> None:
    path = write("""
        tasks:
          - kind: generate
            prompt: a fox
            qualty: high
          - kind: generate
            prompt: an owl
            extra: {partial_images: 2}
    """)
    assert "qualty: is not a known field; did you mean 'quality'?" in one_problem(path)


def test_an_edits_extra_list_or_mapping_is_refused_not_sent_as_python_text(
    write: Write, tmp_path: Path
) -> None:
    """An edit's extra fields go as multipart text: {'a': 1} (Python's str) reached the server, which
    reads no such thing; the edit endpoint has no field of that shape. Text, numbers and booleans pass,
    and generate's JSON body takes any shape."""
    make_image(tmp_path / "photo.png")
    path = write("""
        tasks:
          - kind: edit
            prompt: a
            image: photo.png
            extra: {a: {b: 1}, c: [1, 2], d: null, e: '{"b": 1}', f: 2, g: 0.5, h: true}
          - {kind: generate, prompt: b, extra: {a: {b: 1}, c: [1, 2]}}
    """)
    found = messages(checked(path))
    rule = "is a field of an edit's multipart form, which takes text: a string, a number or a boolean"
    hint = "(to send JSON, write it as a string)"
    assert found == [
        f"{path}:5: tasks[0]: extra.a: {rule}, not a mapping {hint} (got {{'b': 1}})",
        f"{path}:5: tasks[0]: extra.c: {rule}, not a list {hint} (got [1, 2])",
        f"{path}:5: tasks[0]: extra.d: {rule}, not null {hint} (got None)",
    ]


def test_an_edit_of_a_phone_cameras_jpeg_passes(write: Write, tmp_path: Path) -> None:
    """Pillow names a JPEG with more pictures after the first (as phone cameras write) MPO: an edit
    refused it as no PNG, WebP or JPEG, though it is sent as the image/jpeg it is and the API takes it."""
    first = Image.new("RGB", (64, 64), (1, 2, 3))
    first.save(tmp_path / "phone.jpg", "MPO", save_all=True, append_images=[Image.new("RGB", (64, 64))])
    with Image.open(tmp_path / "phone.jpg") as image:
        assert image.format == "MPO"
    path = write("tasks:\n  - {kind: edit, prompt: a, image: [phone.jpg, phone.jpg]}\n")
    assert messages(checked(path)) == []


def test_unknown_kind_and_missing_kind(write: Write) -> None:
    path = write("""
        tasks:
          - kind: generat
            prompt: a
          - prompt: b
    """)
    found = messages(checked(path))
    assert found[0].startswith(f"{path}:2: tasks[0]: kind: is not a task kind; did you mean 'generate'?")
    assert found[1].startswith(f"{path}:4: tasks[1]: kind: is required: one of generate, edit, chat")


def test_edit_images_checked_by_content_size_and_count(write: Write, tmp_path: Path) -> None:
    make_image(tmp_path / "ok.jpg", fmt="JPEG")
    (tmp_path / "fake.png").write_bytes(b"this is not an image")
    make_image(tmp_path / "anim.png", fmt="GIF")  # a GIF named .png
    big = make_image(tmp_path / "big.png")
    with big.open("r+b") as handle:  # a sparse 26 MB file whose header is still a PNG
        handle.truncate(26 * 2**20)
    many = ", ".join(["ok.jpg"] * 17)
    path = write(f"""
        tasks:
          - {{kind: edit, prompt: a, image: missing.png}}
          - {{kind: edit, prompt: b, image: fake.png}}
          - {{kind: edit, prompt: c, image: [ok.jpg, anim.png]}}
          - {{kind: edit, prompt: d, image: big.png}}
          - {{kind: edit, prompt: e, image: [{many}]}}
          - {{kind: edit, prompt: f}}
          - {{kind: edit, prompt: g, image: [ok.jpg, ok.jpg]}}
    """)
    found = messages(checked(path))
    assert found[0].startswith(f"{path}:2: tasks[0]: image: does not exist (got '")
    assert re.search(r"/missing\.png'( \[\d+ chars\])?\)$", found[0])  # a long path is shortened
    assert found[1].startswith(
        f"{path}:3: tasks[1]: image: must be a PNG, WebP or JPEG file (by content); found not"
    )
    assert found[2].startswith(
        f"{path}:4: tasks[2]: image[1]: must be a PNG, WebP or JPEG file (by content); found GIF"
    )
    assert found[3].startswith(f"{path}:5: tasks[3]: image: is 26.0 MB; each image must be under 25 MB")
    assert found[4].startswith(f"{path}:6: tasks[4]: image: names 17 files; the limit is 16")
    assert found[5].startswith(f"{path}:7: tasks[5]: image: is required")
    assert len(found) == 6


def test_edit_mask_must_be_png_with_alpha_of_the_first_images_size(write: Write, tmp_path: Path) -> None:
    make_image(tmp_path / "photo.png", size=(64, 64))
    make_mask(tmp_path / "good.png", size=(64, 64))
    make_mask(tmp_path / "small.png", size=(32, 32))
    make_image(tmp_path / "opaque.png", size=(64, 64))
    make_image(tmp_path / "mask.jpg", fmt="JPEG")
    # an alpha channel with no pixel of alpha 0 marks nothing to edit: the edit would be paid for nothing
    Image.new("RGBA", (64, 64), (0, 0, 0, 1)).save(tmp_path / "solid.png")
    clear_la = Image.new("LA", (64, 64), (0, 255))
    clear_la.putpixel((5, 5), (0, 0))  # one clear pixel is enough
    clear_la.save(tmp_path / "la.png")
    path = write("""
        tasks:
          - {kind: edit, prompt: a, image: photo.png, mask: good.png}
          - {kind: edit, prompt: b, image: photo.png, mask: small.png}
          - {kind: edit, prompt: c, image: photo.png, mask: opaque.png}
          - {kind: edit, prompt: d, image: photo.png, mask: mask.jpg}
          - {kind: edit, prompt: e, image: photo.png, mask: solid.png}
          - {kind: edit, prompt: f, image: photo.png, mask: la.png}
    """)
    found = messages(checked(path))
    assert found[0].startswith(
        f"{path}:3: tasks[1]: mask: is 32x32 but the first image is 64x64; they must match"
    )
    assert found[1].startswith(f"{path}:4: tasks[2]: mask: must have an alpha channel (mode is RGB)")
    assert found[2].startswith(f"{path}:5: tasks[3]: mask: must be a PNG file; found JPEG")
    assert found[3].startswith(f"{path}:6: tasks[4]: mask: has no fully transparent pixel (alpha 0)")
    assert len(found) == 4


def test_mask_of_4_mb_is_refused(write: Write, tmp_path: Path) -> None:
    make_image(tmp_path / "photo.png")
    mask = make_mask(tmp_path / "mask.png")
    with mask.open("r+b") as handle:
        handle.truncate(4 * 2**20)
    path = write("tasks:\n  - {kind: edit, prompt: a, image: photo.png, mask: mask.png}\n")
    assert "mask: is 4.0 MB; the mask must be under 4 MB" in one_problem(path)


def test_chat_messages_are_checked_and_unknown_fields_pass(write: Write, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    path = write("""
        tasks:
          - kind: chat
            model: gemini-2.5-flash
            messages: [{role: robot, content: hi}]
          - kind: chat
            model: gemini-2.5-flash
            messages:
              - role: user
                content:
                  - {type: text, text: look}
                  - {type: image_url, image_url: {url: notes.txt}}
                  - {type: image_url, image_url: {url: gone.png}}
          - kind: chat
            model: gemini-2.5-flash
            prompt: hi
            temperature: 3
            some_future_field: {x: 1}
          - kind: chat
            prompt: no model
          - kind: chat
            model: gemini-2.5-flash
            prompt: both
            messages: [{role: user, content: hi}]
    """)
    found = messages(checked(path))
    assert found[0].startswith(f"{path}:4: tasks[0]: messages[0].role: must be one of system, user")
    assert found[1].startswith(
        f"{path}:11: tasks[1]: messages[0].content[1].image_url.url: is not an image file"
    )
    assert found[2].startswith(f"{path}:12: tasks[1]: messages[0].content[2].image_url.url: does not exist")
    assert found[3].startswith(f"{path}:16: tasks[2]: temperature: must be between 0 and 2")
    assert found[4].startswith(f"{path}:18: tasks[3]: model: is required")
    assert found[5].startswith(f"{path}:22: tasks[4]: prompt: give either messages or prompt/images/system")
    assert len(found) == 6


def test_a_chat_image_the_api_would_refuse_is_refused_before_anything_is_sent(
    write: Write, tmp_path: Path
) -> None:
    """The seed takes a data:image/...;base64, URL or a gs:// URI (and a local path is sent as the first):
    an http(s) link, a file:// URL or a data: URL of text passed validation and met a 400 in the night."""
    make_image(tmp_path / "cat.png")
    path = write("""
        tasks:
          - {kind: chat, model: gemini-2.5-flash, prompt: a, images: ["https://example.com/cat.png"]}
          - kind: chat
            model: gemini-2.5-flash
            messages:
              - role: user
                content:
                  - {type: text, text: b}
                  - {type: image_url, image_url: {url: "HTTP://example.com/dog.jpg"}}
          - {kind: chat, model: gemini-2.5-flash, prompt: c, images: ["file:///tmp/cat.png"]}
          - {kind: chat, model: gemini-2.5-flash, prompt: d, images: ["data:text/plain;base64,aGk="]}
          - kind: chat
            model: gemini-2.5-flash
            prompt: e
            images: [cat.png, "gs://bucket/dog.png", "data:image/png;base64,iVBORw0KGgo="]
    """)
    found = messages(checked(path))
    field = "messages[0].content[1].image_url.url"
    assert found[0].startswith(
        f"{path}:2: tasks[0]: {field}: the API takes no https:// link to an image, only a "
        "data:image/...;base64, URL or a gs:// URI: download it"
    ), found
    assert found[1].startswith(f"{path}:9: tasks[1]: {field}: the API takes no HTTP:// link"), found
    assert found[2].startswith(
        f"{path}:10: tasks[2]: {field}: the API takes no file:// link to an image, only a "
        "data:image/...;base64, URL or a gs:// URI: write it as a plain local path"
    ), found
    assert found[3].startswith(
        f"{path}:11: tasks[3]: {field}: a data: URL here must be data:image/<type>;base64,"
    ), found
    assert len(found) == 4, found  # the last task's three images are what the API takes


def test_a_local_chat_image_must_be_png_webp_or_jpeg_as_the_api_takes(write: Write, tmp_path: Path) -> None:
    """A BMP or TIFF was inlined as data:application/octet-stream and answered 400 after validation."""
    for name, fmt in (("a.bmp", "BMP"), ("b.tiff", "TIFF"), ("c.gif", "GIF")):
        make_image(tmp_path / name, fmt=fmt)
    for name, fmt in (("d.png", "PNG"), ("e.webp", "WEBP"), ("f.jpg", "JPEG")):
        make_image(tmp_path / name, fmt=fmt)
    first = Image.new("RGB", (64, 64), (1, 2, 3))
    first.save(tmp_path / "g.jpg", "MPO", save_all=True, append_images=[Image.new("RGB", (64, 64))])
    path = write("""
        tasks:
          - {kind: chat, model: gemini-2.5-flash, prompt: a, images: [a.bmp, d.png, b.tiff]}
          - {kind: chat, model: gemini-2.5-flash, prompt: b, images: [e.webp, f.jpg, g.jpg, c.gif]}
    """)
    found = messages(checked(path))
    rule = "must be a PNG, WebP or JPEG file (by content); found"
    assert [problem.split(" (got ")[0] for problem in found] == [
        f"{path}:2: tasks[0]: messages[0].content[1].image_url.url: {rule} BMP",
        f"{path}:2: tasks[0]: messages[0].content[3].image_url.url: {rule} TIFF",
        f"{path}:3: tasks[1]: messages[0].content[4].image_url.url: {rule} GIF",
    ]


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height: what Pillow reads to name an image, with no pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + b"\xaeB`\x82")
    return path


def test_an_image_past_pillows_pixel_limit_is_named_so_not_called_no_image(
    write: Write, tmp_path: Path
) -> None:
    png_header(tmp_path / "huge.png", 20_000, 20_000)  # 400 megapixels in a 45-byte file
    path = write("""
        tasks:
          - {kind: edit, prompt: a, image: huge.png}
          - {kind: chat, model: gemini-2.5-flash, prompt: b, images: [huge.png]}
    """)
    found = messages(checked(path))
    assert len(found) == 2, found
    for line, task, field in ((2, 0, "image"), (3, 1, "messages[0].content[1].image_url.url")):
        assert found[task].startswith(
            f"{path}:{line}: tasks[{task}]: {field}: is an image of more than 178,956,970 pixels"
        ), found[task]


def test_chat_shorthand_becomes_messages_with_resolved_image_paths(write: Write, tmp_path: Path) -> None:
    make_image(tmp_path / "pics" / "cat.jpg", fmt="JPEG")
    path = write("""
        tasks:
          - kind: chat
            model: gemini-2.5-flash
            system: be brief
            prompt: what is this?
            images: [pics/cat.jpg, "gs://bucket/dog.png"]
    """)
    result = checked(path)
    spec = next(iter_tasks(result.manifest, result.builder))
    assert spec.fields["messages"] == [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": str(tmp_path / "pics" / "cat.jpg")}},
                {"type": "image_url", "image_url": {"url": "gs://bucket/dog.png"}},
            ],
        },
    ]


def test_chat_shorthand_images_must_all_be_paths_and_may_be_none(write: Write) -> None:
    """A list of images with one that is no path is said as such, not made into a message of a number; an
    empty list makes a message of the prompt alone."""
    path = write("""
        tasks:
          - {kind: chat, model: gemini-2.5-flash, prompt: what is this?, images: [cat.jpg, 3]}
    """)
    assert (
        one_problem(path)
        == f"{path}:2: tasks[0]: images: must be a path or a list of paths (got ['cat.jpg', 3])"
    )
    path = write("""
        tasks:
          - {kind: chat, model: gemini-2.5-flash, prompt: what is this?, images: []}
    """)
    result = checked(path)
    spec = next(iter_tasks(result.manifest, result.builder))
    assert spec.fields["messages"] == [{"role": "user", "content": "what is this?"}]


def test_defaults_precedence_command_line_over_task_over_kind_over_shared(write: Write) -> None:
    path = write("""
        defaults:
          quality: low
          size: 1024x1536
          temperature: 0.5
          generate: {quality: medium, n: 2}
        tasks:
          - {kind: generate, prompt: a}
          - {kind: generate, prompt: b, quality: high, n: 3}
          - {kind: chat, model: m, prompt: c}
          - {kind: generate, prompt: d}
    """)
    plain = checked(path)
    specs = list(iter_tasks(plain.manifest, plain.builder))
    assert specs[0].fields == {"quality": "medium", "size": "1024x1536", "n": 2, "prompt": "a"}
    assert specs[1].fields["quality"] == "high" and specs[1].fields["n"] == 3
    # the defaults a kind's tasks share are made once: a task's own fields do not reach the next one's
    assert specs[3].fields == {"quality": "medium", "size": "1024x1536", "n": 2, "prompt": "d"}
    # shared defaults reach only the kinds that know them: no `quality` or `size` in a chat body
    assert specs[2].fields == {
        "temperature": 0.5,
        "model": "m",
        "messages": [{"role": "user", "content": "c"}],
    }
    over = checked(path, quality="low", chat={"temperature": 0})
    specs = list(iter_tasks(over.manifest, over.builder))
    assert specs[1].fields["quality"] == "low"
    assert specs[2].fields["temperature"] == 0
    assert specs[3].fields == {"quality": "low", "size": "1024x1536", "n": 2, "prompt": "d"}


def test_bad_default_is_reported_once_at_its_line_for_all_tasks(write: Write) -> None:
    path = write("""
        defaults:
          size: huge
          colour: red
        tasks:
          - {kind: generate, prompt: a}
          - {kind: generate, prompt: b}
          - {kind: generate, prompt: c}
    """)
    result = checked(path)
    found = [result.plan.describe(p) for p in result.plan.problems]
    assert found == [
        f"{path}:3: defaults.colour: is not a field of any task kind; put fields for one kind under "
        "defaults.<kind> (generate, edit, chat)",
        f"{path}:2: tasks[0]: size: must be one of 1024x1024, 1536x1024, 1024x1536, auto (set in defaults) "
        "(got 'huge') [and in 2 more tasks]",
    ]


def test_endpoint_precedence_and_missing_endpoint_is_configuration(write: Write) -> None:
    path = write("""
        endpoints:
          generate: ep-gen
          special-model: ep-special
        tasks:
          - {kind: generate, prompt: a}
          - {kind: generate, prompt: b, model: special-model}
          - {kind: generate, prompt: c, endpoint: ep-own}
          - {kind: chat, model: m, prompt: d}
    """)
    specs = list(iter_tasks(*_mb(checked(path, env_endpoint="ep-env"))))
    assert [s.endpoint for s in specs] == ["ep-gen", "ep-special", "ep-own", "ep-env"]
    missing = checked(path, env_endpoint=None)
    assert missing.plan.config_only
    assert messages(missing) == [
        f"{path}:8: tasks[3]: endpoint: no endpoint for this chat task: set MAAS_ENDPOINT, or "
        "'endpoints: {chat: ...}' in the manifest, or the task's own 'endpoint'"
    ]


def _mb(result: object) -> tuple[object, object]:
    return result.manifest, result.builder  # type: ignore[attr-defined]


def test_yaml_problems_are_located(write: Write) -> None:
    with pytest.raises(ManifestError) as dup:
        checked(write("tasks:\n  - kind: generate\n    prompt: a\n    prompt: b\n"))
    assert "found the key 'prompt' twice (first on line 3)" in str(dup.value.problems[0])
    assert dup.value.problems[0].line == 4
    with pytest.raises(ManifestError) as tag:
        checked(write("tasks: !!python/object/apply:os.system ['echo pwned']\n", "evil.yaml"))
    assert "not valid YAML" in str(tag.value.problems[0])
    with pytest.raises(ManifestError) as syntax:
        checked(write("tasks:\n  - kind: generate\n   prompt: [unclosed\n", "broken.yaml"))
    assert syntax.value.problems[0].line == 3
    with pytest.raises(ManifestError) as top:
        checked(write("task:\n  - kind: generate\n", "typo.yaml"))
    found = [str(p) for p in top.value.problems]
    assert "task: is not a top-level key of a manifest; did you mean 'tasks'? (top-level keys" in found[0]
    assert any("tasks: must be a list of tasks" in f for f in found)


def test_jsonl_problems_name_the_line(write: Write) -> None:
    path = write(
        '{"kind": "generate", "prompt": "a"}\n'
        "\n"
        '{"kind": "generate", "prompt": "b", "n": 20}\n'
        "{not json\n"
        "[1, 2]\n"
        '{"kind": "generate", "prompt": "c"}\n',
        "tasks.jsonl",
    )
    result = checked(path)
    found = messages(result)
    assert found[0].startswith(f"{path}:3: tasks[1]: n: must be between 1 and 10")
    assert found[1].startswith(f"{path}:4: not valid JSON")
    assert found[2].startswith(f"{path}:5: a task must be a JSON object, not a list")
    assert len(found) == 3
    assert result.plan.total == 2


def test_one_problem_on_every_jsonl_line_shows_three_lines_and_counts_the_rest(write: Write) -> None:
    """The same mistake on each of 40 lines (a typo a script wrote into every task) is three lines and
    a count, not 40 lines of the same message; a different problem in between is still shown."""
    lines = [f'{{"kind": "generate", "prompt": "p{i}", "n": 20}}' for i in range(40)]
    lines[20] = '{"kind": "generate", "prompt": "odd", "size": "800x600"}'
    path = write("\n".join(lines) + "\n", "tasks.jsonl")
    plan = checked(path).plan
    found = [plan.describe(problem) for problem in plan.problems]
    assert len(found) == 4, found
    assert [line.split(": ")[0] for line in found] == [f"{path}:{n}" for n in (1, 2, 3, 21)]
    assert found[0].endswith("(got 20)") and found[1].endswith("(got 20)")
    assert found[2].endswith("(got 20) [and in 36 more tasks, to line 40]")
    assert "size: must be one of" in found[3] and "[and in" not in found[3]
    assert plan.error().more == 36  # the library's error counts them too
    assert str(plan.error()).startswith("40 problems in the manifest:")


def test_a_task_with_a_wrong_field_has_its_input_files_checked_too(write: Write, tmp_path: Path) -> None:
    """A bad `quality` hid a missing image (and a mask of the wrong size) until the next validation:
    every problem of a task is said at once."""
    make_image(tmp_path / "photo.png", size=(64, 64))
    make_mask(tmp_path / "mask.png", size=(32, 32))
    path = write("""
        tasks:
          - {kind: edit, prompt: a, quality: best, image: nosuch.png}
          - {kind: edit, prompt: b, size: huge, image: photo.png, mask: mask.png}
    """)
    found = messages(checked(path))
    assert any("tasks[0]: quality: must be one of" in m for m in found), found
    assert any("tasks[0]: image: does not exist" in m for m in found), found
    assert any("tasks[1]: size: must be one of" in m for m in found), found
    assert any("tasks[1]: mask: is 32x32 but the first image is 64x64" in m for m in found), found


def test_every_problem_of_a_manifest_is_reported_in_one_pass(write: Write, tmp_path: Path) -> None:
    make_image(tmp_path / "photo.png", size=(64, 64))
    make_mask(tmp_path / "mask.png", size=(32, 32))
    path = write("""
        tasks:
          - {kind: generate, prompt: a, n: 0}
          - {kind: generate, prompt: b, size: big}
          - {kind: generate, prompt: c, background: transparent, output_format: jpeg}
          - {kind: edit, prompt: d, image: nothing.png}
          - {kind: edit, prompt: e, image: photo.png, mask: mask.png}
          - {kind: chat, model: m, messages: []}
          - {kind: chat, prompt: no model}
          - {kind: paint, prompt: f}
          - {kind: generate, prompt: g, id: "../escape"}
          - {kind: generate, prompt: h, id: same}
          - {kind: generate, prompt: i, id: same}
          - {kind: generate, prompt: j, quality: best}
    """)
    found = messages(checked(path))
    # per-task problems in order; duplicate ids once the whole manifest has been seen
    assert [int(line.split(":")[1]) for line in found] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 12]
    assert len(found) == 11
    assert found[-1].startswith(
        f"{path}:12: tasks[10]: id: the id 'same' is already used by tasks[9] (line 11)"
    )


def test_ids_must_be_safe_file_names(write: Write) -> None:
    path = write("""
        tasks:
          - {kind: generate, prompt: a, id: "a/b"}
          - {kind: generate, prompt: b, id: ".."}
          - {kind: generate, prompt: c, id: "with space"}
          - {kind: generate, prompt: d, id: "fine-id_1.v2"}
    """)
    found = messages(checked(path))
    assert len(found) == 3
    assert all("id: must be 1-100 characters of A-Z a-z 0-9 . _ -" in f for f in found)


def test_content_id_is_stable_and_follows_what_is_sent(write: Write, tmp_path: Path) -> None:
    photo = make_image(tmp_path / "a" / "photo.png", color=(1, 2, 3))
    make_image(tmp_path / "b" / "copy.png", color=(1, 2, 3))

    def ids(text: str) -> list[str]:
        result = checked(write(text))
        assert result.plan.ok, messages(result)
        return [spec.id for spec in iter_tasks(result.manifest, result.builder)]

    base = ids("tasks:\n  - {kind: generate, prompt: a fox}\n  - {kind: generate, prompt: an owl}\n")
    assert [i[: -len("-") - 12] for i in base] == ["a-fox", "an-owl"]  # the prompt, then the hash
    # reordering and adding tasks leaves each task's id unchanged
    swapped = ids(
        "tasks:\n  - {kind: generate, prompt: z}\n  - {kind: generate, prompt: an owl}\n"
        "  - {kind: generate, prompt: a fox}\n"
    )
    assert swapped[1:] == [base[1], base[0]]
    # a different field, or the same field from defaults: the request decides
    assert ids("tasks:\n  - {kind: generate, prompt: a fox, n: 2}\n")[0] != base[0]
    assert ids("defaults: {prompt: a fox}\ntasks:\n  - {kind: generate}\n")[0] == base[0]
    # input files count by content, not by path
    one = ids("tasks:\n  - {kind: edit, prompt: hat, image: a/photo.png}\n")[0]
    assert ids("tasks:\n  - {kind: edit, prompt: hat, image: b/copy.png}\n")[0] == one
    make_image(photo, color=(9, 9, 9))
    assert ids("tasks:\n  - {kind: edit, prompt: hat, image: a/photo.png}\n")[0] != one
    # the endpoint is part of the identity
    other = checked(write("tasks:\n  - {kind: generate, prompt: a fox}\n"), env_endpoint="ep2")
    assert next(iter_tasks(other.manifest, other.builder)).id != base[0]


def test_both_walks_encode_every_task_and_agree_on_what_it_sends(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check walk encodes every task (the check that its fields are plain JSON) and keeps each one's
    request; the dispatch walk encodes every task again, as it is sent, so that its result line names
    what was sent. The ids and the requests are the check's."""
    import hashlib

    from batch.manifest import tasks

    encoded: list[str] = []
    real = tasks.canonical

    def counting(*args: Any) -> str:
        encoded.append(args[2]["prompt"])
        return real(*args)

    monkeypatch.setattr(tasks, "canonical", counting)
    result = checked(
        write("tasks:\n  - {kind: generate, prompt: a fox, id: fox}\n  - {kind: generate, prompt: an owl}\n")
    )
    plan = result.plan
    assert plan.ok and encoded == ["a fox", "an owl"]
    encoded.clear()
    specs = list(iter_tasks(result.manifest, result.builder, order=plan.order))
    assert encoded == ["a fox", "an owl"] and specs[0].id == "fox" and specs[1].id.startswith("an-owl-")
    for spec, request in zip(specs, plan.requests, strict=True):
        sent = real(spec.kind, spec.endpoint, dict(spec.fields), spec.inputs)
        assert spec.request == hashlib.sha256(sent.encode()).hexdigest()[:16] == f"{request:016x}"
    assert specs[1].id.endswith(specs[1].request[:12])  # the id made from the same digest


def test_yaml_values_that_are_not_json_are_refused(write: Write) -> None:
    path = write("""
        tasks:
          - {kind: chat, model: m, prompt: hi, when: 2024-01-01}
    """)
    assert "when: is not plain JSON data" in one_problem(path)


def test_manifest_that_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as missing:
        checked(tmp_path / "nope.yaml")
    assert str(missing.value.problems[0]) == f"{tmp_path}/nope.yaml: the manifest file does not exist"
    os.mkdir(tmp_path / "dir.yaml")
    with pytest.raises(ManifestError):
        checked(tmp_path / "dir.yaml")


def test_an_openai_batch_line_without_its_body_is_blamed_on_body(write: Write) -> None:
    """Such a line was taken for a task of our own format and refused for its missing `kind`, which an
    OpenAI Batch file never has."""
    path = write(
        '{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions"}\n'
        '{"custom_id": "r2", "method": "POST", "url": "/v1/chat/completions", "body": '
        '{"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]}}\n'
        '{"method": "POST", "url": "/v1/chat/completions", "body": {"model": "gemini-2.5-flash"}}\n',
        "batch.jsonl",
    )
    found = messages(checked(path))
    assert len(found) == 2, found
    assert found[0].startswith(f"{path}:1: tasks[0]: body: is required")
    assert found[1].startswith(f"{path}:3: tasks[2]: custom_id: must be a non-empty string")


def test_a_kind_typo_under_defaults_gets_a_did_you_mean(write: Write) -> None:
    """`kind: chta` on a task got "did you mean 'chat'?"; as a key of `defaults:` it was "not a field of
    any task kind", with no guess, and so was a field's typo."""
    path = write("""
        defaults:
          chta: {temperature: 0}
          qualty: low
        tasks:
          - kind: chat
            model: gemini-2.5-flash
            prompt: hello
    """)
    assert messages(checked(path)) == [
        f"{path}:2: defaults.chta: is not a task kind; did you mean 'chat'? "
        "(fields for one kind go under defaults.<kind>: generate, edit, chat)",
        f"{path}:3: defaults.qualty: is not a field of any task kind; did you mean 'quality'?",
    ]


def test_a_kind_typo_under_endpoints_gets_a_did_you_mean_though_its_tasks_have_no_endpoint(
    write: Write,
) -> None:
    """`endpoints: {chta: ...}` and no MAAS_ENDPOINT: the chat task had no endpoint, and that was all that
    was said ("set ... 'endpoints: {chat: ...}'", which the user had tried to); `genrate:` on a manifest
    of chat tasks passed without a word."""
    path = write("""
        endpoints:
          chta: my-gemini
          genrate: my-images
        tasks:
          - kind: chat
            model: gemini-2.5-flash
            prompt: hello
    """)
    found = messages(checked(path, env_endpoint=None))
    assert len(found) == 3, found
    assert found[0].startswith(f"{path}:5: tasks[0]: endpoint: no endpoint for this chat task")
    assert found[1:] == [
        f"{path}:2: endpoints.chta: is no kind or model of this manifest's tasks; did you mean 'chat'?",
        f"{path}:3: endpoints.genrate: is no kind or model of this manifest's tasks; did you mean 'generate'?",
    ]


def test_a_yaml_manifest_that_is_not_utf8_is_named_and_located(
    cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    """The message named the file descriptor the file was read through ("in "3", position 63"), not the
    file: a user with three manifests could not tell which one, nor where."""
    path = tmp_path / "night.yaml"
    path.write_bytes(b"tasks:\n  - kind: chat\n    model: gemini-2.5-flash\n    prompt: caf\xe9 au lait\n")
    outcome = cli("validate", path, env={"MAAS_ENDPOINT": "ep"})
    assert outcome.code == 65
    assert outcome.err.startswith(
        f"{path}:4: not valid YAML: not UTF-8 text near byte 66 (invalid trailing UTF-8 octet); save the file "
        "as UTF-8"
    ), outcome.err
    assert '"3"' not in outcome.err and "position" not in outcome.err


def test_a_task_that_is_not_a_mapping_is_put_at_its_own_line(write: Write) -> None:
    """It was put at the `tasks:` line, however far down the list it was."""
    path = write("""
        tasks:
          - kind: chat
            model: gemini-2.5-flash
            prompt: hello
          - "just a string"
          -
          - [kind, chat]
    """)
    assert messages(checked(path)) == [
        f"{path}:5: tasks[1]: must be a mapping with a kind and its fields, not a string (got 'just a string')",
        f"{path}:6: tasks[2]: must be a mapping with a kind and its fields, not null (got None)",
        f"{path}:7: tasks[3]: must be a mapping with a kind and its fields, not a list (got ['kind', 'chat'])",
    ]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({}, ["ep-own", "ep-model", "ep-kind", "ep-chat-default", "ep-kind"]),
        ({"*": "ep-all"}, ["ep-all", "ep-all", "ep-all", "ep-all", "ep-all"]),
        (
            {"generate": "ep-flag-kind", "*": "ep-all"},
            ["ep-flag-kind", "ep-flag-kind", "ep-flag-kind", "ep-all", "ep-flag-kind"],
        ),
        (
            {"special": "ep-flag-model", "generate": "ep-flag-kind"},
            ["ep-flag-model", "ep-flag-model", "ep-flag-kind", "ep-chat-default", "ep-flag-kind"],
        ),
    ],
)
def test_each_task_takes_the_first_endpoint_given_in_the_order_of_precedence(
    write: Write, flags: dict[str, str], expected: list[str]
) -> None:
    """--endpoint by model, by kind, for all > the task's own > endpoints[model] > endpoints[kind] >
    defaults.<kind>.endpoint > defaults.endpoint > MAAS_ENDPOINT, for each task of a kind whatever the
    one before it took (what depends on the kind alone is found once per kind)."""
    path = write("""
        defaults:
          endpoint: ep-default
          chat: {endpoint: ep-chat-default}
        endpoints:
          generate: ep-kind
          special: ep-model
        tasks:
          - {kind: generate, prompt: a, model: special, endpoint: ep-own}
          - {kind: generate, prompt: b, model: special}
          - {kind: generate, prompt: c}
          - {kind: chat, model: m, prompt: d}
          - {kind: generate, prompt: e}
    """)
    result = check(path, BuildSettings(endpoints=flags, env_endpoint="ep-env"), registry())
    assert [spec.endpoint for spec in iter_tasks(result.manifest, result.builder)] == expected
    plain = write("tasks:\n  - {kind: chat, model: m, prompt: d}\n", "plain.yaml")
    defaulted = write(
        "defaults: {endpoint: ep-default}\ntasks:\n  - {kind: chat, model: m, prompt: d}\n", "d.yaml"
    )
    for manifest, endpoint in ((plain, "ep-env"), (defaulted, "ep-default")):
        result = check(manifest, BuildSettings(env_endpoint="ep-env"), registry())
        assert [spec.endpoint for spec in iter_tasks(result.manifest, result.builder)] == [endpoint]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ('"prompt": "bad \\ud800 x"', "prompt"),  # normalized into `messages`: named as written
        ('"messages": [{"role": "user", "content": "cut \\udc00"}]', "messages"),
        ('"prompt": "hi", "temperature\\ud800": 1', "temperature\ud800"),  # the name as json read it
    ],
)
def test_a_lone_surrogate_in_a_jsonl_task_is_a_problem_on_its_line_not_a_traceback(
    tmp_path: Path, fields: str, named: str
) -> None:
    """`"\\ud800"` alone (half of a UTF-16 pair) is JSON that json reads but no UTF-8 request can carry:
    the task's digest crashed `validate` and `run` with a UnicodeEncodeError. An emoji's whole pair is text."""
    path = tmp_path / "tasks.jsonl"
    path.write_text(
        f'{{"kind": "chat", "id": "fine", "model": "gemini-2.5-flash", "prompt": "\\ud83d\\ude00"}}\n'
        f'{{"kind": "chat", "id": "t", "model": "gemini-2.5-flash", {fields}}}\n'
    )
    found = [m for m in messages(checked(path)) if "lone surrogate" in m]
    said = f"{path}:2: tasks[1]: {named}: holds a lone surrogate (half of a UTF-16 pair, such as \\ud800)"
    assert len(found) == 1 and found[0].startswith(said), found


def test_a_lone_surrogate_in_a_tasks_endpoint_is_refused_as_no_endpoint_id(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text(
        '{"kind": "chat", "model": "gemini-2.5-flash", "prompt": "hi", "endpoint": "ep\\ud800"}\n'
    )
    assert "endpoint: must be an endpoint (deployment) id" in one_problem(path)
