"""One writer at a time per bank file: an exclusive ``flock`` on the sidecar ``<bank>.lock``.

The lock file is never removed (removing it would let two writers lock two different
files).  The lock is re-entrant within a process: a thread that holds it may take it
again (e.g. :meth:`ExperienceBank.save` inside :meth:`ExperienceBank.update_file`), and
other threads of the process wait like other processes do.  The kernel releases a
``flock`` when its holder dies, so a killed writer never leaves the file locked.
A long run that must be the only one of its kind on a bank (a distillation) holds
``<bank>.<name>.lock`` throughout (:func:`run_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ted_sglang.bank.errors import BankFileError, BankLockTimeout

LOCK_SUFFIX = ".lock"
# How long a writer waits for the lock before giving up with BankLockTimeout.
DEFAULT_LOCK_TIMEOUT_S = 60.0


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar lock file of a bank file (beside the file a symlink points to)."""
    path = Path(os.path.realpath(path))
    return path.with_name(path.name + LOCK_SUFFIX)


class _Holder:
    """This process's hold on one lock file: a thread lock, and the file while held."""

    def __init__(self) -> None:
        self.thread_lock = threading.RLock()
        self.fd: int | None = None
        self.depth = 0


_holders: dict[str, _Holder] = {}
_holders_lock = threading.Lock()


@contextlib.contextmanager
def bank_lock(
    path: str | os.PathLike[str], timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
) -> Iterator[None]:
    """Hold the exclusive lock of bank file ``path`` for the ``with`` block.

    Raises :class:`BankLockTimeout` (naming the file) after ``timeout_s`` seconds of
    waiting, and :class:`BankFileError` when the lock file cannot be opened.
    """
    target = lock_path(path)
    key = os.path.realpath(target)
    with _holders_lock:
        holder = _holders.setdefault(key, _Holder())
    deadline = time.monotonic() + timeout_s
    if not holder.thread_lock.acquire(timeout=max(timeout_s, 0.0)):
        raise _timeout(path, timeout_s)
    try:
        if holder.depth == 0:
            holder.fd = _lock_file(path, target, deadline, timeout_s)
        holder.depth += 1
        try:
            yield
        finally:
            holder.depth -= 1
            if holder.depth == 0 and holder.fd is not None:
                os.close(holder.fd)  # closing the file releases the flock
                holder.fd = None
    finally:
        holder.thread_lock.release()


@contextlib.contextmanager
def run_lock(path: str | os.PathLike[str], name: str) -> Iterator[None]:
    """Hold ``<bank>.<name>.lock`` for a long run on bank file ``path`` (a whole
    distillation), without waiting: a second such run on the same bank raises
    :class:`BankFileError` at once instead of racing the first for the bank and garbling
    its log.  The run's saves still take :func:`bank_lock`, so other writers go on."""
    real = Path(os.path.realpath(path))
    target = real.with_name(f"{real.name}.{name}{LOCK_SUFFIX}")
    fd = _open(path, target)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BankFileError(
                path, f"another {name} run is using it ({target.name} is locked); nothing was done"
            ) from None
        except OSError as exc:
            raise BankFileError(path, f"cannot lock {target}: {exc.strerror}") from None
        yield
    finally:
        os.close(fd)  # closing the file releases the flock


def _lock_file(
    path: str | os.PathLike[str], target: Path, deadline: float, timeout_s: float
) -> int:
    fd = _open(path, target)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        pass
    except OSError as exc:
        os.close(fd)
        raise BankFileError(path, f"cannot lock {target}: {exc.strerror}") from None
    error = _wait_blocking(fd, max(deadline - time.monotonic(), 0.0))
    if error is _TIMED_OUT:
        raise _timeout(path, timeout_s)
    if error is not None:
        os.close(fd)
        raise BankFileError(path, f"cannot lock {target}: {error.strerror}")
    return fd


_TIMED_OUT = OSError("timed out")


def _wait_blocking(fd: int, timeout_s: float) -> OSError | None:
    """A blocking ``flock`` (the kernel wakes the waiter when the holder lets go, which
    polling cannot match under contention) in a helper thread, waited for at most
    ``timeout_s``.  On a timeout the helper owns ``fd``: it closes it, releasing the lock
    if it ever gets it; returns ``_TIMED_OUT``."""
    done = threading.Event()
    guard = threading.Lock()
    outcome: dict[str, Any] = {"error": None, "abandoned": False}

    def block() -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            outcome["error"] = exc
        with guard:
            if outcome["abandoned"]:
                os.close(fd)
                return
            done.set()

    threading.Thread(target=block, name="bank-lock-wait", daemon=True).start()
    if not done.wait(timeout_s):
        with guard:
            if not done.is_set():
                outcome["abandoned"] = True
                return _TIMED_OUT
    return outcome["error"]


def _open(path: str | os.PathLike[str], target: Path) -> int:
    """A handle on lock file ``target`` of bank ``path``, created if need be."""
    try:
        return os.open(target, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except PermissionError:  # another user's lock file: a read-only handle locks as well
        pass
    except OSError as exc:
        raise BankFileError(path, f"cannot open its lock file {target}: {exc.strerror}") from None
    try:
        return os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BankFileError(path, f"cannot open its lock file {target}: {exc.strerror}") from None


def _timeout(path: str | os.PathLike[str], timeout_s: float) -> BankLockTimeout:
    return BankLockTimeout(
        path,
        f"another writer has held its lock ({lock_path(path).name}) for over {timeout_s:g} s; "
        "nothing was written",
    )
