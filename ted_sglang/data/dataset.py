"""A loaded dataset: its samples and the problems found while reading it.

Every loader turns its source's rows into plain dicts and hands them to
:func:`collect_samples`, which validates them, skips bad rows (recording a
:class:`Problem` with file and line) and drops duplicate ids. A missing image
is an error (:class:`MissingImageError`, a ``ValueError``) unless the caller
asked to skip such rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ted_sglang.data.sample import Sample

# Row fields that become Sample fields; every other field goes into Sample.meta.
SAMPLE_FIELDS = (
    "id", "question", "answer", "image", "options", "category", "answer_type",
    "image_description",
)  # fmt: skip
REQUIRED_FIELDS = ("id", "question", "answer")


class MissingImageError(ValueError):
    """A row names an image file that does not exist."""


@dataclass(frozen=True)
class Problem:
    """A row that was skipped, and why; ``line`` is 1-based (a line or a table row)."""

    path: Path
    line: int | None
    message: str
    unit: str = "line"

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.message}"
        if self.unit == "line":
            return f"{self.path}:{self.line}: {self.message}"
        return f"{self.path}: {self.unit} {self.line}: {self.message}"


@dataclass
class Dataset:
    """Samples in source order, plus the problems met while loading them."""

    samples: list[Sample]
    problems: list[Problem] = field(default_factory=list)
    source: Path | None = None
    format: str = "jsonl"
    split: str | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def by_id(self) -> dict[str, Sample]:
        return {sample.id: sample for sample in self.samples}


def sample_from_row(row: dict[str, Any], image_root: Path) -> Sample:
    """Build a Sample from a row; ``image`` is relative to ``image_root`` unless absolute.

    Raises ValueError naming the bad field, MissingImageError for a missing image.
    """
    missing = [name for name in REQUIRED_FIELDS if row.get(name) is None]
    if missing:
        raise ValueError("missing field " + ", ".join(repr(name) for name in missing))
    sample_id = row["id"]
    if isinstance(sample_id, int) and not isinstance(sample_id, bool):
        sample_id = str(sample_id)
    answer = row["answer"]
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        answer = str(answer)
    for name, value, kinds in (
        ("id", sample_id, (str,)),
        ("question", row["question"], (str,)),
        ("answer", answer, (str,)),
        ("image", row.get("image"), (str, Path, type(None))),
        ("options", row.get("options"), (list, tuple, type(None))),
        ("category", row.get("category"), (str, type(None))),
        ("answer_type", row.get("answer_type"), (str, type(None))),
        ("image_description", row.get("image_description"), (str, type(None))),
    ):
        if not isinstance(value, kinds):
            wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise ValueError(f"field {name!r} must be {wanted}, got {type(value).__name__}")
    options = row.get("options")
    if options is not None and not all(isinstance(o, str) for o in options):
        raise ValueError("field 'options' must be a list of strings")
    for name, value in row.items():
        try:
            json.dumps([name, value], ensure_ascii=False, default=str).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"field {name!r} holds a lone UTF-16 surrogate (not text)") from None
    image = row.get("image") or None  # "" means no image, as null does
    image_path = None
    if image is not None:
        image_path = Path(image) if Path(image).is_absolute() else image_root / image
        if not image_path.is_file():
            raise MissingImageError(f"image not found: {image_path}")
    meta = {key: value for key, value in row.items() if key not in SAMPLE_FIELDS}
    return Sample(
        id=sample_id,
        question=row["question"],
        answer=answer,
        image=image_path,
        options=list(options) if options else None,
        category=row.get("category"),
        answer_type=row.get("answer_type") or "",
        meta=meta,
        image_description=row.get("image_description"),
    )


def collect_samples(
    records: Iterable[tuple[Path, int, dict[str, Any] | Problem]],
    *,
    image_root: Path,
    skip_missing_images: bool = False,
    unit: str = "line",
) -> tuple[list[Sample], list[Problem]]:
    """Validate ``(file, line, row)`` records into samples; a record may already be a Problem."""
    samples: list[Sample] = []
    problems: list[Problem] = []
    first_seen: dict[str, str] = {}
    for path, line, row in records:
        if isinstance(row, Problem):
            problems.append(row)
            continue
        try:
            sample = sample_from_row(row, image_root)
        except MissingImageError as exc:
            where = Problem(path, line, str(exc), unit)
            if not skip_missing_images:
                raise MissingImageError(str(where)) from None
            problems.append(where)
            continue
        except ValueError as exc:
            problems.append(Problem(path, line, str(exc), unit))
            continue
        if sample.id in first_seen:
            message = f"duplicate id {sample.id!r} (first at {first_seen[sample.id]})"
            problems.append(Problem(path, line, message, unit))
            continue
        first_seen[sample.id] = str(Problem(path, line, "", unit)).rstrip(": ")
        samples.append(sample)
    return samples, problems


def filter_split(samples: list[Sample], split: str | None, path: Path) -> list[Sample]:
    """The samples whose ``meta['split']`` is ``split`` (all of them when None)."""
    if split is None:
        return samples
    present = sorted({str(s.meta["split"]) for s in samples if s.meta.get("split") is not None})
    if not present:
        raise ValueError(
            f"{path} has no 'split' field, so split {split!r} cannot be selected: "
            'load it without a split, or add "split": "train"/"test" to each row'
        )
    chosen = [s for s in samples if s.meta.get("split") == split]
    if not chosen:
        raise ValueError(f"{path} has no rows with split {split!r}; splits present: {present}")
    return chosen
