"""Expansions and the OpenAI Batch format: the exact tasks (and requests) they make, and their mistakes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from batch.manifest.placeholders import render, slug
from batch.manifest.plan import iter_tasks
from batch.manifest.tasks import TaskSpec
from tests.conftest import checked, make_image, make_mask, messages

Write = Callable[..., Path]


def specs(path: Path, **kwargs: Any) -> list[TaskSpec]:
    result = checked(path, **kwargs)
    assert result.plan.ok, messages(result)
    tasks = list(iter_tasks(result.manifest, result.builder))
    assert len(tasks) == result.plan.total
    return tasks


def test_render_fills_placeholders_keeps_types_and_escapes_braces() -> None:
    values = {"animal": "fox", "n": 2, "tags": ["a", "b"]}
    assert render("a {animal} x{n}", values) == "a fox x2"
    assert render("{n}", values) == 2
    assert render("{tags}", values) == ["a", "b"]
    assert render({"k": ["{animal}", {"deep": "{animal}!"}]}, values) == {"k": ["fox", {"deep": "fox!"}]}
    assert render('{{"label": "{animal}"}}', values) == '{"label": "fox"}'
    assert render('Return {"label": x} and { spaced }', values) == 'Return {"label": x} and { spaced }'


def test_values_that_are_not_strings_are_written_as_json_writes_them() -> None:
    """Ints take a shortcut past json.dumps (a matrix's numbers, twice a task): the text must not move,
    for ids made from it are the checkpoint's keys."""
    import json

    for value in (
        0,
        7,
        -3,
        10**30,
        -(10**30),
        True,
        False,
        None,
        2.5,
        1e-05,
        float("nan"),
        [1, "é"],
        {"a": 1},
    ):
        expected = json.dumps(value, ensure_ascii=False)
        assert render("v={v}", {"v": value}) == f"v={expected}", value
        assert slug(value, 100) == slug(expected, 100), value


def test_slug_is_short_readable_and_file_safe() -> None:
    assert slug("A black fox, in autumn!") == "a-black-fox-in-autumn"
    assert slug("x" * 100, 10) == "x" * 10
    assert slug(3.5) == "3-5"
    assert slug("日本") == ""  # the ASCII ids of directories made before readable ids
    assert slug("日本", transliterate=True) == "ri-ben"


def test_prompts_file_one_task_per_line_with_comments_unicode_and_long_lines(write: Write) -> None:
    long_line = "y" * 32_000
    write(f"# a comment\n\nA fox in snow\n  \nUn café à Paris ☕\n{long_line}\n", "prompts.txt")
    path = write("""
        defaults: {model: gpt-image-1}
        tasks:
          - kind: generate
            prompts_file: prompts.txt
            size: 1536x1024
    """)
    tasks = specs(path)
    assert [t.fields for t in tasks] == [
        {"model": "gpt-image-1", "size": "1536x1024", "prompt": "A fox in snow"},
        {"model": "gpt-image-1", "size": "1536x1024", "prompt": "Un café à Paris ☕"},
        {"model": "gpt-image-1", "size": "1536x1024", "prompt": long_line},
    ]
    assert tasks[0].id.startswith("a-fox-in-snow-") and len(tasks[0].id) == len("a-fox-in-snow-") + 8
    assert tasks[1].id.startswith("un-cafe-a-paris-coffee-")
    assert tasks[0].label == "tasks[0] prompts.txt:3"


def test_prompts_file_ids_survive_inserting_and_reordering_lines(write: Write) -> None:
    write("a fox\nan owl\n", "prompts.txt")
    path = write("tasks:\n  - {kind: generate, prompts_file: prompts.txt}\n")
    before = {t.fields["prompt"]: t.id for t in specs(path)}
    write("a new one\nan owl\n# a fox (retired)\na fox\n", "prompts.txt")
    after = {t.fields["prompt"]: t.id for t in specs(path)}
    assert after["a fox"] == before["a fox"] and after["an owl"] == before["an owl"]


def test_prompts_file_as_a_template_and_for_chat(write: Write) -> None:
    write("foxes\nowls\n", "topics.txt")
    path = write("""
        tasks:
          - kind: generate
            prompts_file: topics.txt
            prompt: "A watercolor of {prompt}"
          - kind: chat
            model: gemini-2.5-flash
            prompts_file: topics.txt
            messages:
              - {role: user, content: "Tell me about {prompt}."}
    """)
    tasks = specs(path)
    assert [t.fields.get("prompt") for t in tasks[:2]] == ["A watercolor of foxes", "A watercolor of owls"]
    assert tasks[3].fields == {
        "model": "gemini-2.5-flash",
        "messages": [{"role": "user", "content": "Tell me about owls."}],
    }


def test_prompt_over_32000_characters_is_located_in_the_prompts_file(write: Write) -> None:
    write("fine\n" + "z" * 32_001 + "\n", "prompts.txt")
    path = write("tasks:\n  - {kind: generate, prompts_file: prompts.txt}\n")
    [problem] = messages(checked(path))
    assert problem.startswith(f"{path}:2: tasks[0] prompts.txt:2: prompt: is 32,001 characters long")


def test_matrix_is_the_cartesian_product_filled_everywhere(write: Write) -> None:
    path = write("""
        tasks:
          - kind: chat
            model: gemini-2.5-flash
            matrix: {style: [watercolor, pixel art], animal: [fox, owl]}
            messages:
              - {role: system, content: "You judge {style} art."}
              - {role: user, content: "Describe a {animal} in {style}. Use {{braces}} literally."}
            meta: {style: "{style}"}
    """)
    tasks = specs(path)
    assert [(t.fields["messages"][1]["content"], dict(t.meta)) for t in tasks] == [
        ("Describe a fox in watercolor. Use {braces} literally.", {"style": "watercolor"}),
        ("Describe a owl in watercolor. Use {braces} literally.", {"style": "watercolor"}),
        ("Describe a fox in pixel art. Use {braces} literally.", {"style": "pixel art"}),
        ("Describe a owl in pixel art. Use {braces} literally.", {"style": "pixel art"}),
    ]
    assert tasks[2].fields["messages"][0]["content"] == "You judge pixel art art."
    assert tasks[2].id.startswith("pixel-art-fox-")
    assert tasks[2].label == "tasks[0] style=pixel art animal=fox"


def test_whole_placeholder_keeps_the_values_type(write: Write) -> None:
    path = write("""
        tasks:
          - {kind: generate, prompt: "{n} foxes", matrix: {n: [1, 3]}, n: "{n}", id: "foxes-{n}"}
    """)
    assert [(t.id, t.fields["n"], t.fields["prompt"]) for t in specs(path)] == [
        ("foxes-1", 1, "1 foxes"),
        ("foxes-3", 3, "3 foxes"),
    ]


def test_repeat_makes_independent_samples_with_their_own_ids(write: Write) -> None:
    path = write("""
        tasks:
          - {kind: generate, id: fox, prompt: a fox, repeat: 3}
          - {kind: chat, model: m, prompt: "sample {sample}", seed: "{sample}", repeat: 2}
          - {kind: generate, prompt: an owl, repeat: 2}
    """)
    tasks = specs(path)
    assert [t.id for t in tasks[:3]] == ["fox-1", "fox-2", "fox-3"]
    assert all(t.fields == {"prompt": "a fox"} for t in tasks[:3])
    assert [t.fields["seed"] for t in tasks[3:5]] == [1, 2]
    owls = [t.id for t in tasks[5:]]
    assert owls[0] != owls[1] and owls[0].startswith("1-") and owls[1].startswith("2-")


def test_for_each_glob_gives_path_name_and_stem(write: Write, tmp_path: Path) -> None:
    for name in ("b.jpg", "a.jpg", "c.png"):
        make_image(tmp_path / "photos" / name, fmt="PNG" if name.endswith("png") else "JPEG")
    make_mask(tmp_path / "mask.png")
    path = write("""
        tasks:
          - kind: edit
            id: "{stem}-hat"
            for_each: {glob: "photos/*.jpg"}
            image: "{path}"
            mask: mask.png
            prompt: "Add a hat to {name}"
    """)
    tasks = specs(path)
    assert [(t.id, t.fields) for t in tasks] == [
        (
            "a-hat",
            {
                "image": str(tmp_path / "photos/a.jpg"),
                "mask": str(tmp_path / "mask.png"),
                "prompt": "Add a hat to a.jpg",
            },
        ),
        (
            "b-hat",
            {
                "image": str(tmp_path / "photos/b.jpg"),
                "mask": str(tmp_path / "mask.png"),
                "prompt": "Add a hat to b.jpg",
            },
        ),
    ]


def test_for_each_csv_columns_are_placeholders_and_the_rest_is_meta(write: Write, tmp_path: Path) -> None:
    make_image(tmp_path / "img" / "1.png")
    make_image(tmp_path / "img" / "2.png")
    write(
        '\ufeffsku,image,title,price\nA-1,img/1.png,Blue mug,12.9\n,,,\nB-2,img/2.png,"Lamp, brass",49\n',
        "rows.csv",
    )
    path = write("""
        tasks:
          - kind: chat
            id: "{sku}"
            model: gemini-2.5-flash
            for_each: {csv: rows.csv}
            prompt: "Categorise: {title}"
            images: ["{image}"]
    """)
    tasks = specs(path)
    assert [t.id for t in tasks] == ["A-1", "B-2"]
    assert [dict(t.meta) for t in tasks] == [{"price": "12.9"}, {"price": "49"}]
    assert tasks[1].fields["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Categorise: Lamp, brass"},
                {"type": "image_url", "image_url": {"url": str(tmp_path / "img" / "2.png")}},
            ],
        }
    ]
    assert tasks[1].label == "tasks[0] rows.csv:4"


