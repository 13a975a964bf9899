"""VisualPuzzles, read from a local copy of its Hugging Face dataset (``neulab/VisualPuzzles``).

Layout: ``data.parquet`` at the top of the folder (a later revision shards it
as ``data/<split>-*.parquet``), with columns ``id`` (int), ``category``
(algorithmic, analogical, deductive, inductive, spatial), ``image`` (an image
struct with the bytes), ``question``, ``options`` (four strings, or null when
the options are drawn in the image), ``answer`` (a letter A-D) and, in some
revisions, ``difficulty``. Every puzzle is four-way multiple choice.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ted_sglang.data.dataset import Dataset, Problem, collect_samples
from ted_sglang.data.image_cache import default_cache_dir
from ted_sglang.data.parquet import image_from_cell, iter_parquet_rows

NUM_CHOICES = 4


def load_visualpuzzles(
    path: str | Path,
    *,
    split: str | None = None,
    skip_missing_images: bool = False,
    image_cache_dir: Path | None = None,
) -> Dataset:
    """Load VisualPuzzles from its folder or a parquet file; images go to ``image_cache_dir``."""
    path = Path(path).resolve()
    files = parquet_files(path, split)
    folder = image_cache_dir or default_cache_dir() / "images" / "visualpuzzles"
    base = path if path.is_dir() else path.parent
    samples, problems = collect_samples(
        _records(files, folder, base),
        image_root=base,
        skip_missing_images=skip_missing_images,
        unit="row",
    )
    return Dataset(samples, problems, path, "visualpuzzles", split)


def parquet_files(path: Path, split: str | None = None) -> list[Path]:
    """The parquet file(s) of a VisualPuzzles folder (or the file itself)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"VisualPuzzles path not found: {path}")
    single = path / "data.parquet"
    if single.is_file():
        if split not in (None, "test", "train"):
            raise ValueError(f"{single} holds the whole benchmark; it has no split {split!r}")
        return [single]
    pattern = f"{split}-*.parquet" if split else "*.parquet"
    shards = sorted((path / "data").glob(pattern))
    if not shards:
        raise ValueError(
            f"no VisualPuzzles data under {path}: expected data.parquet or data/{pattern}"
        )
    return shards


def looks_like_visualpuzzles(path: Path) -> bool:
    return (path / "data.parquet").is_file() or any((path / "data").glob("*.parquet"))


def _records(
    files: list[Path], folder: Path, base: Path
) -> Iterator[tuple[Path, int, dict[str, Any] | Problem]]:
    for file in files:
        for number, row in iter_parquet_rows(file):
            out = dict(row)
            out["options"] = row.get("options") or None
            if out["options"] is None:
                out["num_choices"] = NUM_CHOICES
            out["answer_type"] = "choice"
            out["source"] = "visualpuzzles"
            try:
                out["image"] = image_from_cell(
                    row.get("image"), folder=folder, stem=f"{row.get('id')}", base=base
                )
            except ValueError as exc:
                yield file, number, Problem(file, number, str(exc), "row")
                continue
            yield file, number, out
