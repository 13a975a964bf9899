"""Reading parquet files as the Hugging Face hub stores datasets.

An image column (``datasets.Image``) is a struct ``{bytes, path}`` per row.
pyarrow is imported only when a parquet file is actually read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ted_sglang.data.image_cache import store_image


def parquet_columns(path: Path) -> list[str]:
    """The column names of a parquet file."""
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def iter_parquet_rows(path: Path, batch_size: int = 64) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number from 1, row)`` for every row, reading a batch at a time."""
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def image_from_cell(cell: Any, *, folder: Path, stem: str, base: Path) -> Path | None:
    """A file for an image cell: bytes are written to ``folder``; a bare path is under ``base``.

    Returns None for an empty cell. A named file is returned even when it is not
    there: the row check reports it as a missing image.
    """
    if cell is None:
        return None
    if isinstance(cell, bytes | bytearray):
        return store_image(bytes(cell), folder, stem)
    if not isinstance(cell, dict):
        raise ValueError(f"image cell must be a struct with 'bytes' or 'path', got {type(cell)}")
    data = cell.get("bytes")
    if data:
        return store_image(bytes(data), folder, stem)
    name = cell.get("path")
    if not name:
        return None
    return Path(name) if Path(name).is_absolute() else base / name