def test_a_csv_header_that_names_a_column_twice_is_refused(write: Write) -> None:
    """csv.DictReader keeps the last column of a name: `sku,sku,question` made the id the second column's
    value, and the first column's values were lost without a word."""
    write("sku,sku,question\nA-1,B-1,what?\n", "rows.csv")
    path = write("""
        tasks:
          - {kind: chat, id: "{sku}", model: gemini-2.5-flash, for_each: {csv: rows.csv}, prompt: "{question}"}
    """)
    found = messages(checked(path))
    assert len(found) == 1 and "rows.csv:1: tasks[0]: the header names the column 'sku' twice" in found[0], (
        found
    )


def test_for_each_jsonl_keys_are_placeholders(write: Write) -> None:
    write('{"topic": "owls", "n": 2, "extra": {"k": 1}}\n{"topic": "foxes", "n": 1}\n', "records.jsonl")
    path = write("""
        tasks:
          - {kind: generate, for_each: {jsonl: records.jsonl}, prompt: "{topic}", n: "{n}"}
    """)
    tasks = specs(path)
    assert [(t.fields, dict(t.meta)) for t in tasks] == [
        ({"prompt": "owls", "n": 2}, {"extra": {"k": 1}}),
        ({"prompt": "foxes", "n": 1}, {}),
    ]
    assert tasks[0].id.startswith("owls-")


