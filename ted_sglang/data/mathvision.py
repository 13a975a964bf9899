"""MathVision (MATH-V), read from a local copy in either layout its publishers ship.

GitHub (``mathllm/MATH-V``)::

    data/test.jsonl, data/testmini.jsonl   one problem per line
    images/<n>.jpg

    {"id": "4", "question": "...<image1>", "options": [], "answer": "6",
     "solution": null, "level": 1, "subject": "counting", "image": "images/4.jpg"}

Hugging Face (``MathLLMs/MathVision``)::

    data/test-00000-of-00001-<hash>.parquet, data/testmini-...parquet

    the same columns, plus ``decoded_image`` (the image's bytes)

``options`` is empty for free-form problems (a number or a short text); with
options the answer is a letter. A few free-form problems have their options
drawn in the image and a letter as the answer: they become multiple choice
over A-E. ``subject`` becomes the category; ``level``, ``solution`` and
``subject`` stay in ``meta``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ted_sglang.data.dataset import Dataset, Problem, collect_samples
from ted_sglang.data.image_cache import default_cache_dir
from ted_sglang.data.jsonl import read_jsonl
from ted_sglang.data.parquet import image_from_cell, iter_parquet_rows

SPLITS = ("test", "testmini")
DEFAULT_SPLIT = "test"


def load_mathvision(
    path: str | Path,
    *,
    split: str | None = None,
    skip_missing_images: bool = False,
    image_cache_dir: Path | None = None,
) -> Dataset:
    """Load a MathVision split (``test`` by default) from a folder or one of its files."""
    path = Path(path).resolve()
    if path.is_dir():
        root = path
        split = split or DEFAULT_SPLIT
        files = split_files(root, split)
    elif path.is_file():
        root = path.parent.parent if path.parent.name == "data" else path.parent
        file_split = split_of(path)
        if split is not None and split != file_split:
            raise ValueError(f"{path} holds split {file_split!r}, not {split!r}")
        split, files = file_split, [path]
    else:
        raise ValueError(f"MathVision path not found: {path}")

    if files[0].suffix == ".jsonl":
        dataset = read_jsonl(
            files[0],
            skip_missing_images=skip_missing_images,
            image_root=root,
            row_hook=lambda row: _normalize_row(row, split),
            format="mathvision",
        )
        dataset.split = split
        return dataset
    folder = image_cache_dir or default_cache_dir() / "images" / "mathvision"
    samples, problems = collect_samples(
        _parquet_records(files, root, folder, split),
        image_root=root,
        skip_missing_images=skip_missing_images,
        unit="row",
    )
    return Dataset(samples, problems, path, "mathvision", split)


def split_of(path: Path) -> str:
    """The split a MathVision file holds: ``test`` for ``test.jsonl`` or ``test-0000...parquet``."""
    return path.name.split(".")[0].split("-")[0]


def split_files(root: Path, split: str) -> list[Path]:
    """The file(s) of ``split`` under a MathVision folder."""
    data = root / "data"
    jsonl = data / f"{split}.jsonl"
    if jsonl.is_file():
        return [jsonl]
    shards = sorted(data.glob(f"{split}-*.parquet"))
    if shards:
        return shards
    found = sorted(
        {split_of(p) for p in data.glob("*.jsonl")} | {split_of(p) for p in data.glob("*.parquet")}
    )
    raise ValueError(
        f"no MathVision split {split!r} under {root}: expected data/{split}.jsonl or "
        f"data/{split}-*.parquet; splits found: {found or 'none'}"
    )


def looks_like_mathvision(root: Path) -> bool:
    data = root / "data"
    return any((data / f"{s}.jsonl").is_file() or any(data.glob(f"{s}-*.parquet")) for s in SPLITS)


def _normalize_row(row: dict[str, Any], split: str) -> dict[str, Any]:
    out = dict(row)
    out.pop("decoded_image", None)
    out["options"] = row.get("options") or None
    if isinstance(row.get("subject"), str):
        out["category"] = row["subject"]
    answer = row.get("answer")
    if out["options"] is None and isinstance(answer, str) and re.fullmatch(r"[A-E]", answer):
        out["answer_type"] = "choice"  # the options are drawn in the image
    out.setdefault("split", split)
    out["source"] = "mathvision"
    return out


def _parquet_records(
    files: list[Path], root: Path, folder: Path, split: str
) -> Iterator[tuple[Path, int, dict[str, Any] | Problem]]:
    for file in files:
        for number, row in iter_parquet_rows(file):
            out = _normalize_row(row, split)
            name = row.get("image")
            local = root / name if isinstance(name, str) and name else None
            try:
                if local is not None and local.is_file():
                    out["image"] = local
                else:
                    stem = f"{row.get('id')}"
                    image = image_from_cell(
                        row.get("decoded_image"), folder=folder, stem=stem, base=root
                    )
                    out["image"] = image if image is not None else local
            except ValueError as exc:
                yield file, number, Problem(file, number, str(exc), "row")
                continue
            yield file, number, out
