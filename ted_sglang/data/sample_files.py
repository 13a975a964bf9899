"""The bundled sample set on disk: rows from :mod:`~ted_sglang.data.sample_set`, images
drawn by :mod:`~ted_sglang.data.sample_drawing` (PIL is imported only when writing)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from ted_sglang.data.sample_set import DEFAULT_COUNT, generate_rows


def write_sample_set(outdir: str | Path, count: int = DEFAULT_COUNT, seed: int = 0) -> Path:
    """Generate the sample set into ``outdir``; returns the path of ``samples.jsonl``."""
    from ted_sglang.data.sample_drawing import render

    rows = generate_rows(count, seed)
    outdir = Path(outdir)
    (outdir / "images").mkdir(parents=True, exist_ok=True)
    for row in rows:
        buffer = io.BytesIO()
        render(row["category"], row["scene"]).save(buffer, format="PNG")
        (outdir / row["image"]).write_bytes(buffer.getvalue())
    path = outdir / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