def test_matrix_inside_for_each_and_repeat_combine(write: Write) -> None:
    write("topic\nfox\nowl\n", "topics.csv")
    path = write("""
        tasks:
          - kind: generate
            id: art
            for_each: {csv: topics.csv}
            matrix: {style: [ink, oil]}
            repeat: 2
            prompt: "{topic} in {style}, sample {sample}"
    """)
    tasks = specs(path)
    assert [t.id for t in tasks] == [
        "art-fox-ink-1",
        "art-fox-ink-2",
        "art-fox-oil-1",
        "art-fox-oil-2",
        "art-owl-ink-1",
        "art-owl-ink-2",
        "art-owl-oil-1",
        "art-owl-oil-2",
    ]
    assert tasks[3].fields["prompt"] == "fox in oil, sample 2"


def test_expansion_mistakes_are_reported(write: Write, tmp_path: Path) -> None:
    write("a,b\n1,2,3\n1\n", "ragged.csv")
    write('{"x": 1}\nnot json\n[1]\n', "bad.jsonl")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    path = write("""
        tasks:
          - {kind: generate, prompt: "{animl}", matrix: {animal: [fox]}}
          - {kind: generate, prompts_file: missing.txt}
          - {kind: generate, prompt: a, for_each: {glob: "nothing/*.png"}}
          - {kind: generate, prompt: a, repeat: 0}
          - {kind: generate, prompt: a, matrix: {style: []}}
          - {kind: generate, prompt: a, for_each: {folder: x}}
          - {kind: generate, prompt: "{a}", for_each: {csv: ragged.csv}}
          - {kind: generate, prompt: "{x}", for_each: {jsonl: bad.jsonl}}
          - {kind: generate, prompts_file: latin1.txt}
          - {kind: generate, prompt: "{prompt}", prompts_file: latin1.txt, matrix: {prompt: [a]}}
    """)
    found = messages(checked(path))
    expected = [
        f"{path}:2: tasks[0] animal=fox: prompt: uses the unknown placeholder {{animl}}; did you mean {{animal}}?",
        f"{path}:3: tasks[1]: prompts_file: does not exist",
        f"{path}:4: tasks[2]: for_each: the pattern matches no file",
        f"{path}:5: tasks[3]: repeat: must be a whole number from 1 to 100,000",
        f"{path}:6: tasks[4]: matrix.style: must be a non-empty list of values",
        f"{path}:7: tasks[5]: for_each: must be one of {{glob: PATTERN}}, {{csv: FILE}}, {{jsonl: FILE}}",
        f"{tmp_path / 'ragged.csv'}:2: tasks[6]: the row has more values than the header has columns",
        # too few: the missing column read as null, and `Describe {b}` sent as "Describe null"
        f"{tmp_path / 'ragged.csv'}:3: tasks[6]: the row has fewer values than the header has columns (no 'b')",
        # a whole-placeholder value keeps its type: the record's 1 is not a string prompt
        f"{path}:9: tasks[7] bad.jsonl:1: prompt: must be a string, not an integer (got 1)",
        f"{tmp_path / 'bad.jsonl'}:2: tasks[7]: not valid JSON",
        f"{tmp_path / 'bad.jsonl'}:3: tasks[7]: a record must be a JSON object, not a list",
        f"{tmp_path / 'latin1.txt'}:1: tasks[8]: is not UTF-8 text",
        f"{path}:11: tasks[9]: matrix: the placeholder {{prompt}} comes from two expansions; rename one",
    ]
    assert len(found) == len(expected), found
    for line, start in zip(found, expected, strict=True):
        assert line.startswith(start), (line, start)


