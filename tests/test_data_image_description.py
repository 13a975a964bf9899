"""The optional image description: in the JSONL format, the loader and the sample set."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ted_sglang.data import Sample, load_dataset, write_jsonl, write_sample_set
from ted_sglang.data.sample_set import CATEGORIES, describe_scene, generate_rows


def test_every_sample_set_row_describes_its_scene() -> None:
    rows = generate_rows(40, seed=3)
    assert {r["category"] for r in rows} == set(CATEGORIES)
    for row in rows:
        text = row["image_description"]
        assert text == describe_scene(row["category"], row["scene"])
        assert text.endswith(".") and len(text) > 30
        if row["category"] in ("counting", "size_compare"):
            for shape in row["scene"]["shapes"]:
                assert shape["colour"] in text and shape["shape"] in text
        elif row["category"] == "arithmetic":
            for number in row["scene"]["numbers"]:
                assert f"the number {number['value']} written in {number['colour']}" in text
        else:
            for bar in row["scene"]["bars"]:
                assert f"{bar['label']} {bar['value']}" in text


def test_description_describes_and_does_not_answer() -> None:
    for row in generate_rows(60, seed=5):
        text = row["image_description"]
        assert not re.search(r"\b(answer|options?|correct|tallest|shortest|largest)\b", text, re.I)
        assert not re.search(r"\([A-E]\)", text), row


def test_counting_description_counts_each_kind() -> None:
    scene = {
        "shapes": [
            {"shape": "circle", "colour": "red", "box": [0, 0, 30, 30]},
            {"shape": "circle", "colour": "red", "box": [40, 0, 70, 30]},
            {"shape": "square", "colour": "blue", "box": [0, 40, 30, 70]},
        ],
        "ask": {"colour": "red", "shape": "circle"},
    }
    assert describe_scene("counting", scene) == (
        "The image shows 1 blue square and 2 red circles, scattered over a white background."
    )


def test_loader_reads_and_writer_keeps_the_description(tmp_path: Path) -> None:
    path = write_sample_set(tmp_path / "set", count=6)
    dataset = load_dataset(path)
    assert all(s.image_description for s in dataset)
    out = write_jsonl(dataset.samples, tmp_path / "copy" / "samples.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image_description"] for r in rows] == [s.image_description for s in dataset]


def test_description_is_optional_and_checked(tmp_path: Path) -> None:
    file = tmp_path / "d.jsonl"
    file.write_text(
        json.dumps({"id": "a", "question": "2+2?", "answer": "4"})
        + "\n"
        + json.dumps({"id": "b", "question": "3+3?", "answer": "6", "image_description": "  "})
        + "\n"
        + json.dumps({"id": "c", "question": "1+1?", "answer": "2", "image_description": 7})
        + "\n"
    )
    dataset = load_dataset(file)
    assert [s.image_description for s in dataset] == [None, None]
    assert len(dataset.problems) == 1 and "image_description" in dataset.problems[0].message
    with pytest.raises(ValueError, match="image_description"):
        Sample("x", "q?", "1", image_description=["no"])  # type: ignore[arg-type]
