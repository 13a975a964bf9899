"""What a report is built from: a distillation log, a bank file, evaluation reports.

Everything here reads files and never writes them.  A log may be in any state a
run leaves it in: being written (a partial last line), after a crash (lines of a
batch the bank never committed), after ``--resume`` (a sample's step written twice
if the log was not reconciled), with ``failed`` lines of samples retried later.
Readers keep what they can use and say what they left out (:attr:`RunLog.notes`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ted_sglang.bank import ExperienceBank, approx_tokenize
from ted_sglang.loop.steplog import BATCH, FAILED, STEP

# Eval reports drawn side by side; beyond this the plots stop being readable.
MAX_EVAL_REPORTS = 12
# Size of an eval report file read into memory.
MAX_EVAL_BYTES = 64 << 20
# Conditions of one eval report (``eval --out`` writes two: without and with the bank).
MAX_CONDITIONS = 4
# One log line (a step line holds every trajectory); a longer line counts as unreadable.
MAX_LINE_BYTES = 64 << 20
# Counts (steps, tokens, versions) beyond this are not counts: plots draw them as floats.
MAX_COUNT = 2**53


@dataclass(frozen=True)
class Step:
    """One training sample as its ``step`` line reports it."""

    step: int
    sample_id: str
    category: str | None
    batch: int | None
    correct: int
    total: int
    skipped: str | None
    tokens: dict[str, dict[str, int]]
    seconds: dict[str, float]


@dataclass(frozen=True)
class Batch:
    """One committed batch as its ``batch`` line reports it."""

    batch: int
    steps: tuple[int, int] | None
    version_before: int | None
    version_after: int | None
    bank_size: int | None
    results: tuple[dict[str, Any], ...]  # the teacher document's operations, with their fate
    compression: dict[str, Any] | None
    reconcile: dict[str, Any] | None
    seconds: float
    tokens: dict[str, dict[str, int]]

    def compression_results(self) -> list[dict[str, Any]]:
        """The fate of each compression operation (removals, then the teacher's)."""
        out: list[dict[str, Any]] = []
        for key in ("removals", "operations"):
            report = (self.compression or {}).get(key)
            if isinstance(report, dict) and isinstance(report.get("results"), list):
                out += [r for r in report["results"] if isinstance(r, dict)]
        return out


@dataclass
class RunLog:
    """The usable part of a log, in step order, and what was left out."""

    path: Path
    steps: list[Step] = field(default_factory=list)
    batches: list[Batch] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class VersionPoint:
    """The bank at one version: its size and what made it."""

    version: int
    step: int
    entries: int
    tokens: int | None  # None: not known (a log without its bank)
    source: str
    batch: int | None


@dataclass(frozen=True)
class EvalReport:
    """An ``eval --out`` report and the label it is shown under."""

    label: str
    path: Path
    data: dict[str, Any]

    @property
    def conditions(self) -> dict[str, dict[str, Any]]:
        return self.data["conditions"]

    @property
    def delta(self) -> dict[str, Any]:
        """The gains with the bank over without (empty when the report has none)."""
        delta = self.data.get("delta")
        return delta if isinstance(delta, dict) else {}

    @property
    def rollouts(self) -> int | None:
        return opt_count(self.data.get("rollouts"))


def load_run_log(path: str | os.PathLike[str], done: list[str] | None = None) -> RunLog:
    """Read a distillation log.  ``done``: the samples the bank lists as committed
    (its checkpoint); lines of other samples are left out, as a resumed run would."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such log file")
    unreadable = 0
    log = RunLog(path)
    done_set = set(done) if done is not None else None
    steps: dict[str, Step] = {}
    batches: dict[int, Batch] = {}
    repeated = malformed = 0
    for record in _records(path):
        if record is None:
            unreadable += 1
            continue
        event = record.get("event")
        if event == STEP:
            step = _step(record)
            if step is None:
                malformed += 1
            elif step.sample_id in steps:
                repeated += 1
            else:
                steps[step.sample_id] = step
        elif event == BATCH:
            batch = _batch(record)
            if batch is None:
                malformed += 1
            elif batch.batch in batches:
                repeated += 1
            else:
                batches[batch.batch] = batch
        elif event == FAILED:
            log.failed.append((str(record.get("sample_id")), str(record.get("error", ""))[:500]))
        else:
            malformed += 1
    committed = [s for s in steps.values() if s.batch in batches]
    if len(committed) < len(steps):
        log.notes.append(
            f"{len(steps) - len(committed)} step line(s) of a batch with no batch line (a run "
            "in progress, or one that stopped mid-batch) left out"
        )
    if done_set is not None:
        kept = [s for s in committed if s.sample_id in done_set]
        if len(kept) < len(committed):
            log.notes.append(
                f"{len(committed) - len(kept)} step line(s) of samples the bank does not list "
                "as done (a batch not saved before a crash) left out"
            )
        committed = kept
    log.steps = sorted(committed, key=lambda s: s.step)
    used = {s.batch for s in log.steps}
    log.batches = sorted((b for b in batches.values() if b.batch in used), key=lambda b: b.batch)
    if unreadable:
        log.notes.append(f"{unreadable} unreadable line(s) (e.g. a last line being written)")
    if repeated:
        log.notes.append(f"{repeated} repeated line(s) (a resumed run); the first one kept")
    if malformed:
        log.notes.append(f"{malformed} line(s) without the fields of a step or batch skipped")
    retried = sum(1 for sample_id, _ in log.failed if sample_id in steps)
    if log.failed:
        log.notes.append(
            f"{len(log.failed)} failed attempt(s) of samples logged, {retried} of them "
            "retried successfully later"
        )
    return log


def _records(path: Path) -> Iterator[dict[str, Any] | None]:
    """The log's records one line at a time (``None`` for a line that is not a JSON
    object), so a long run's log is never held in memory whole."""
    with open(path, "rb") as handle:
        while line := handle.readline(MAX_LINE_BYTES + 1):
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                while (rest := handle.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                    pass
                yield None
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # also a number of thousands of digits
                record = None
            yield record if isinstance(record, dict) else None


def load_bank(path: str | os.PathLike[str]) -> ExperienceBank:
    """The bank file (``ValueError`` naming the file when it is missing or bad)."""
    return ExperienceBank.load(path)


def checkpoint(bank: ExperienceBank) -> dict[str, Any]:
    """The bank's distillation checkpoint (empty when it has none)."""
    distill = bank.meta.extra.get("distill")
    return distill if isinstance(distill, dict) else {}


def bank_done(bank: ExperienceBank) -> list[str] | None:
    """The samples a bank's distillation checkpoint lists as done (``None``: no checkpoint)."""
    done = checkpoint(bank).get("done")
    if isinstance(done, list) and all(isinstance(i, str) for i in done):
        return done
    return None


def bank_budget(bank: ExperienceBank) -> tuple[int | None, int | None]:
    """The run's budget (max entries, max rendered tokens) from the bank's checkpoint."""
    config = checkpoint(bank).get("config")
    if not isinstance(config, dict):
        return None, None
    return opt_count(config.get("max_entries")), opt_count(config.get("max_bank_tokens"))


def version_points(bank: ExperienceBank) -> list[VersionPoint]:
    """Entries and rendered tokens (the estimate the compression budget counts) at
    every version, from the bank's history: one pass over its operations."""
    texts: dict[str, str] = {}
    points = [VersionPoint(0, 0, 0, 0, "start", None)]
    for record in bank.history:
        for op in record.operations:
            name = op.get("op")
            if name in ("delete", "update") and op.get("id") in texts:
                if name == "delete":
                    del texts[op["id"]]
                else:
                    texts[op["id"]] = op["text"]
            elif name in ("add", "merge") and op.get("result_id"):
                for source in op.get("ids") or ():
                    texts.pop(source, None)
                texts[op["result_id"]] = op["text"]
        rendered = "".join(f"[{i}] {t}\n" for i, t in texts.items())
        batch = record.meta.get("batch")
        points.append(
            VersionPoint(
                record.version, record.step, len(texts), len(approx_tokenize(rendered)),
                str(record.meta.get("source", "unknown")),
                batch if isinstance(batch, int) else None,
            )
        )  # fmt: skip
    return points


def entry_origins(bank: ExperienceBank) -> dict[str, dict[str, Any]]:
    """For each current entry: the history that made it what it is (the operation and
    batch that created it, the entries it was merged from, how often it was updated)."""
    origins: dict[str, dict[str, Any]] = {}
    for record in bank.history:
        for op in record.operations:
            made = op.get("result_id")
            if made:
                origins[made] = {
                    "op": op.get("op"),
                    "merged_from": list(op.get("ids") or []),
                    "source": record.meta.get("source"),
                    "batch": record.meta.get("batch"),
                    "updates": 0,
                }
            elif op.get("op") == "update" and op.get("id") in origins:
                origins[op["id"]]["updates"] += 1
    return {e.id: origins.get(e.id, {}) for e in bank.entries}


def load_eval_reports(paths: list[Path]) -> list[EvalReport]:
    """Read ``eval --out`` reports; each is labelled by its file name (with enough of
    its folder to tell two apart)."""
    if len(paths) > MAX_EVAL_REPORTS:
        raise ValueError(f"at most {MAX_EVAL_REPORTS} --eval reports, got {len(paths)}")
    reports = []
    for path in paths:
        path = Path(path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the eval report ({exc.strerror})") from None
        if size > MAX_EVAL_BYTES:
            raise ValueError(f"{path}: {size} bytes, more than an eval report ({MAX_EVAL_BYTES})")
        try:
            data = json.loads(path.read_bytes())
        except (ValueError, RecursionError) as exc:  # not JSON, digits or nesting past limits
            raise ValueError(f"{path}: not a JSON eval report ({exc})") from None
        reports.append(EvalReport(str(path), path, _check_eval(data, path)))
    labels = _short_labels([r.path for r in reports])
    return [EvalReport(label, r.path, r.data) for label, r in zip(labels, reports, strict=True)]


def _check_eval(data: Any, path: Path) -> dict[str, Any]:
    conditions = data.get("conditions") if isinstance(data, dict) else None
    if not isinstance(conditions, dict) or not conditions:
        raise ValueError(f'{path}: not an eval report (no "conditions"; write one with eval --out)')
    if len(conditions) > MAX_CONDITIONS:
        raise ValueError(
            f"{path}: {len(conditions)} conditions, more than an eval report has ({MAX_CONDITIONS})"
        )
    for name, condition in conditions.items():
        if not isinstance(condition, dict) or not isinstance(
            condition.get("by_category", {}), dict
        ):
            raise ValueError(f"{path}: condition {name!r} is not an eval figure set")
    return data


def _short_labels(paths: list[Path]) -> list[str]:
    """The shortest path tails that tell the reports apart."""
    for depth in range(1, 8):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def _step(record: dict[str, Any]) -> Step | None:
    step, sample_id = record.get("step"), record.get("sample_id")
    correct, total = record.get("student_correct"), record.get("student_total")
    if not (_is_count(step) and _is_count(correct) and _is_count(total)):
        return None
    if not isinstance(sample_id, str) or correct > total:
        return None
    category = record.get("category")
    skipped = record.get("skipped")
    return Step(
        step, sample_id, category if isinstance(category, str) else None,
        opt_count(record.get("batch")), correct, total,
        skipped if isinstance(skipped, str) else None,
        _tokens(record.get("tokens")), _seconds(record.get("seconds")),
    )  # fmt: skip


def _batch(record: dict[str, Any]) -> Batch | None:
    number = record.get("batch")
    if not _is_count(number):
        return None
    steps = record.get("steps")
    span = (steps[0], steps[1]) if isinstance(steps, list) and len(steps) == 2 else None
    operations = record.get("operations")
    results = operations.get("results") if isinstance(operations, dict) else None
    seconds = record.get("seconds")
    return Batch(
        number, span if span and all(_is_count(s) for s in span) else None,
        opt_count(record.get("bank_version_before")), opt_count(record.get("bank_version_after")),
        opt_count(record.get("bank_size")),
        tuple(r for r in results or () if isinstance(r, dict)),
        record["compression"] if isinstance(record.get("compression"), dict) else None,
        record["reconcile"] if isinstance(record.get("reconcile"), dict) else None,
        float(seconds) if _is_seconds(seconds) else 0.0,
        _tokens(record.get("tokens")),
    )  # fmt: skip


def _tokens(value: Any) -> dict[str, dict[str, int]]:
    if not isinstance(value, dict):
        return {}
    out = {}
    for phase, counts in value.items():
        if isinstance(counts, dict):
            out[str(phase)] = {
                k: counts[k] for k in ("prompt", "cached", "completion") if _is_count(counts.get(k))
            }
    return out


def _seconds(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {str(k): float(v) for k, v in value.items() if _is_seconds(v)}


def _is_seconds(value: Any) -> bool:
    number = finite(value)
    return number is not None and number >= 0


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (NaN, infinity, a bool, an integer
    too large for a float: None)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def opt_count(value: Any) -> int | None:
    return value if _is_count(value) else None


def log_version_points(log: RunLog) -> list[VersionPoint]:
    """Entries after each batch, from the log alone (no tokens: the log does not hold
    the bank's text); a batch that compressed the bank counts as a compression."""
    points = [VersionPoint(0, 0, 0, None, "start", None)]
    for b in log.batches:
        if b.version_after is not None and b.bank_size is not None:
            source = "compression" if b.compression else "teacher"
            step = b.steps[1] if b.steps else 0
            points.append(VersionPoint(b.version_after, step, b.bank_size, None, source, b.batch))
    return points
