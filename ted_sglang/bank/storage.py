"""Bank files: one JSON file per bank, written atomically under the file's lock, with the
previous good file kept beside it as ``<name>.bak``.

Every write is a compare-and-swap under the exclusive lock of ``<name>.lock``
(:mod:`ted_sglang.bank.locking`): a bank remembers the bytes it read or last wrote
(:class:`FileState`), and a save refuses with :class:`BankConflict` when the file holds
a good bank with other bytes now, so no writer silently drops another's edits.  Temp
files are ``.<name>.<16 hex digits>.ted-tmp`` (``.<name>.bak.<...>.ted-tmp`` for the
backup) in the bank's folder; one left by a writer that was killed mid-save is removed
by the next save, which holds the lock, so no live writer owns it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ted_sglang.bank.errors import BankConflict, BankFileError
from ted_sglang.bank.locking import DEFAULT_LOCK_TIMEOUT_S, bank_lock

FORMAT_NAME = "ted-sglang-bank"
FORMAT_VERSION = 1
# A bank file larger than this is refused unread (a bank of 64 entries is ~50 kB; its
# history grows by about 1 kB per version).
MAX_FILE_BYTES = 256 * 2**20
TEMP_SUFFIX = ".ted-tmp"

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_FILE_BYTES",
    "BankConflict",
    "BankFileError",
    "FileState",
    "backup_path",
    "parse_bank_bytes",
    "read_bank_bytes",
    "stale_temp_files",
    "write_atomic",
    "write_bank_json",
]


@dataclass(frozen=True)
class FileState:
    """One state of a bank file as a bank object read or wrote it: the file (``key``,
    its real path), the SHA-256 of its bytes and the bank version they hold."""

    key: str
    digest: str
    version: int

    @classmethod
    def of(cls, path: str | os.PathLike[str], raw: bytes, version: int) -> FileState:
        return cls(os.path.realpath(path), _digest(raw), version)


def backup_path(path: str | os.PathLike[str]) -> Path:
    """Where the previous good version of ``path`` is kept (beside the file a symlink
    points to)."""
    path = Path(os.path.realpath(path))
    return path.with_name(path.name + ".bak")


def read_bank_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a bank file; ``BankFileError`` if missing, unreadable or too large."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise BankFileError(path, "no such file") from None
    except OSError as exc:
        raise BankFileError(path, f"cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise BankFileError(path, f"is larger than {MAX_FILE_BYTES >> 20} MiB: not a bank file")
    return raw


def parse_bank_bytes(path: str | os.PathLike[str], raw: bytes) -> dict[str, Any]:
    """The JSON content of a bank file's bytes, its format checked; ``BankFileError``
    (naming ``path``) if not.  NaN and infinity are not JSON and are refused."""
    if not raw.strip():
        raise BankFileError(path, "is empty (a write was interrupted?)")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise BankFileError(path, f"is not UTF-8 text (corrupt?): {exc}") from None
    except json.JSONDecodeError as exc:
        raise BankFileError(path, f"is not valid JSON (truncated or corrupt?): {exc}") from None
    except RecursionError:
        raise BankFileError(path, "is not a bank file (JSON nested too deeply)") from None
    except _NotJson as exc:
        raise BankFileError(path, f"is not valid JSON: {exc}") from None
    except ValueError:  # an integer of thousands of digits (Python's conversion limit)
        raise BankFileError(path, "is not a bank file (a number with too many digits)") from None
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
    check: Callable[[dict[str, Any]], object],
    *,
    based_on: FileState | None = None,
    new_file: bool = False,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> FileState:
    """Write ``data`` (already validated) to ``path`` atomically under the file's lock;
    returns the state written.

    ``based_on``: the state of ``path`` the data was made from; if the file holds a
    good bank with other bytes now, :class:`BankConflict` is raised and nothing is
    written.  ``new_file``: refuse to replace an existing file.  The file replaced is
    kept as the backup when it is a good bank (``check`` raises ``ValueError`` on its
    content if not): a damaged file never overwrites a good backup.  Stale temp files
    of this bank are removed first.  A symlink stays one: its target is written.
    """
    assert _is_bank_json(data)
    path, real = Path(path), Path(os.path.realpath(path))  # messages name the path given
    payload = (json.dumps(data, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
    state = FileState.of(path, payload, data["version"])
    with bank_lock(path, lock_timeout_s):
        _sweep(real)
        current = _current_bytes(path)
        if current is not None:
            if new_file:
                raise BankFileError(path, "already exists; not overwritten")
            ours = based_on is not None and based_on.key == state.key
            unchanged = ours and _digest(current) == based_on.digest
            good = based_on.version if unchanged else _good_version(path, current, check)
            if ours and not unchanged and good is not None:
                raise BankConflict(path, based_on.version, good)
            if good is not None:
                _write(path, backup_path(path), current)
        _write(path, real, payload)
    return state


def stale_temp_files(path: str | os.PathLike[str]) -> list[Path]:
    """Temp files a writer of bank ``path`` (or of its backup) left behind.  Only
    stale while the caller holds the bank's lock."""
    path = Path(path)
    pattern = re.compile(
        r"\." + re.escape(path.name) + r"(?:\.bak)?\.[0-9a-f]{16}" + re.escape(TEMP_SUFFIX)
    )
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return [path.parent / n for n in sorted(names) if pattern.fullmatch(n)]


def write_atomic(path: Path, payload: bytes) -> None:
    """Temp file in the same directory, flush + fsync, rename over, fsync the directory.
    A writer killed before the rename leaves ``.<name>.<16 hex>.ted-tmp`` behind."""
    directory = path.parent
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = _create_temp(path)
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


def _create_temp(path: Path) -> tuple[int, Path]:
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue


def _sweep(path: Path) -> None:
    for stale in stale_temp_files(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)


def _current_bytes(path: Path) -> bytes | None:
    """The file's bytes now (``None`` if there is none); an oversized file reads as its
    first bytes, which no state matches and no check passes."""
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BankFileError(path, f"cannot be read before writing: {exc.strerror}") from None


def _good_version(path: Path, raw: bytes, check: Callable[[dict[str, Any]], object]) -> int | None:
    """The version of the bank in ``raw``, or ``None`` if it is not a good bank."""
    if len(raw) > MAX_FILE_BYTES:
        return None
    try:
        data = parse_bank_bytes(path, raw)
        check(data)
    except ValueError:
        return None
    return data["version"]


def _write(bank: Path, target: Path, payload: bytes) -> None:
    try:
        write_atomic(target, payload)
    except OSError as exc:
        raise BankFileError(bank, f"cannot write {target.name}: {exc.strerror or exc}") from None


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


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number")


def _is_bank_json(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME
