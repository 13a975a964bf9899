"""Dataset loaders: the JSONL format, MathVision and VisualPuzzles layouts, splits."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ted_sglang.cli import main
from ted_sglang.data import (
    MissingImageError,
    Sample,
    detect_format,
    load_dataset,
    split_samples,
    write_jsonl,
)
from ted_sglang.data.image_cache import default_cache_dir
from ted_sglang.data.split import question_key

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png_bytes(colour: tuple[int, int, int], size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_lines(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- the JSONL format ----------------------------------------------------------


def test_jsonl_rows_become_samples(tmp_path: Path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png_bytes((255, 0, 0)))
    path = write_lines(
        tmp_path / "set.jsonl",
        [
            {
                "id": "a",
                "question": "Colour?",
                "image": "img/a.png",
                "options": ["red", "blue"],
                "answer": "B",
                "category": "colour",
                "level": 2,
            },
            {"id": 7, "question": "How many?", "answer": 12},
            {"id": "c", "question": "Which?", "options": ["cat", "dog"], "answer": "dog"},
            {"id": "d", "question": "Word?", "answer": "KNAO", "options": []},
            "",
            {"id": "e", "question": "Piece?", "answer": "D"},
        ],
    )
    dataset = load_dataset(path)
    assert dataset.problems == []
    assert dataset.format == "jsonl"
    a, seven, c, d, e = dataset.samples
    assert a.image == (tmp_path / "img" / "a.png").resolve() and a.image.is_absolute()
    assert (a.answer_type, a.category, a.meta) == ("choice", "colour", {"level": 2})
    assert (seven.id, seven.answer, seven.answer_type, seven.image) == ("7", "12", "number", None)
    assert (c.answer, c.correct_option) == ("B", "dog")  # an option's text becomes its letter
    assert (d.answer_type, d.options) == ("text", None)
    assert (e.answer_type, e.choice_letters) == ("choice", "ABCDE")  # options in the image


def test_bad_jsonl_rows_are_skipped_and_reported_with_file_and_line(tmp_path: Path):
    path = write_lines(
        tmp_path / "bad.jsonl",
        [
            {"id": "ok1", "question": "Q1?", "answer": "1"},
            '{"id": "broken", "question": ',
            {"id": "noanswer", "question": "Q3?"},
            {"id": "badopts", "question": "Q4?", "options": "A or B", "answer": "A"},
            {"id": "badq", "question": 5, "answer": "1"},
            {"id": "range", "question": "Q6?", "options": ["x", "y"], "answer": "C"},
            {"id": "ok1", "question": "Q7?", "answer": "2"},
            "[1, 2]",
            {"id": "badtype", "question": "Q9?", "answer": "x", "answer_type": "number"},
            {"id": "ok2", "question": "Q10?", "answer": "3"},
        ],
    )
    dataset = load_dataset(path)
    assert [s.id for s in dataset] == ["ok1", "ok2"]
    reported = {p.line: str(p) for p in dataset.problems}
    assert sorted(reported) == [2, 3, 4, 5, 6, 7, 8, 9]
    for line, text in reported.items():
        assert text.startswith(f"{path}:{line}: ")
    assert "invalid JSON" in reported[2]
    assert "missing field 'answer'" in reported[3]
    assert "'options' must be list" in reported[4]
    assert "'question' must be str" in reported[5]
    assert "neither a letter A-B" in reported[6]
    assert f"duplicate id 'ok1' (first at {path}:1)" in reported[7]
    assert "JSON object" in reported[8]
    assert "not a number" in reported[9]


def test_missing_image_is_an_error_naming_it(tmp_path: Path):
    path = write_lines(
        tmp_path / "set.jsonl",
        [
            {"id": "a", "question": "Q?", "answer": "1"},
            {"id": "b", "question": "Q?", "answer": "2", "image": "images/gone.png"},
        ],
    )
    with pytest.raises(MissingImageError) as info:
        load_dataset(path)
    message = str(info.value)
    assert str(tmp_path / "images" / "gone.png") in message
    assert f"{path}:2:" in message
    assert isinstance(info.value, ValueError)

    dataset = load_dataset(path, skip_missing_images=True)
    assert [s.id for s in dataset] == ["a"]
    assert "gone.png" in str(dataset.problems[0]) and dataset.problems[0].line == 2


def test_split_field_selects_rows(tmp_path: Path):
    rows = [
        {"id": "a", "question": "Q1?", "answer": "1", "split": "train"},
        {"id": "b", "question": "Q2?", "answer": "2", "split": "test"},
        {"id": "c", "question": "Q3?", "answer": "3", "split": "train"},
    ]
    path = write_lines(tmp_path / "s.jsonl", rows)
    assert [s.id for s in load_dataset(path, split="train")] == ["a", "c"]
    assert [s.id for s in load_dataset(path, split="test")] == ["b"]
    assert len(load_dataset(path)) == 3
    with pytest.raises(ValueError, match="splits present"):
        load_dataset(path, split="dev")
    plain = write_lines(tmp_path / "plain.jsonl", [{"id": "a", "question": "Q?", "answer": "1"}])
    with pytest.raises(ValueError, match="no 'split' field"):
        load_dataset(plain, split="train")


def test_write_jsonl_round_trips(tmp_path: Path):
    (tmp_path / "pics").mkdir()
    image = tmp_path / "pics" / "x.png"
    image.write_bytes(png_bytes((0, 0, 255)))
    samples = [
        Sample(
            "x",
            "Colour?",
            "blue",
            image=image,
            options=["red", "blue"],
            category="c",
            meta={"split": "test"},
        ),
        Sample("y", "Sum?", "-3.5"),
    ]
    path = write_jsonl(samples, tmp_path / "out.jsonl")
    row = json.loads(path.read_text().splitlines()[0])
    assert row["image"] == "pics/x.png" and row["answer"] == "B"
    loaded = load_dataset(path).samples
    assert loaded == [
        Sample(
            "x",
            "Colour?",
            "B",
            image=image,
            options=["red", "blue"],
            category="c",
            answer_type="choice",
            meta={"split": "test"},
        ),
        Sample("y", "Sum?", "-3.5", answer_type="number"),
    ]


# --- MathVision ----------------------------------------------------------------

MATHVISION_ROWS = [
    {
        "id": "4",
        "question": "How many different digits can you find in this picture?\n<image1>",
        "options": [],
        "answer": "6",
        "solution": None,
        "level": 1,
        "subject": "counting",
        "image": "images/4.jpg",
    },
    {
        "id": "39",
        "question": "Which colour is the cube with the question mark?\n<image1>",
        "options": ["red", "blue", "green", "Yellow", "This cannot be worked out for certain."],
        "answer": "A",
        "solution": None,
        "level": 3,
        "subject": "logic",
        "image": "images/39.jpg",
    },
    {
        "id": "59",
        "question": "Which side is opposite to <image3>?\n<image4>",
        "options": [],
        "answer": "C",
        "solution": None,
        "level": 1,
        "subject": "solid geometry",
        "image": "images/59.jpg",
    },
    {
        "id": "91",
        "question": "How long is the room? <image1>",
        "options": [
            "$6 \\mathrm{~m}$",
            "$8 \\mathrm{~m}$",
            "$10 \\mathrm{~m}$",
            "$11 \\mathrm{~m}$",
            "$12 \\mathrm{~m}$",
        ],
        "answer": "E",
        "solution": "Four tiles of 3 m.",
        "level": 1,
        "subject": "combinatorial geometry",
        "image": "images/91.jpg",
    },
    {
        "id": "1831",
        "question": "What is the length of the diagonal? <image1>",
        "options": [],
        "answer": "2\\sqrt{2}",
        "solution": "",
        "level": 4,
        "subject": "metric geometry - length",
        "image": "images/1831.jpg",
    },
]


def make_mathvision_github(root: Path) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "images").mkdir()
    for i, row in enumerate(MATHVISION_ROWS):
        (root / row["image"]).write_bytes(png_bytes((i * 40, 0, 0)))
    write_lines(root / "data" / "test.jsonl", MATHVISION_ROWS)
    write_lines(root / "data" / "testmini.jsonl", MATHVISION_ROWS[:2])
    return root


def test_mathvision_github_layout(tmp_path: Path):
    root = make_mathvision_github(tmp_path / "MATH-V")
    dataset = load_dataset(root)
    assert (dataset.format, dataset.split, dataset.problems) == ("mathvision", "test", [])
    by_id = dataset.by_id()
    assert [s.id for s in dataset] == ["4", "39", "59", "91", "1831"]
    assert (by_id["4"].answer_type, by_id["4"].options, by_id["4"].category) == (
        "number",
        None,
        "counting",
    )
    assert (by_id["39"].answer_type, by_id["39"].correct_option) == ("choice", "red")
    assert (by_id["59"].answer_type, by_id["59"].choice_letters) == ("choice", "ABCDE")
    assert by_id["91"].meta["solution"] == "Four tiles of 3 m."
    assert by_id["1831"].answer_type == "text"
    assert by_id["4"].meta["level"] == 1 and by_id["4"].meta["split"] == "test"
    assert by_id["4"].image == (root / "images" / "4.jpg").resolve()

    mini = load_dataset(root, split="testmini")
    assert [s.id for s in mini] == ["4", "39"] and mini.split == "testmini"
    assert detect_format(root / "data" / "test.jsonl") == "mathvision"
    assert len(load_dataset(root / "data" / "testmini.jsonl")) == 2
    with pytest.raises(ValueError, match=r"splits found: \['test', 'testmini'\]"):
        load_dataset(root, split="train")


def test_mathvision_parquet_layout_writes_embedded_images_to_the_cache(tmp_path: Path):
    root = tmp_path / "MathVision"
    (root / "data").mkdir(parents=True)
    images = [png_bytes((0, i * 50, 0)) for i in range(len(MATHVISION_ROWS))]
    table = pa.table(
        {
            "id": [r["id"] for r in MATHVISION_ROWS],
            "question": [r["question"] for r in MATHVISION_ROWS],
            "options": [r["options"] for r in MATHVISION_ROWS],
            "image": [r["image"] for r in MATHVISION_ROWS],
            "decoded_image": pa.array(
                [{"bytes": b, "path": None} for b in images], type=IMAGE_STRUCT
            ),
            "answer": [r["answer"] for r in MATHVISION_ROWS],
            "solution": [r["solution"] for r in MATHVISION_ROWS],
            "level": pa.array([r["level"] for r in MATHVISION_ROWS], type=pa.int64()),
            "subject": [r["subject"] for r in MATHVISION_ROWS],
        }
    )
    pq.write_table(table, root / "data" / "test-00000-of-00001-3532b8d3.parquet")
    pq.write_table(table.slice(0, 2), root / "data" / "testmini-00000-of-00001-f8ff70fc.parquet")

    cache = tmp_path / "cache"
    dataset = load_dataset(root, image_cache_dir=cache)
    assert dataset.format == "mathvision" and dataset.problems == []
    assert [s.id for s in dataset] == ["4", "39", "59", "91", "1831"]
    for sample, data in zip(dataset, images, strict=True):
        assert sample.image.parent == cache.resolve()
        assert sample.image.read_bytes() == data
        assert "decoded_image" not in sample.meta
    assert dataset.by_id()["59"].answer_type == "choice"
    again = load_dataset(root, image_cache_dir=cache)
    assert [s.image for s in again] == [s.image for s in dataset]
    assert len(load_dataset(root, split="testmini", image_cache_dir=cache)) == 2

    # Images extracted next to the data (images.zip unpacked) are used as they are.
    (root / "images").mkdir()
    (root / "images" / "4.jpg").write_bytes(images[0])
    local = load_dataset(root, image_cache_dir=cache).by_id()["4"]
    assert local.image == (root / "images" / "4.jpg").resolve()


# --- VisualPuzzles -------------------------------------------------------------


def visualpuzzles_table(extra: dict | None = None) -> tuple[pa.Table, list[bytes]]:
    images = [png_bytes((0, 0, 60 * i)) for i in range(4)]
    columns = {
        "id": pa.array([1, 2, 3, 4], type=pa.int64()),
        "category": ["inductive", "spatial", "deductive", "algorithmic"],
        "image": pa.array(
            [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)], type=IMAGE_STRUCT
        ),
        "question": [
            "Choose the most appropriate option to fill in the question mark.",
            "What is the maximum number of pieces of cheese that he can eat?",
            "What word did Bruce cipher NQ OH OT WI?",
            "Which kite has the longest string?",
        ],
        "options": pa.array(
            [None, ["32", "35", "37", "40"], ["XOCR", "DJWS", "KQFV", "KFQV"], None],
            type=pa.list_(pa.string()),
        ),
        "answer": ["B", "C", "E", "C"],
    }
    columns.update(extra or {})
    return pa.table(columns), images


def test_visualpuzzles_layout(tmp_path: Path):
    root = tmp_path / "VisualPuzzles"
    root.mkdir()
    table, images = visualpuzzles_table()
    pq.write_table(table, root / "data.parquet")
    dataset = load_dataset(root, image_cache_dir=tmp_path / "cache")
    assert dataset.format == "visualpuzzles"
    assert [s.id for s in dataset] == ["1", "2", "4"]
    (problem,) = dataset.problems
    assert problem.line == 3 and str(problem).startswith(f"{root / 'data.parquet'}: row 3: ")
    first, second, fourth = dataset.samples
    assert (first.options, first.choice_letters, first.category) == (None, "ABCD", "inductive")
    assert (second.answer, second.correct_option) == ("C", "37")
    assert fourth.answer_type == "choice"
    assert first.image.read_bytes() == images[0] and fourth.image.read_bytes() == images[3]
    assert first.image.suffix == ".png"
    # A parquet file is recognised on its own as well.
    assert detect_format(root / "data.parquet") == "visualpuzzles"


def test_visualpuzzles_sharded_layout_keeps_extra_columns(tmp_path: Path):
    root = tmp_path / "vp"
    (root / "data").mkdir(parents=True)
    table, _ = visualpuzzles_table({"difficulty": ["easy", "medium", "hard", "easy"]})
    pq.write_table(table.slice(0, 2), root / "data" / "train-00000-of-00001.parquet")
    dataset = load_dataset(root, image_cache_dir=tmp_path / "cache")
    assert [s.meta["difficulty"] for s in dataset] == ["easy", "medium"]
    assert len(load_dataset(root, split="train", image_cache_dir=tmp_path / "cache")) == 2
    with pytest.raises(ValueError, match="data/test-"):
        load_dataset(root, split="test", image_cache_dir=tmp_path / "cache")


def test_default_image_cache_follows_the_environment(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TED_SGLANG_CACHE_DIR", str(tmp_path / "tc"))
    assert default_cache_dir() == tmp_path / "tc"
    root = tmp_path / "vp"
    root.mkdir()
    pq.write_table(visualpuzzles_table()[0], root / "data.parquet")
    sample = load_dataset(root)[0]
    assert sample.image.parent == (tmp_path / "tc" / "images" / "visualpuzzles").resolve()
    monkeypatch.delenv("TED_SGLANG_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "ted-sglang"


def test_unknown_layout_says_what_was_expected(tmp_path: Path):
    with pytest.raises(ValueError, match="cannot tell the dataset format"):
        load_dataset(tmp_path)
    with pytest.raises(ValueError, match="not found"):
        load_dataset(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="unknown dataset format"):
        load_dataset(tmp_path, format="csv")


# --- splits --------------------------------------------------------------------


def test_split_samples_keeps_questions_apart():
    samples = [Sample(f"s{i}", f"Question {i % 7}?", str(i)) for i in range(30)]
    train, test = split_samples(samples, 12, seed=3)
    assert len(train) <= 12 and len(train) + len(test) == 30
    assert {s.id for s in train}.isdisjoint({s.id for s in test})
    assert {question_key(s) for s in train}.isdisjoint({question_key(s) for s in test})
    assert (train, test) == split_samples(list(samples), 12, seed=3)
    assert [s.id for s in train] == sorted((s.id for s in train), key=lambda i: int(i[1:]))
    distinct = [Sample(f"d{i}", f"Distinct {i}?", "1") for i in range(10)]
    assert len(split_samples(distinct, 4)[0]) == 4
    with pytest.raises(ValueError, match="num_train"):
        split_samples(distinct, 11)


# --- the check-data command ----------------------------------------------------


def test_check_data_prints_problems(tmp_path: Path, capsys):
    path = write_lines(
        tmp_path / "d.jsonl",
        [
            {"id": "a", "question": "Q?", "answer": "1"},
            "{oops",
            {"id": "a", "question": "Q?", "answer": "2"},
        ],
    )
    assert main(["check-data", str(path)]) == 1
    captured = capsys.readouterr()
    assert f"{path}:2: invalid JSON" in captured.err
    assert f"{path}:3: duplicate id 'a'" in captured.err
    assert "1 samples" in captured.out
    good = write_lines(tmp_path / "g.jsonl", [{"id": "a", "question": "Q?", "answer": "1"}])
    assert main(["check-data", str(good)]) == 0


# --- the Sample itself ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"id": " "}, "id must be a non-empty string"),
        ({"question": ""}, "question must be a non-empty string"),
        ({"options": ["only one"], "answer": "A"}, "needs 2 to 26 options"),
        ({"options": ["x", "y"], "answer": "z"}, "neither a letter A-B"),
        ({"answer": "many", "answer_type": "number"}, "is not a number"),
        ({"answer": "3", "answer_type": "guess"}, "answer_type must be one of"),
        ({"options": ["x", "y"], "answer": "A", "answer_type": "text"}, "has answer_type 'choice'"),
    ],
)
def test_sample_rejects_bad_fields(kwargs: dict, message: str):
    fields = {"id": "s", "question": "Q?", "answer": "1"} | kwargs
    with pytest.raises(ValueError, match=message):
        Sample(**fields)


def test_sample_normalises_and_hashes(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sample = Sample("s", "Q?", "(b)", image="pic.png", options=("x", "y"))
    assert sample.image == tmp_path.resolve() / "pic.png"
    assert (sample.answer, sample.options, sample.reference_answer) == ("B", ["x", "y"], "B (y)")
    assert len({sample, Sample("s", "Q?", "B", image="pic.png", options=["x", "y"])}) == 1


def test_rows_holding_lone_surrogates_are_reported(tmp_path: Path):
    path = write_lines(
        tmp_path / "surrogates.jsonl",
        [
            '{"id": "a\\ud800", "question": "Q1?", "answer": "1"}',
            '{"id": "q", "question": "Q\\udfff?", "answer": "1"}',
            '{"id": "m", "question": "Q3?", "answer": "1", "source": ["\\ud83d"]}',
            {"id": "ok", "question": "Q4? \U0001f600", "answer": "1"},
        ],
    )
    dataset = load_dataset(path)
    assert [s.id for s in dataset] == ["ok"]
    reported = {p.line: str(p) for p in dataset.problems}
    assert sorted(reported) == [1, 2, 3]
    for line, name in ((1, "id"), (2, "question"), (3, "source")):
        assert reported[line].startswith(f"{path}:{line}: ")
        assert f"field {name!r} holds a lone UTF-16 surrogate" in reported[line]
