"""Every example in examples/ validates and runs against the simulator (`--simulate`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batch.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, out: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    assert main(["validate", str(EXAMPLES / name), "--simulate"]) == 0
    assert main(["run", str(EXAMPLES / name), "--out", str(out), "--simulate", "--quiet"]) == 0
    capsys.readouterr()
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    records = {r["id"]: r for r in map(json.loads, lines)}
    assert len(records) == len(lines)
    assert all(r["status"] == "succeeded" for r in records.values())
    for record in records.values():
        assert all((out / path).is_file() for path in record["files"])
    return records


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("quickstart.yaml", 7),
        ("overnight.yaml", 12),
        ("styles.yaml", 18),
        ("catalog.yaml", 3),
        ("labeling.yaml", 3),
        ("openai-batch.jsonl", 4),
    ],
)
def test_example_runs(name: str, count: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert len(run_example(name, tmp_path / "out", capsys)) == count


def test_styles_ids_are_readable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = run_example("styles.yaml", tmp_path / "out", capsys)
    assert "styles-pixel-art-owl-2" in records
    assert records["styles-pixel-art-owl-2"]["files"] == ["images/styles-pixel-art-owl-2.png"]


def test_catalog_edits_every_photo_with_the_mask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = run_example("catalog.yaml", tmp_path / "out", capsys)
    assert sorted(records) == ["chair-marble", "lamp-marble", "mug-marble"]


def test_labeling_answers_join_back_to_the_csv_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = run_example("labeling.yaml", tmp_path / "out", capsys)
    rows = (EXAMPLES / "products.csv").read_text().splitlines()[1:]
    for row in rows:
        sku, _image, _title, price, warehouse = row.split(",")
        record = records[sku]
        assert record["meta"] == {"price": price, "warehouse": warehouse}
        assert "1 image" in record["text"]


def test_openai_batch_keeps_custom_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = run_example("openai-batch.jsonl", tmp_path / "out", capsys)
    assert sorted(r["custom_id"] for r in records.values()) == [
        "caption-1",
        "caption-2",
        "icon-4",
        "row 3/hero",
    ]
