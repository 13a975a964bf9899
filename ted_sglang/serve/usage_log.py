"""What serving learnt about the bank: requests per version, and the clients' feedback.

The counts live in a sidecar JSON file beside the bank (``<bank>.usage.json``), never
in the bank file itself: the bank file belongs to whoever distils it (a running
``ted-sglang distill`` may write a new version at any moment, and a server that saved
the bank could overwrite that version), and a server writing the file it watches would
reload itself.  Per entry the sidecar holds ``shown`` (requests served with the entry
in the prompt), ``correct`` and ``wrong`` (feedback on such requests), the counters of
:class:`~ted_sglang.bank.Usage`; :func:`apply_usage` folds them into a bank.

Each request id is remembered with its bank version and ids in a bounded LRU map, so
that ``POST /v1/feedback {request_id, correct}`` can credit the entries the request was
served with; feedback on a forgotten or unknown id is refused, and each request is
rated once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ted_sglang.bank.storage import write_atomic
from ted_sglang.serve.bank_state import BankVersion

logger = logging.getLogger("ted_sglang.serve")

FORMAT_NAME = "ted-sglang-serve-usage"
FORMAT_VERSION = 1
COUNTERS = ("shown", "correct", "wrong")
APPLIED_KEY = "serve_usage_applied"  # bank.meta.extra: counts already folded into the bank


@dataclass
class Served:
    """A served request, remembered for feedback."""

    version: int
    ids: tuple[str, ...]
    rated: bool = False


class UnknownRequest(KeyError):
    pass


class AlreadyRated(ValueError):
    pass


class UsageLog:
    """Served counts and feedback, persisted atomically to ``path``."""

    def __init__(self, path: Path, max_tracked: int = 100_000) -> None:
        assert max_tracked >= 1
        self.path = Path(path)
        self.max_tracked = max_tracked
        self.requests_by_version: dict[int, int] = {}
        self.entries: dict[str, dict[str, int]] = {}
        self.feedback = {"correct": 0, "wrong": 0}
        self.dirty = False
        self._served: OrderedDict[str, Served] = OrderedDict()
        self._pending: dict[int, int] = {}
        self._ids_by_version: dict[int, tuple[str, ...]] = {}

    # ---- recording ----------------------------------------------------------------

    def record_request(self, request_id: str, bank: BankVersion) -> None:
        """Count one request served with ``bank`` and remember it for feedback."""
        version = bank.version
        self.requests_by_version[version] = self.requests_by_version.get(version, 0) + 1
        self._pending[version] = self._pending.get(version, 0) + 1
        self._ids_by_version.setdefault(version, bank.ids)
        self._served[request_id] = Served(version, bank.ids)
        if len(self._served) > self.max_tracked:
            self._served.popitem(last=False)
        self.dirty = True

    def record_feedback(self, request_id: str, correct: bool) -> Served:
        """Credit the entries ``request_id`` was served with; raises
        :class:`UnknownRequest` or :class:`AlreadyRated`."""
        served = self._served.get(request_id)
        if served is None:
            raise UnknownRequest(request_id)
        if served.rated:
            raise AlreadyRated(request_id)
        served.rated = True
        key = "correct" if correct else "wrong"
        self.feedback[key] += 1
        for entry_id in served.ids:
            self._counts(entry_id)[key] += 1
        self.dirty = True
        return served

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._served

    @property
    def num_tracked(self) -> int:
        return len(self._served)

    # ---- persistence --------------------------------------------------------------

    def fold(self) -> None:
        """Turn pending per-version request counts into per-entry ``shown`` counts."""
        for version, count in self._pending.items():
            for entry_id in self._ids_by_version[version]:
                self._counts(entry_id)["shown"] += count
        self._pending.clear()

    def to_dict(self) -> dict[str, Any]:
        self.fold()
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "requests_by_version": {str(v): n for v, n in sorted(self.requests_by_version.items())},
            "feedback": dict(self.feedback),
            "entries": {i: dict(c) for i, c in sorted(self.entries.items(), key=_id_order)},
        }

    def snapshot(self) -> bytes:
        """The file content now (marks the log clean); write it with :func:`write_atomic`."""
        self.dirty = False
        return json.dumps(self.to_dict(), indent=1).encode("utf-8") + b"\n"

    def save(self) -> None:
        """Write the counts to ``path`` atomically (temp file, fsync, rename)."""
        write_atomic(self.path, self.snapshot())

    def load(self) -> None:
        """Continue from the counts in ``path`` if it exists; a damaged file is moved
        aside to ``<path>.corrupt`` (with a warning) and counting starts afresh."""
        try:
            data = json.loads(self.path.read_bytes())
            self._load_dict(data)
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            logger.warning("usage file %s is unreadable (%s); moved to %s", self.path, exc, aside)
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            self.requests_by_version, self.entries = {}, {}
            self.feedback = {"correct": 0, "wrong": 0}

    def _load_dict(self, data: Any) -> None:
        self.entries = usage_entries(data)
        by_version = data["requests_by_version"].items()
        self.requests_by_version = {int(v): _count(n) for v, n in by_version}
        self.feedback = {k: _count(data["feedback"].get(k, 0)) for k in ("correct", "wrong")}

    def _counts(self, entry_id: str) -> dict[str, int]:
        counts = self.entries.get(entry_id)
        if counts is None:
            counts = self.entries[entry_id] = dict.fromkeys(COUNTERS, 0)
        return counts


def apply_usage(bank: Any, usage: dict[str, Any], step: int | None = None) -> int:
    """Fold a usage file's counts (:meth:`UsageLog.to_dict`) into ``bank``'s usage
    statistics; returns how many counts were added.

    What was folded before is remembered in ``bank.meta.extra["serve_usage_applied"]``,
    so applying a later, larger file again adds only the difference.  ``step`` (default:
    the bank's version) becomes the entries' ``last_used_step``.  Entries no longer in
    the bank are skipped.
    """
    entries = usage_entries(usage)
    step = bank.version if step is None else step
    applied: dict[str, dict[str, int]] = bank.meta.extra.setdefault(APPLIED_KEY, {})
    if not isinstance(applied, dict) or not all(
        isinstance(done, dict) and all(isinstance(done.get(n, 0), int) for n in COUNTERS)
        for done in applied.values()
    ):
        raise ValueError(f"the bank's meta.extra.{APPLIED_KEY} is not a map of entry counts")
    added = 0
    for entry_id, counts in entries.items():
        if entry_id not in bank:
            continue
        done = applied.setdefault(entry_id, dict.fromkeys(COUNTERS, 0))
        delta = {n: counts[n] - done.get(n, 0) for n in COUNTERS}
        delta = {n: d for n, d in delta.items() if d > 0}
        if delta:
            bank.record_counts(entry_id, step, **delta)
            for name, d in delta.items():
                done[name] = done.get(name, 0) + d
            added += sum(delta.values())
    return added


def usage_entries(data: Any) -> dict[str, dict[str, int]]:
    """The per-entry counts of a usage file's content; ``ValueError`` if it is not one."""
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ValueError(f'not a usage file (no "format": "{FORMAT_NAME}")')
    entries = data.get("entries")
    if not isinstance(entries, dict) or not all(isinstance(c, dict) for c in entries.values()):
        raise ValueError('a usage file\'s "entries" must map entry ids to their counts')
    return {str(i): {k: _count(c.get(k, 0)) for k in COUNTERS} for i, c in entries.items()}


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"counts must be non-negative integers, got {value!r}")
    return value


def _id_order(item: tuple[str, Any]) -> tuple[int, str]:
    digits = item[0].lstrip("E")
    return (int(digits) if digits.isdigit() else 1 << 62, item[0])
