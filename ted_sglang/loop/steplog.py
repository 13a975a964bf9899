"""The distillation log: one JSON object per line.

Each processed sample has a ``step`` line; each committed batch of samples a
``batch`` line after its samples' lines (the reconciliation of their proposals, the
applied operations, compression); a sample whose requests failed has a ``failed``
line.  Lines are written (flushed and fsynced) *before* the bank file that marks
their samples done is saved.  So after a crash the log may hold lines for samples
the bank does not list as done (and a partial last line), never the reverse;
:meth:`StepLog.reconcile` drops those lines when a run resumes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ted_sglang.bank.storage import write_atomic

STEP, BATCH, FAILED = "step", "batch", "failed"


def default_log_path(bank_path: str | os.PathLike[str]) -> Path:
    """``bank.json`` -> ``bank.log.jsonl`` beside it."""
    path = Path(bank_path)
    return path.with_name(path.stem + ".log.jsonl")


def read_log(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int]:
    """The records of a log, and how many lines could not be read (a partial last
    line after a crash, say)."""
    path = Path(path)
    if not path.exists():
        return [], 0
    records, bad = [], 0
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    return records, bad


class StepLog:
    """Appends records durably to a JSONL file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._handle: Any = None

    def start_fresh(self) -> None:
        """Empty the log (a new run)."""
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, b"")

    def reconcile(self, done: Iterable[str]) -> tuple[list[dict[str, Any]], int]:
        """Keep the first ``step`` line of each done sample and the first ``batch`` line
        of each batch whose samples are all done, in file order; drop all else (lines
        of samples not done, failures, unreadable lines).  Rewrites the file atomically
        if anything was dropped; returns the kept records and the number of dropped
        lines."""
        done_set = set(done)
        records, bad = read_log(self.path)
        kept, seen, batches = [], set(), set()
        for record in records:
            sample_id = record.get("sample_id")
            event = record.get("event")
            if event == STEP and sample_id in done_set and sample_id not in seen:
                seen.add(sample_id)
                kept.append(record)
            elif event == BATCH and _batch_done(record, done_set, batches):
                batches.add(record["batch"])
                kept.append(record)
        dropped = len(records) - len(kept) + bad
        if dropped or not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, b"".join(_line(r) for r in kept))
        return kept, dropped

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and make it durable (flush + fsync) before returning."""
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "ab")  # noqa: SIM115 (held open for the run)
        self._handle.write(_line(record))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> StepLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def report_record(report: Any) -> dict[str, Any]:
    """An :class:`~ted_sglang.bank.ApplyReport` for the log: each operation's fate
    with its raw form, and the counts."""
    out = report.to_dict()
    out["results"] = [{**r.to_dict(), "raw": r.raw} for r in report.results]
    out["num_applied"] = len(report.applied)
    out["num_rejected"] = len(report.rejected)
    return out


def _batch_done(record: dict[str, Any], done: set[str], seen: set[Any]) -> bool:
    ids = record.get("sample_ids")
    if not isinstance(ids, list) or not ids or record.get("batch") in seen:
        return False
    return all(isinstance(i, str) and i in done for i in ids)


def _line(record: dict[str, Any]) -> bytes:
    try:
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: escaped, the line stays valid JSON
        return (json.dumps(record) + "\n").encode("ascii")
