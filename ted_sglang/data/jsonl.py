"""The project's own dataset format: one JSON object per line.

Fields: ``id`` (string), ``question``, ``answer``, and optionally ``image`` (a
path relative to the JSONL file), ``options`` (a list of strings, shown as A,
B, C...; the answer is then a letter), ``category``, ``answer_type``
(``choice``/``number``/``text``; inferred when absent), ``split``
(``train``/``test``) and ``image_description`` (the image in words, for
text-only models). Other fields are kept in ``Sample.meta``. Blank lines
are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ted_sglang.data.dataset import Dataset, Problem, collect_samples, filter_split
from ted_sglang.data.sample import Sample

RowHook = Callable[[dict[str, Any]], dict[str, Any]]


def read_jsonl(
    path: str | Path,
    *,
    split: str | None = None,
    skip_missing_images: bool = False,
    image_root: Path | None = None,
    row_hook: RowHook | None = None,
    format: str = "jsonl",
) -> Dataset:
    """Load a JSONL dataset; bad rows are skipped and listed in ``Dataset.problems``.

    ``image_root`` is where relative image paths start (default: the file's folder);
    ``row_hook`` maps each parsed row to the project's fields (used by the
    benchmark loaders that share this reader).
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise ValueError(f"dataset file not found: {path}")
    records = _records(path, row_hook)
    samples, problems = collect_samples(
        records,
        image_root=image_root or path.parent,
        skip_missing_images=skip_missing_images,
    )
    return Dataset(filter_split(samples, split, path), problems, path, format, split)


def _records(path: Path, row_hook: RowHook | None) -> Iterator[tuple[Path, int, dict | Problem]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problem = Problem(path, number, f"invalid JSON: {exc.msg} (column {exc.colno})")
                yield path, number, problem
                continue
            if not isinstance(row, dict):
                yield path, number, Problem(path, number, "a row must be a JSON object")
                continue
            yield path, number, row_hook(row) if row_hook is not None else row


def sample_to_row(sample: Sample, base_dir: Path) -> dict[str, Any]:
    """The JSONL row for ``sample``, its image path relative to ``base_dir`` when inside it."""
    row: dict[str, Any] = {"id": sample.id, "question": sample.question}
    if sample.image is not None:
        try:
            row["image"] = sample.image.relative_to(base_dir.resolve()).as_posix()
        except ValueError:
            row["image"] = str(sample.image)
    if sample.options is not None:
        row["options"] = list(sample.options)
    row["answer"] = sample.answer
    row["answer_type"] = sample.answer_type
    if sample.category is not None:
        row["category"] = sample.category
    if sample.image_description is not None:
        row["image_description"] = sample.image_description
    for key, value in sample.meta.items():
        row.setdefault(key, value)
    return row


def write_jsonl(samples: Iterable[Sample], path: str | Path) -> Path:
    """Write ``samples`` as JSONL (images referenced relative to the file's folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    lines = [json.dumps(sample_to_row(s, base), ensure_ascii=False) + "\n" for s in samples]
    path.write_text("".join(lines), encoding="utf-8")
    return path
