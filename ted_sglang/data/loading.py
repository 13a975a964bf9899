"""One entry point for every dataset layout: :func:`load_dataset`."""

from __future__ import annotations

from pathlib import Path

from ted_sglang.data.dataset import Dataset
from ted_sglang.data.jsonl import read_jsonl
from ted_sglang.data.mathvision import load_mathvision, looks_like_mathvision
from ted_sglang.data.visualpuzzles import load_visualpuzzles, looks_like_visualpuzzles

FORMATS = ("jsonl", "mathvision", "visualpuzzles")
# The file a folder in the project's own format holds (as written by `sample-data`).
SAMPLES_FILE = "samples.jsonl"


def load_dataset(
    path: str | Path,
    *,
    format: str | None = None,
    split: str | None = None,
    skip_missing_images: bool = False,
    image_cache_dir: str | Path | None = None,
) -> Dataset:
    """Load samples from a JSONL file, a MathVision copy or a VisualPuzzles copy.

    ``format`` is detected from the path when None. ``split`` selects rows by
    their ``split`` field in JSONL (``train``/``test``) and the publisher's
    split for the benchmarks (MathVision: ``test``, ``testmini``). Bad rows are
    skipped and listed in ``Dataset.problems``; a missing image raises
    ValueError naming it, unless ``skip_missing_images`` makes it a problem too.
    Images embedded in parquet files are written to ``image_cache_dir``.
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise ValueError(f"dataset not found: {path}")
    format = format or detect_format(path)
    cache = Path(image_cache_dir) if image_cache_dir is not None else None
    if format == "jsonl":
        file = path / SAMPLES_FILE if path.is_dir() else path
        return read_jsonl(file, split=split, skip_missing_images=skip_missing_images)
    if format == "mathvision":
        return load_mathvision(
            path, split=split, skip_missing_images=skip_missing_images, image_cache_dir=cache
        )
    if format == "visualpuzzles":
        return load_visualpuzzles(
            path, split=split, skip_missing_images=skip_missing_images, image_cache_dir=cache
        )
    raise ValueError(f"unknown dataset format {format!r}; choose one of {FORMATS}")


def detect_format(path: Path) -> str:
    """Which loader reads ``path``; raises ValueError saying what was expected."""
    if path.is_file():
        if path.suffix == ".parquet":
            from ted_sglang.data.parquet import parquet_columns

            return "mathvision" if "decoded_image" in parquet_columns(path) else "visualpuzzles"
        is_mathvision_file = (
            path.parent.name == "data"
            and path.stem in ("test", "testmini")
            and (path.parent.parent / "images").is_dir()
        )
        return "mathvision" if is_mathvision_file else "jsonl"
    if (path / SAMPLES_FILE).is_file():
        return "jsonl"
    if looks_like_mathvision(path):
        return "mathvision"
    if looks_like_visualpuzzles(path):
        return "visualpuzzles"
    raise ValueError(
        f"cannot tell the dataset format of {path}: expected {SAMPLES_FILE}, "
        "a MathVision copy (data/test.jsonl or data/test-*.parquet) or a VisualPuzzles copy "
        "(data.parquet); pass format= to choose"
    )
