"""Readable ids in every script (anyascii), without changing the ids of directories made before them:
a resumed run of an older directory still finds every finished task and sends nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import batch.output.format as dir_format
from batch import __version__
from batch.manifest.checked import check
from batch.manifest.ids import ASCII_IDS, READABLE_IDS, USED_COLUMN_IDS, valid_id
from batch.manifest.placeholders import slug
from batch.manifest.plan import iter_tasks
from batch.manifest.tasks import BuildSettings
from batch.simulator import RunningSimulator
from tests.conftest import Outcome, env_for, registry, results

Write = Callable[..., Path]

PROMPTS = ["一只狐狸在雪中", "Москва ночью", "Crème brûlée à Noël", "東京の夜", "ελληνικά νησιά", "a red fox"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("一只狐狸在雪中", "yi-zhi-hu-li-zai-xue-zhong"),
        ("Москва ночью", "moskva-noch-yu"),
        ("Crème brûlée à Noël", "creme-brulee-a-noel"),
        ("ελληνικά νησιά", "ellinika-nisia"),
        ("a red fox", "a-red-fox"),
    ],
)
def test_every_script_is_written_in_latin_letters(text: str, expected: str) -> None:
    assert slug(text, transliterate=True) == expected
    assert valid_id(slug(text, transliterate=True))


def manifest(write: Write) -> Path:
    write("\n".join(PROMPTS) + "\n", "prompts.txt")
    return write(
        "defaults: {model: gpt-image-1, quality: low, size: 1024x1024}\n"
        "tasks:\n"
        "  - {kind: generate, prompts_file: prompts.txt}\n"
        "  - {kind: chat, model: gemini-2.5-flash, prompt: 'Café au lait, s’il vous plaît'}\n"
        "  - {kind: generate, prompt: 雪の中の狐}\n"
    )


def ids(path: Path, scheme: int) -> list[str]:
    checked = check(path, BuildSettings(env_endpoint="ep", id_scheme=scheme), registry())
    assert checked.plan.ok
    return [spec.id for spec in iter_tasks(checked.manifest, checked.builder)]


def test_a_new_directory_gets_readable_ids_for_expansions_and_plain_tasks(write: Write) -> None:
    found = ids(manifest(write), READABLE_IDS)
    stems = [task_id.rsplit("-", 1)[0] for task_id in found]
    assert stems == [
        "yi-zhi-hu-li-zai-xue-zhong",
        "moskva-noch-yu",
        "creme-brulee-a-noel",
        "dong-jingno-ye",
        "ellinika-nisia",
        "a-red-fox",
        "cafe-au-lait-s-il-vous-plait",
        "xueno-zhongno-hu",
    ]
    assert all(valid_id(task_id) for task_id in found) and len(set(found)) == len(found)


def test_the_ascii_scheme_keeps_the_ids_directories_were_made_with(write: Write) -> None:
    found = ids(manifest(write), ASCII_IDS)
    assert found[0].startswith("generate-") and len(found[0]) == len("generate-") + 16
    assert found[2].startswith("cr-me-br-l-e-no-l-")
    assert found[6].startswith("chat-") and found[7].startswith("generate-")


def test_an_older_directory_keeps_its_ids_and_resumes_sending_nothing(
    write: Write,
    tmp_path: Path,
    sim: RunningSimulator,
    cli: Callable[..., Outcome],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, out = manifest(write), tmp_path / "out"
    # a directory as the tool made it before readable ids: ASCII ids, and no .format
    with monkeypatch.context() as before:
        before.setattr(dir_format, "LATEST_IDS", ASCII_IDS)
        first = cli("run", path, "--out", out, env=env_for(sim))
    assert first.code == 0, first.out + first.err
    old_ids = set(results(out))
    assert any(task_id.startswith("generate-") for task_id in old_ids)
    (out / dir_format.FORMAT).unlink()
    sent = sim.state.requests_total
    again = cli("run", path, "--out", out, env=env_for(sim))
    assert again.code == 0 and "8 already done" in again.out, again.out
    assert sim.state.requests_total == sent, "resume sent nothing"
    assert json.loads((out / dir_format.FORMAT).read_text()) == {"ids": ASCII_IDS}
    # a new directory, the same manifest: readable ids, recorded
    fresh = cli("run", path, "--out", tmp_path / "fresh", env=env_for(sim))
    assert fresh.code == 0
    assert "yi-zhi-hu-li-zai-xue-zhong" in " ".join(results(tmp_path / "fresh"))
    assert json.loads((tmp_path / "fresh" / dir_format.FORMAT).read_text()) == {"ids": USED_COLUMN_IDS}


def test_the_ids_made_from_what_is_sent_are_those_earlier_versions_made(write: Write) -> None:
    """A task without an id is named by the digest of what it sends: a DIR made by an earlier version is
    resumed only if its tasks get the same names. These were made by the version of 2026-11-29 (5dea16f)."""
    path = write(
        "tasks:\n"
        "  - {kind: generate, prompt: a fox}\n"
        '  - {kind: chat, model: gemini-2.5-flash, prompt: "Café", temperature: 0.5}\n'
    )
    assert ids(path, READABLE_IDS) == ["a-fox-67ff883d105d", "cafe-16ed37f647d3"]
    assert ids(path, ASCII_IDS) == ["generate-67ff883d105d38df", "chat-16ed37f647d3049f"]


def test_a_row_is_named_by_a_column_its_task_uses_so_inserting_a_row_renames_none(
    write: Write, tmp_path: Path, sim: RunningSimulator, cli: Callable[..., Outcome]
) -> None:
    """A CSV whose first column numbers its rows: a row inserted at the top renumbered every row, and
    with it every id (the first column named the row), so every row was bought again. The task reads
    {title}: the title names the row. A directory of the scheme before keeps its ids."""
    rows = write("row,title\n1,Blue mug\n2,Brass lamp\n", "rows.csv")
    path = write(
        "tasks:\n"
        "  - {kind: chat, model: gemini-2.5-flash, for_each: {csv: rows.csv}, prompt: 'Category of: {title}'}\n"
    )
    before = ids(path, USED_COLUMN_IDS)
    assert [task_id.rsplit("-", 1)[0] for task_id in before] == ["blue-mug", "brass-lamp"]
    assert [task_id.rsplit("-", 1)[0] for task_id in ids(path, READABLE_IDS)] == ["1", "2"]  # as before
    out = tmp_path / "out"
    assert cli("run", path, "--out", out, env=env_for(sim)).code == 0
    sent, first = sim.state.requests_total, set(results(out))
    rows.write_text("row,title\n1,Red kettle\n2,Blue mug\n3,Brass lamp\n")
    again = cli("run", path, "--out", out, env=env_for(sim))
    assert again.code == 0 and "2 already done" in again.out, again.out
    assert sim.state.requests_total == sent + 1  # the new row only
    assert first < set(results(out)) and len(results(out)) == 3


def test_a_batch_submitted_with_the_scheme_before_is_still_run_by_its_workers(
    write: Write, tmp_path: Path
) -> None:
    """A batch's plan.json, written by submit before rows were named by a column their task uses, has
    its tasks' ids made with the scheme before: a worker of this version (its shard's folder new) made
    them the new way, and refused every shard ('the manifest changed since it was submitted')."""
    import dataclasses

    from batch.cluster.plan import BatchPlan, order_digest, plan_from, plan_json
    from batch.cluster.shard import submitted_manifest
    from batch.config import Options

    write("row,title\n1,Blue mug\n2,Brass lamp\n", "rows.csv")
    path = write(
        "tasks:\n  - {kind: chat, model: gemini-2.5-flash, for_each: {csv: rows.csv}, prompt: 'Of {title}'}\n"
    )
    before = check(path, BuildSettings(env_endpoint="ep", id_scheme=READABLE_IDS), registry())
    digest = order_digest(before.plan.order)
    plan = BatchPlan(str(path), str(tmp_path / "out"), "q", 2, digest, 1, [(0, 1), (1, 2)], endpoint="ep")
    written = json.loads(plan_json(plan))
    written.pop("ids", None)  # as the version before wrote it
    old = plan_from(json.dumps(written), "plan.json")
    assert submitted_manifest(old, Options(), tmp_path / "shard-0").plan.total == 2
    assert submitted_manifest(old, Options(), None).plan.total == 2  # submit --resume, status
    newer = check(path, BuildSettings(env_endpoint="ep"), registry())  # a batch submitted now
    fresh = dataclasses.replace(old, order_digest=order_digest(newer.plan.order), ids=USED_COLUMN_IDS)
    assert submitted_manifest(fresh, Options(), tmp_path / "shard-1").plan.total == 2


def test_a_jsonl_row_written_with_its_keys_in_another_order_keeps_its_id(write: Write) -> None:
    """A task that uses two columns: the one that named the row was the first in the line's own order,
    so a tool that rewrote the file with its keys reordered renamed (and so bought again) every row."""
    path = write(
        "tasks:\n  - {kind: chat, model: m, for_each: {jsonl: rows.jsonl}, prompt: 'a {style} {animal}'}\n"
    )
    rows = path.parent / "rows.jsonl"
    rows.write_text('{"style": "pixel", "animal": "owl"}\n')
    before = ids(path, USED_COLUMN_IDS)
    rows.write_text('{"animal": "owl", "style": "pixel"}\n')
    assert ids(path, USED_COLUMN_IDS) == before and before[0].startswith("pixel-")  # {style} comes first


@pytest.mark.parametrize(
    ("record", "said"),
    [
        (
            '{"ids": 9}\n',
            f"scheme 9, which maas-batch {__version__} does not know: a newer version started it",
        ),
        ('{"ids": 3\n', "is damaged"),
        ('{"ids": "3"}\n', "is damaged"),
        ('{"ids": true}\n', "is damaged"),
        ("", "is damaged"),
    ],
)
def test_a_directory_whose_ids_this_version_cannot_read_is_refused_not_bought_again(
    record: str,
    said: str,
    write: Write,
    tmp_path: Path,
    sim: RunningSimulator,
    cli: Callable[..., Outcome],
) -> None:
    """A .format of a newer version's scheme, or damaged, read as no record: the directory holds results,
    so its ids were taken for the oldest scheme's, and every finished task was bought again."""
    path, out = manifest(write), tmp_path / "out"
    assert cli("run", path, "--out", out, env=env_for(sim)).code == 0
    (out / dir_format.FORMAT).write_text(record)
    sent = sim.state.requests_total
    for command in (("run", path, "--out", out), ("status", out, "--manifest", path)):
        again = cli(*command, env=env_for(sim))
        assert again.code == 74, again.out + again.err
        assert said in again.err and "every finished task would be bought again" in again.err, again.err
    assert sim.state.requests_total == sent, "nothing was sent"
    assert (out / dir_format.FORMAT).read_text() == record  # left as it was


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"ids": 7}, f"with id scheme 7 that maas-batch {__version__} does not know: upgrade"),
        ({"format": 2}, "with format 2 that"),
        ({"version": "0.3.0", "tags": []}, "written by maas-batch 0.3.0, with keys 'tags' that"),
        ({"ids": "3"}, "is not a plan maas-batch wrote: 'ids' is '3'"),
        ({"ids": True}, "is not a plan maas-batch wrote: 'ids' is True"),
        ({"format": "2"}, "is not a plan maas-batch wrote: 'format' is '2', not a number"),
    ],
)
def test_a_plan_a_newer_version_submitted_is_refused_with_what_to_do(
    change: dict[str, object], said: str, tmp_path: Path
) -> None:
    """A worker older than its submit would make other ids (the plan's scheme unknown to it) and buy the
    shards' finished tasks again; it said only 'not a plan maas-batch wrote'."""
    from batch.cluster.plan import BatchPlan, plan_from, plan_json
    from batch.errors import OutputError

    plan = BatchPlan("m.yaml", str(tmp_path / "out"), "q", 2, "d", 1, [(0, 1), (1, 2)], endpoint="ep")
    assert plan_from(plan_json(plan), "plan.json") == plan
    written = {**json.loads(plan_json(plan)), **change}
    with pytest.raises(OutputError, match=r"^plan\.json ") as refused:
        plan_from(json.dumps(written), "plan.json")
    assert said in str(refused.value)