def test_openai_batch_lines_become_tasks(write: Write) -> None:
    path = write(
        '{"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}}\n'
        '{"custom_id": "row 2/x", "method": "POST", "url": "/v1/images/generations", '
        '"body": {"model": "gpt-image-1", "prompt": "a fox", "n": 2}}\n'
        '{"kind": "generate", "prompt": "our own format", "id": "mine"}\n',
        "batch.jsonl",
    )
    tasks = specs(path)
    assert [(t.id, t.kind, t.custom_id) for t in tasks] == [
        ("req-1", "chat", "req-1"),
        ("row_2_x-" + tasks[1].id.rsplit("-", 1)[1], "generate", "row 2/x"),
        ("mine", "generate", None),
    ]
    assert tasks[0].fields == {
        "model": "gemini-2.5-flash",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 9,
    }
    assert tasks[1].fields == {"model": "gpt-image-1", "prompt": "a fox", "n": 2}
    assert len(tasks[1].id) == len("row_2_x-") + 8


def test_openai_batch_mistakes(write: Write) -> None:
    path = write(
        '{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}\n'
        '{"custom_id": "b", "method": "GET", "url": "/v1/chat/completions", "body": {}}\n'
        '{"custom_id": "c", "method": "POST", "url": "/v1/chat/completions", "body": []}\n'
        '{"custom_id": "", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
        '{"custom_id": "e", "method": "POST", "url": "/v1/images/generations", "body": {"prompt": "x", "n": 40}}\n',
        "batch.jsonl",
    )
    found = messages(checked(path))
    assert [f.split(": ", 3)[2] for f in found] == ["url", "method", "body", "custom_id", "n"]
    assert found[0].startswith(f"{path}:1: tasks[0]: url: must be one of /v1/images/generations")


def test_command_line_endpoint_overrides_the_manifest(write: Write) -> None:
    path = write("""
        endpoints: {generate: ep-manifest}
        tasks:
          - {kind: generate, prompt: a}
          - {kind: generate, prompt: b, endpoint: ep-own}
          - {kind: chat, model: special, prompt: c}
    """)
    from batch.jobs import registry

    from batch.manifest.checked import check
    from batch.manifest.tasks import BuildSettings

    def endpoints(chosen: dict[str, str]) -> list[str]:
        result = check(path, BuildSettings(endpoints=chosen, env_endpoint="ep-env"), registry())
        return [t.endpoint for t in iter_tasks(result.manifest, result.builder)]

    assert endpoints({}) == ["ep-manifest", "ep-own", "ep-env"]
    assert endpoints({"generate": "ep-cli"}) == ["ep-cli", "ep-cli", "ep-env"]
    assert endpoints({"special": "ep-model", "*": "ep-all"}) == ["ep-all", "ep-all", "ep-model"]


def test_a_prompts_file_with_a_byte_order_mark_reads_its_first_line_as_the_others(
    write: Write, tmp_path: Path
) -> None:
    """A file saved by a Windows editor: the mark made its first line a prompt of its own, a `#` comment
    line included (a paid task reading "\\ufeff# my prompts")."""
    (tmp_path / "p.txt").write_bytes("\ufeff# my prompts\r\na red fox\r\n".encode())
    (tmp_path / "q.txt").write_bytes("\ufeffan owl\n".encode())
    path = write(
        "tasks:\n  - {kind: generate, prompts_file: p.txt}\n  - {kind: generate, prompts_file: q.txt}\n"
    )
    assert [task.fields["prompt"] for task in specs(path)] == ["a red fox", "an owl"]


def test_a_csv_header_that_ends_in_a_comma_names_no_column_a_row_lacks(write: Write) -> None:
    write("id,prompt,\n1,hello\n2,world\n", "p.csv")
    path = write('tasks:\n  - {kind: generate, prompt: "{prompt}", for_each: {csv: p.csv}}\n')
    assert [task.fields["prompt"] for task in specs(path)] == ["hello", "world"]
