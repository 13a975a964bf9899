"""The bundled sample set: deterministic, answers that follow from the drawn scenes."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from ted_sglang.data import grade, load_dataset, write_sample_set
from ted_sglang.data.sample import LETTERS
from ted_sglang.data.sample_drawing import BAR_COLOUR, CHART_BOTTOM, CHART_TOP
from ted_sglang.data.sample_set import (
    CATEGORIES,
    COLOURS,
    DEFAULT_COUNT,
    MAX_COUNT,
    generate_rows,
)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("samples")
    write_sample_set(out)
    return out


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_same_seed_gives_identical_bytes(sample_dir: Path, tmp_path: Path):
    again = tmp_path / "again"
    assert write_sample_set(again) == again / "samples.jsonl"
    assert files_of(again) == files_of(sample_dir)
    other = tmp_path / "other"
    write_sample_set(other, seed=1)
    assert (other / "samples.jsonl").read_bytes() != (sample_dir / "samples.jsonl").read_bytes()


def test_layout_and_mix(sample_dir: Path):
    dataset = load_dataset(sample_dir)
    assert dataset.problems == [] and len(dataset) == DEFAULT_COUNT
    assert set(Counter(s.category for s in dataset)) == set(CATEGORIES)
    assert {s.answer_type for s in dataset} == {"choice", "number"}
    for sample in dataset:
        assert sample.image == (sample_dir / "images" / f"{sample.id}.png").resolve()
        with Image.open(sample.image) as image:
            assert image.format == "PNG" and 128 <= image.width <= 224 and image.height <= 224


def test_splits_are_disjoint_in_ids_and_questions(sample_dir: Path):
    train = load_dataset(sample_dir, split="train")
    test = load_dataset(sample_dir, split="test")
    assert len(train) + len(test) == DEFAULT_COUNT
    assert {s.id for s in train}.isdisjoint({s.id for s in test})
    assert {s.question for s in train}.isdisjoint({s.question for s in test})
    assert {s.category for s in train} == {s.category for s in test} == set(CATEGORIES)


def expected_answer(row: dict) -> str:
    """The answer, worked out again from the scene alone."""
    scene, ask = row["scene"], row["scene"]["ask"]
    category = row["category"]
    if category == "counting":
        count = sum(
            (ask["colour"] in (None, s["colour"])) and (ask["shape"] in (None, s["shape"]))
            for s in scene["shapes"]
        )
        return str(count)
    if category == "chart_value":
        return str(next(b["value"] for b in scene["bars"] if b["label"] == ask["label"]))
    if category == "chart_max":
        values = [b["value"] for b in scene["bars"]]
        best = values.index(max(values) if ask["which"] == "tallest" else min(values))
        assert row["options"] == [b["label"] for b in scene["bars"]]
        return LETTERS[best]
    if category == "size_compare":
        widths = [s["box"][2] - s["box"][0] for s in scene["shapes"]]
        best = widths.index(max(widths) if ask["which"] == "largest" else min(widths))
        return LETTERS[row["options"].index(scene["shapes"][best]["colour"])]
    value = {n["colour"]: n["value"] for n in scene["numbers"]}
    a, b = value[ask["left"]], value[ask["right"]]
    return str({"plus": a + b, "minus": a - b, "times": a * b}[ask["op"]])


def test_answers_follow_from_the_scenes():
    rows = generate_rows(MAX_COUNT, seed=5)
    assert len({r["question"] for r in rows}) == MAX_COUNT
    for row in rows:
        assert row["answer"] == expected_answer(row), row["id"]
        ask = row["scene"]["ask"]
        for word in (ask.get("colour"), ask.get("shape"), ask.get("label"), ask.get("which")):
            assert word is None or word in row["question"]


def test_images_show_the_scenes(sample_dir: Path):
    for sample in load_dataset(sample_dir):
        scene = sample.meta["scene"]
        with Image.open(sample.image) as opened:
            image = opened.convert("RGB")
        if sample.category in ("counting", "size_compare"):
            for shape in scene["shapes"]:
                x0, y0, x1, y1 = shape["box"]
                centre = ((x0 + x1) // 2, (y0 + y1) // 2)
                assert image.getpixel(centre) == COLOURS[shape["colour"]], sample.id
        elif sample.category in ("chart_max", "chart_value"):
            unit = (CHART_BOTTOM - CHART_TOP) / scene["max"]
            columns = [
                x for x in range(image.width) if image.getpixel((x, CHART_BOTTOM - 2)) == BAR_COLOUR
            ]
            starts = [x for x in columns if x - 1 not in columns]
            assert len(starts) == len(scene["bars"]), sample.id
            for x, bar in zip(starts, scene["bars"], strict=True):
                height = sum(image.getpixel((x + 3, y)) == BAR_COLOUR for y in range(image.height))
                assert abs(height - bar["value"] * unit) <= 1.5, (sample.id, bar)
        else:
            present = {colour for _, colour in image.getcolors(1 << 16)}
            for number in scene["numbers"]:
                assert COLOURS[number["colour"]] in present, sample.id


def test_graded_against_their_own_answers(sample_dir: Path):
    for sample in load_dataset(sample_dir):
        assert grade(f"Looking at the image...\nAnswer: \\boxed{{{sample.answer}}}", sample)
        wrong = "Z" if sample.answer_type == "choice" else str(int(sample.answer) + 1)
        assert not grade(f"Answer: \\boxed{{{wrong}}}", sample)


def test_a_larger_set_extends_a_smaller_one():
    assert generate_rows(10, seed=2) == generate_rows(30, seed=2)[:10]


@pytest.mark.parametrize("count", [1, MAX_COUNT + 1])
def test_count_out_of_range_is_refused(count: int):
    with pytest.raises(ValueError, match="count must be between"):
        generate_rows(count)


def test_sample_data_command(tmp_path: Path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ted_sglang.cli",
            "sample-data",
            str(out),
            "--count",
            "12",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote 12 samples to {out / 'samples.jsonl'}" in result.stdout
    assert "train 6" in result.stdout and "test 6" in result.stdout
    reference = tmp_path / "ref"
    write_sample_set(reference, count=12, seed=1)
    assert files_of(out) == files_of(reference)

    bad = subprocess.run(
        [sys.executable, "-m", "ted_sglang.cli", "sample-data", str(out), "--count", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "count must be between" in bad.stderr
