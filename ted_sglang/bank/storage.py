"""Bank files: one JSON file per bank, written atomically, with the previous good file
kept beside it as ``<name>.bak``."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMAT_NAME = "ted-sglang-bank"
FORMAT_VERSION = 1


class BankFileError(ValueError):
    """A bank file is missing, unreadable, truncated or inconsistent."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def backup_path(path: str | os.PathLike[str]) -> Path:
    """Where the previous good version of ``path`` is kept."""
    path = Path(path)
    return path.with_name(path.name + ".bak")


def read_bank_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed content of a bank file, its format checked; ``BankFileError`` if not."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BankFileError(path, "no such file") from None
    except OSError as exc:
        raise BankFileError(path, f"cannot be read: {exc.strerror or exc}") from None
    if not raw.strip():
        raise BankFileError(path, "is empty (a write was interrupted?)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BankFileError(path, f"is not UTF-8 text (corrupt?): {exc}") from None
    except json.JSONDecodeError as exc:
        raise BankFileError(path, f"is not valid JSON (truncated or corrupt?): {exc}") from None
    except RecursionError:
        raise BankFileError(path, "is not a bank file (JSON nested too deeply)") from None
    if not _is_bank_json(data):
        raise BankFileError(path, f'is not a bank file (no "format": "{FORMAT_NAME}")')
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BankFileError(path, "has no valid format_version")
    if version > FORMAT_VERSION:
        raise BankFileError(
            path,
            f"has format_version {version}, newer than this ted-sglang reads "
            f"({FORMAT_VERSION}); upgrade ted-sglang",
        )
    return data


def write_bank_json(
    path: str | os.PathLike[str],
    data: dict[str, Any],
    check: Callable[[dict[str, Any]], object] | None = None,
) -> None:
    """Write ``data`` to ``path`` atomically, keeping the file it replaces as the backup
    when that file is a readable bank (``check`` raises ``ValueError`` on its content if
    not); a damaged file never overwrites a good backup."""
    assert _is_bank_json(data)
    path = Path(path)
    payload = (json.dumps(data, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
    if path.exists():
        try:
            previous = read_bank_json(path)
            if check is not None:
                check(previous)
        except ValueError:
            pass  # not a good bank: keep whatever backup there is
        else:
            write_atomic(backup_path(path), path.read_bytes())
    write_atomic(path, payload)


def write_atomic(path: Path, payload: bytes) -> None:
    """Temp file in the same directory, flush + fsync, rename over, fsync the directory."""
    directory = path.parent
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_bank_json(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME
