"""Images that arrive as bytes (inside parquet files) written out as files.

A Sample's image is always a path, so embedded images are written once to a
cache folder. File names are content-addressed (``<id>-<sha256 prefix>.<ext>``):
the same bytes always land at the same path, and a changed image never reuses
a stale file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
)


def default_cache_dir() -> Path:
    """``$TED_SGLANG_CACHE_DIR``, else ``$XDG_CACHE_HOME/ted-sglang`` or ``~/.cache/ted-sglang``."""
    if os.environ.get("TED_SGLANG_CACHE_DIR"):
        return Path(os.environ["TED_SGLANG_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ted-sglang"


def image_suffix(data: bytes) -> str:
    """The file extension that the image bytes' signature names."""
    for signature, suffix in _SIGNATURES:
        if data.startswith(signature):
            return suffix
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".img"


def store_image(data: bytes, folder: Path, stem: str) -> Path:
    """Write ``data`` under ``folder`` (once) and return the file's absolute path."""
    if not data:
        raise ValueError(f"image of {stem!r} is empty")
    digest = hashlib.sha256(data).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "image"
    path = folder.resolve() / f"{safe}-{digest}{image_suffix(data)}"
    if path.is_file() and path.stat().st_size == len(data):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
