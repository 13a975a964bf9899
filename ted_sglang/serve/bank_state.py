"""The bank version being served, and its hot swap when the bank file changes.

A request reads :attr:`BankState.current` once, at its start, and keeps that
:class:`BankVersion` (its prompt prefix, its ids) to the end, so a swap never changes a
request in flight.  The prefix is rendered once per version.  The file is polled (its
mtime, size and inode, every ``poll_interval_s``); a new file is loaded and validated
off the event loop, checked the way it will be used (``check``: rendered and tokenized
against the model's context, see :mod:`ted_sglang.serve.bank_check`) and swapped in with
one assignment.  A file that does not load (torn write, corrupt, missing, not a regular
file) or a version that cannot be served is refused with a log line and the old version
keeps serving; a rewrite with the same version and the same rendering (e.g. only usage
statistics changed) is not a swap.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from ted_sglang import prompts
from ted_sglang.bank import BankFileError, ExperienceBank
from ted_sglang.loop.leakage import model_mismatch

logger = logging.getLogger("ted_sglang.serve")

# Polls that retry a file that failed to load, in case it was caught mid-write.
RETRIES_PER_FILE = 3


@dataclass(frozen=True)
class FileSignature:
    mtime_ns: int
    size: int
    inode: int
    device: int
    regular: bool  # a FIFO or a device is never read: it could block the watcher for good


def file_signature(path: Path) -> FileSignature | None:
    """What identifies one state of the file (None when it cannot be stat'ed)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileSignature(st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, stat.S_ISREG(st.st_mode))


class BankRefused(ValueError):
    """A bank version that loads but cannot be served (see :mod:`.bank_check`)."""


@dataclass(frozen=True)
class BankVersion:
    """One loaded bank version, as served: ``prefix`` is the bank's system turn, the
    first bytes of every chat prompt of this version; ``prefix_tokens`` its length in
    the model's tokens (None until checked)."""

    version: int
    ids: tuple[str, ...]
    system_prompt: str
    prefix: str
    student_model: str | None
    signature: FileSignature | None
    loaded_at: float
    prefix_tokens: int | None = None

    @property
    def num_entries(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class ReloadResult:
    outcome: Literal["swapped", "unchanged", "failed"]
    version: int
    previous: int
    error: str | None = None


class BankState:
    """Holds the served :class:`BankVersion` of the bank file at ``path``.

    ``make_prefix`` turns the student's system prompt into the formatted system turn;
    ``check`` returns a version's prefix length in tokens or raises :class:`BankRefused`
    (it runs in the calling thread: off the event loop).  Counters: ``swaps`` (versions
    swapped in after the first), ``swap_failures`` (files refused; a broken file the
    watcher sees is counted once).  ``served_model``: the endpoints' model path; a
    version swapped in that was distilled for another model is served with a warning
    in the log (:meth:`warn_if_for_another_model`).
    """

    def __init__(
        self,
        path: Path,
        make_prefix: Callable[[str], str],
        check: Callable[[BankVersion], int | None] | None = None,
        served_model: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.make_prefix = make_prefix
        self.check = check
        self.served_model = served_model
        self.swaps = 0
        self.swap_failures = 0
        self.last_error: str | None = None
        self._current: BankVersion | None = None
        self._lock = threading.Lock()
        self._failed_signature: FileSignature | None = None
        self._failed_tries = 0

    @property
    def current(self) -> BankVersion:
        assert self._current is not None, "load() first"
        return self._current

    def load(self) -> BankVersion:
        """Load the file for the first time; raises :class:`BankFileError` if it is bad,
        :class:`BankRefused` if it cannot be served."""
        with self._lock:
            self._current = self._checked(self._read())
            return self._current

    def reload(self, *, from_watcher: bool = False) -> ReloadResult:
        """Read the file again and swap it in if it is a new version (thread-safe)."""
        with self._lock:
            old = self.current
            try:
                new = self._read()
                if new.version == old.version and new.system_prompt == old.system_prompt:
                    self._failed_signature, self._failed_tries = None, 0
                    self._current = replace(old, signature=new.signature)
                    return ReloadResult("unchanged", old.version, old.version)
                new = self._checked(new)
            except (BankFileError, BankRefused) as exc:
                return self._refuse(exc, from_watcher)
            self._failed_signature, self._failed_tries = None, 0
            self._current = new
            self.swaps += 1
            logger.info(
                "bank %s: now serving version %d (%d entries; was version %d)",
                self.path, new.version, new.num_entries, old.version,
            )  # fmt: skip
            self.warn_if_for_another_model(new)
            return ReloadResult("swapped", new.version, old.version)

    def poll(self) -> ReloadResult | None:
        """Reload when the file's signature moved since the last load (None: no change)."""
        signature = file_signature(self.path)
        if signature == self.current.signature:
            return None
        if signature == self._failed_signature and self._failed_tries >= RETRIES_PER_FILE:
            return None
        return self.reload(from_watcher=True)

    async def watch(self, interval_s: float) -> None:
        """Poll the file every ``interval_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.poll)
            except Exception:  # never let the watcher die
                logger.exception("bank %s: watching the file failed", self.path)

    def _read(self) -> BankVersion:
        signature = file_signature(self.path)  # before reading: a later write is seen again
        if signature is not None and not signature.regular:
            raise BankFileError(self.path, "is not a regular file")
        bank = ExperienceBank.load(self.path)
        system_prompt = prompts.student_system(bank.render())
        return BankVersion(
            version=bank.version,
            ids=tuple(bank.ids),
            system_prompt=system_prompt,
            prefix=self.make_prefix(system_prompt),
            student_model=bank.meta.student_model,
            signature=signature,
            loaded_at=time.time(),
        )

    def warn_if_for_another_model(self, version: BankVersion) -> None:
        """Log a warning if ``version`` was distilled for another model than the one
        served (swaps check on their own)."""
        if self.served_model is None or version.student_model is None:
            return
        warning = model_mismatch(version.student_model, self.served_model)
        if warning is not None:
            logger.warning(
                "bank %s version %d: %s", self.path, version.version,
                warning.removeprefix("warning: "),
            )  # fmt: skip

    def _checked(self, version: BankVersion) -> BankVersion:
        if self.check is None:
            return version
        try:
            tokens = self.check(version)
        except BankRefused as exc:
            raise BankRefused(f"{self.path}: version {version.version}: {exc}") from None
        return replace(version, prefix_tokens=tokens)

    def _refuse(self, exc: ValueError, from_watcher: bool) -> ReloadResult:
        signature = file_signature(self.path)
        old = self.current.version
        self.last_error = str(exc)
        if from_watcher and self._failed_tries and signature == self._failed_signature:
            self._failed_tries += 1
            return ReloadResult("failed", old, old, str(exc))
        self._failed_signature, self._failed_tries = signature, 1
        self.swap_failures += 1
        logger.warning("bank refused, still serving version %d: %s", old, exc)
        return ReloadResult("failed", old, old, str(exc))
