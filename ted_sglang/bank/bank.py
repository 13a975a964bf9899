"""The experience bank: entries, versions, usage statistics, rendering, persistence."""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from ted_sglang.bank.apply import execute, judge, op_results
from ted_sglang.bank.apply_report import ApplyReport
from ted_sglang.bank.experience import Experience, format_id
from ted_sglang.bank.history import BankDiff, VersionRecord, diff_entries, replay
from ted_sglang.bank.locking import DEFAULT_LOCK_TIMEOUT_S, bank_lock
from ted_sglang.bank.meta import BankMeta, check_json
from ted_sglang.bank.operations import OperationLimits, load_document, operations_schema
from ted_sglang.bank.render import render_text
from ted_sglang.bank.storage import (
    FORMAT_NAME,
    FORMAT_VERSION,
    BankFileError,
    FileState,
    backup_path,
    parse_bank_bytes,
    read_bank_bytes,
    write_bank_json,
)
from ted_sglang.bank.usage import Usage
from ted_sglang.bank.validation import check_json_tree, check_texts

T = TypeVar("T")

_FILE_FIELDS = {
    "format",
    "format_version",
    "version",
    "next_id",
    "limits",
    "meta",
    "entries",
    "history",
}


class ExperienceBank:
    """A versioned set of experiences that prefixes the student's prompt.

    Every document of operations that changes something makes one new version
    (version 0 is the empty bank); usage statistics are kept per entry but are not
    versioned and never change the rendering.  Render order is stable: entries sort
    by the version at which their text last changed, then by id, so new and edited
    entries go to the tail and the head of the rendering stays cacheable.
    """

    def __init__(
        self,
        *,
        limits: OperationLimits | None = None,
        meta: BankMeta | None = None,
        student_model: str | None = None,
    ) -> None:
        self.limits = limits or OperationLimits()
        self.meta = meta or BankMeta(student_model=student_model)
        if meta is not None and student_model is not None:
            self.meta.student_model = student_model
        self.loaded_from: Path | None = None
        self._file: FileState | None = None  # what this bank last read from or wrote to a file
        self._entries: dict[str, Experience] = {}
        self._order: list[str] | None = None
        self._version = 0
        self._next_number = 1
        self._history: list[VersionRecord] = []
        self._lock = threading.RLock()

    # ---- reading -------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._version

    @property
    def ids(self) -> list[str]:
        """Entry ids in render order."""
        with self._lock:
            if self._order is None:
                ordered = sorted(self._entries.values(), key=lambda e: e.order_key)
                self._order = [e.id for e in ordered]
            return list(self._order)

    @property
    def entries(self) -> list[Experience]:
        """Entries in render order."""
        with self._lock:
            return [self._entries[i] for i in self.ids]

    @property
    def history(self) -> tuple[VersionRecord, ...]:
        """One record per version, version 1 first."""
        return tuple(self._history)

    @property
    def next_id(self) -> str:
        """The id the next add or merge will get (ids are never reused)."""
        return format_id(self._next_number)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, experience_id: object) -> bool:
        return experience_id in self._entries

    def __getitem__(self, experience_id: str) -> Experience:
        return self._entries[experience_id]

    def __iter__(self) -> Iterator[Experience]:
        return iter(self.entries)

    def get(self, experience_id: str) -> Experience | None:
        return self._entries.get(experience_id)

    def render(self) -> str:
        """The experiences block for the student prompt: ``[E3] text`` lines in render
        order, each ending in a newline; ``""`` for an empty bank.  Same version, same
        bytes."""
        return render_text(self.entries)

    def render_entries(self) -> list[tuple[str, str]]:
        """(id, text) pairs in render order, e.g. to show the teacher."""
        return [(e.id, e.text) for e in self.entries]

    def operations_schema(self) -> dict:
        """The JSON Schema of an operations document for this bank's ids and limits."""
        return operations_schema(self.ids, self.limits)

    def __repr__(self) -> str:
        return f"ExperienceBank(version={self.version}, entries={len(self)})"

    # ---- changing ------------------------------------------------------------------

    def apply(
        self,
        document: Any,
        *,
        step: int | None = None,
        meta: dict[str, Any] | None = None,
        limits: OperationLimits | None = None,
    ) -> ApplyReport:
        """Validate every operation of ``document`` (a dict or JSON text) and apply the
        valid ones atomically as one new version.

        Never raises for the document's content: a document that cannot be read gives
        a report with ``error`` set; each bad operation is rejected with a reason.  A
        document that applies nothing (only ``none`` or rejected ops) leaves the version
        as it is.  ``step`` (default: the new version number) is stored on the changed
        entries; ``meta`` (JSON data) goes into the history with the operations;
        ``limits`` overrides the bank's limits for this document (e.g. for the many
        deletes of a compression).
        """
        step = None if step is None else _check_step(step)
        meta = check_json(meta if meta is not None else {}, "meta")
        if not isinstance(meta, dict):
            raise ValueError("meta must be a dict")
        with self._lock:
            before = self._version
            raw_ops, error = load_document(document)
            if error is not None:
                return ApplyReport(before, before, error=error.reason, error_code=error.code)
            verdicts = judge(self._entries, raw_ops, limits or self.limits)
            accepted = [v.operation for v in verdicts if v.operation is not None]
            records: list[dict[str, Any]] = []
            if accepted:
                version = before + 1
                step = version if step is None else step
                entries, next_number, records = execute(
                    self._entries,
                    accepted,
                    version=version,
                    step=step,
                    next_number=self._next_number,
                )
                record = VersionRecord(version, step, tuple(records), meta)
                self._entries, self._next_number, self._version = entries, next_number, version
                self._history.append(record)
                self._order = None
            results = op_results(verdicts, records)
            return ApplyReport(self._version, before, tuple(results), meta=copy.deepcopy(meta))

    def record_shown(self, ids: Iterable[str], step: int) -> int:
        """Count one showing to the student for each id; returns how many ids exist."""
        return self._bump(ids, step, shown=1)

    def record_outcome(self, ids: Iterable[str], correct: bool, step: int) -> int:
        """Count the student's answer (after these entries were shown) as right or
        wrong; returns how many ids exist."""
        if not isinstance(correct, bool):
            raise ValueError("correct must be True or False")
        return self._bump(ids, step, **({"correct": 1} if correct else {"wrong": 1}))

    def record_counts(self, experience_id: str, step: int, **counts: int) -> bool:
        """Add several counts at once to one entry's usage (``shown=``, ``correct=``,
        ``wrong=``, ``helpful=``, ``harmful=``), e.g. counts gathered while serving;
        returns whether the entry exists."""
        for name, n in counts.items():
            if name not in ("shown", "correct", "wrong", "helpful", "harmful"):
                raise ValueError(f"unknown usage counter {name!r}")
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
        return self._bump([experience_id], step, **counts) == 1

    def record_cited(
        self, helpful: Iterable[str] = (), harmful: Iterable[str] = (), *, step: int
    ) -> int:
        """Count the teacher's citations of entries as helpful / harmful; returns how
        many citations were counted."""
        with self._lock:
            return self._bump(helpful, step, helpful=1) + self._bump(harmful, step, harmful=1)

    def _bump(self, ids: Iterable[str], step: int, **counts: int) -> int:
        """Update usage of the ids that exist (each once); ids of entries that are gone
        (feedback about an older version) are skipped."""
        step = _check_step(step)
        if isinstance(ids, str):
            raise ValueError(f"ids must be a list of ids, not the string {ids!r}")
        wanted = list(dict.fromkeys(ids))
        with self._lock:
            found = [i for i in wanted if isinstance(i, str) and i in self._entries]
            for i in found:
                entry = self._entries[i]
                self._entries[i] = replace(entry, usage=entry.usage.bump(step, **counts))
            return len(found)

    # ---- versions ------------------------------------------------------------------

    def at_version(self, version: int) -> ExperienceBank:
        """A copy of this bank as it was at ``version`` (its history cut there).  Usage
        statistics are not versioned: a past version comes with zero usage."""
        if not isinstance(version, int) or not 0 <= version <= self._version:
            raise ValueError(f"version must be an integer from 0 to {self._version}")
        if version == self._version:
            return ExperienceBank.from_dict(self.to_dict())
        bank = ExperienceBank(limits=self.limits, meta=BankMeta.from_dict(self.meta.to_dict()))
        bank._history = self._history[:version]
        bank._entries, bank._next_number = replay(bank._history)
        bank._version = version
        return bank

    def diff(self, version_a: int | None = None, version_b: int | None = None) -> BankDiff:
        """Entries added, removed and changed from ``version_a`` to ``version_b``
        (defaults: the version before the last, and the last)."""
        version_b = self._version if version_b is None else version_b
        version_a = max(version_b - 1, 0) if version_a is None else version_a
        a, b = self.at_version(version_a), self.at_version(version_b)
        return diff_entries(
            {e.id: e for e in a.entries}, {e.id: e for e in b.entries}, version_a, version_b
        )

    # ---- persistence ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The file content: current state plus the history of versions."""
        with self._lock:
            return {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "version": self._version,
                "next_id": self.next_id,
                "limits": self.limits.to_dict(),
                "meta": self.meta.to_dict(),
                "entries": [e.to_dict() for e in self.entries],
                "history": [r.to_dict() for r in self._history],
            }

    @classmethod
    def from_dict(cls, data: Any) -> ExperienceBank:
        """Rebuild from :meth:`to_dict` output, checking that it is plain JSON data within
        the limits of :mod:`ted_sglang.bank.validation`, that every text is stored as the
        operations store it, and that the entries agree with the history; raises
        ``ValueError`` saying what is wrong.  Loading and saving both run this check."""
        check_json_tree(data)
        if not isinstance(data, dict) or set(data) != _FILE_FIELDS:
            fields = sorted(data)[:12] if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"bank fields are {fields}, expected {sorted(_FILE_FIELDS)}")
        if not isinstance(data["history"], list) or not isinstance(data["entries"], list):
            raise ValueError("history and entries must be lists")
        bank = cls(limits=OperationLimits.from_dict(data["limits"]))
        check_texts(data["entries"], data["history"], bank.limits)
        bank.meta = BankMeta.from_dict(data["meta"])
        bank._history = [VersionRecord.from_dict(r) for r in data["history"]]
        rebuilt, bank._next_number = replay(bank._history)
        bank._version = len(bank._history)
        if data["version"] != bank._version or data["next_id"] != bank.next_id:
            raise ValueError(
                f"version {_brief(data['version'])} / next_id {_brief(data['next_id'])} do not "
                f"match the history ({bank._version} / {bank.next_id})"
            )
        stored = [Experience.from_dict(e) for e in data["entries"]]
        by_id = {e.id: e for e in stored}
        if len(by_id) != len(stored) or set(by_id) != set(rebuilt):
            raise ValueError("the entries do not match the history (different ids)")
        for entry in stored:
            if replace(entry, usage=Usage()) != rebuilt[entry.id]:
                raise ValueError(f"entry {entry.id} does not match the history")
        bank._entries = by_id
        return bank

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        new_file: bool = False,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    ) -> None:
        """Write the bank to ``path`` atomically, under the file's lock; the file it
        replaces is kept as ``<path>.bak`` when it holds a good bank.

        Compare-and-swap: when this bank was read from ``path`` (or last saved there) and
        the file has changed since, :class:`~ted_sglang.bank.errors.BankConflict` names
        both versions and nothing is written.  A bank that never met ``path`` replaces
        whatever is there (``new_file=True``: only if nothing is).  A bank that would not
        load again (see :meth:`from_dict`) is refused with ``BankFileError``.
        """
        data = self.to_dict()
        try:
            ExperienceBank.from_dict(data)
        except ValueError as exc:
            raise BankFileError(path, f"not saved, the bank is not valid: {exc}") from None
        self._file = write_bank_json(
            path,
            data,
            ExperienceBank.from_dict,
            based_on=self._file,
            new_file=new_file,
            lock_timeout_s=lock_timeout_s,
        )

    @classmethod
    def update_file(
        cls,
        path: str | os.PathLike[str],
        change: Callable[[ExperienceBank], T],
        *,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    ) -> T:
        """Load ``path``, call ``change(bank)`` and save the bank if it changed, all under
        the file's exclusive lock, so concurrent writers (processes or threads) never
        lose each other's edits; returns what ``change`` returned.  An exception in
        ``change`` leaves the file as it was.
        """
        with bank_lock(path, lock_timeout_s):
            bank = cls.load(path)
            before = bank.to_dict()
            result = change(bank)
            if bank.to_dict() != before:
                bank.save(path, lock_timeout_s=lock_timeout_s)
            return result

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, version: int | None = None, recover: bool = False
    ) -> ExperienceBank:
        """Read a bank file (optionally as it was at ``version``).

        A missing, truncated or corrupt file raises :class:`BankFileError` naming it;
        when ``<path>.bak`` holds a good bank the message says so, and ``recover=True``
        loads the backup instead (``loaded_from`` tells which file was read).  Loading
        never writes anything.
        """
        path = Path(path)
        try:
            bank = cls.load_file(path)
        except BankFileError as exc:
            backup = backup_path(path)
            if not backup.exists():
                raise
            try:
                bank = cls.load_file(backup)
            except BankFileError as backup_exc:
                raise BankFileError(
                    path,
                    f"{exc.problem}; the backup {backup} is unusable too ({backup_exc.problem})",
                ) from None
            if not recover:
                raise BankFileError(
                    path,
                    f"{exc.problem}. The backup {backup} holds a good bank (version "
                    f"{bank.version}): load it with recover=True (command line: --recover) "
                    f"or copy it over {path.name}",
                ) from None
        return bank if version is None else bank.at_version(version)

    @classmethod
    def load_file(cls, path: str | os.PathLike[str]) -> ExperienceBank:
        """Read exactly ``path`` (no fallback to the backup); ``BankFileError`` if bad."""
        path = Path(path)
        raw = read_bank_bytes(path)
        data = parse_bank_bytes(path, raw)
        try:
            bank = cls.from_dict(data)
        except ValueError as exc:
            raise BankFileError(path, f"is not a consistent bank: {exc}") from None
        bank.loaded_from = path
        bank._file = FileState.of(path, raw, bank.version)
        return bank


def _brief(value: Any) -> str:
    """A short repr of a value from a file, for a message."""
    text = repr(value) if isinstance(value, str | int | bool | None) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _check_step(step: Any) -> int:
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    return step
