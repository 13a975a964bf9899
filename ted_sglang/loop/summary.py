"""What a distillation run did: samples, operations, skipped groups, tokens, time."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ted_sglang.loop.calls import Tokens
from ted_sglang.loop.step import ALL_CORRECT, ALL_WRONG
from ted_sglang.loop.steplog import BATCH


@dataclass
class DistillSummary:
    """What a run did (this invocation) and where the bank stands."""

    bank_path: Path
    log_path: Path
    resumed: bool
    total_samples: int
    done_before: int
    done_now: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    applied_ops: int = 0
    rejected_ops: int = 0
    reconcile_merged: int = 0
    reconcile_dropped: int = 0
    batches: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {ALL_CORRECT: 0, ALL_WRONG: 0})
    trajectories: int = 0
    correct: int = 0
    bank_version: int = 0
    bank_size: int = 0
    seconds: float = 0.0
    tokens: Tokens = field(default_factory=Tokens)
    workers: list[str] = field(default_factory=list)
    similarity: str = ""

    @property
    def student_accuracy(self) -> float:
        return self.correct / self.trajectories if self.trajectories else 0.0

    @property
    def samples_per_minute(self) -> float:
        return 60.0 * self.done_now / self.seconds if self.seconds else 0.0

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "bank": str(self.bank_path),
            "log": str(self.log_path),
            "resumed": self.resumed,
            "total_samples": self.total_samples,
            "done_before": self.done_before,
            "done_now": self.done_now,
            "failed": [{"sample_id": i, "error": e} for i, e in self.failed],
            "batches": self.batches,
            "skipped_uniform": {**self.skipped, "total": self.num_skipped},
            "applied_operations": self.applied_ops,
            "rejected_operations": self.rejected_ops,
            "reconcile_merged": self.reconcile_merged,
            "reconcile_dropped": self.reconcile_dropped,
            "student_accuracy": self.student_accuracy,
            "bank_version": self.bank_version,
            "bank_size": self.bank_size,
            "seconds": round(self.seconds, 2),
            "samples_per_minute": round(self.samples_per_minute, 3),
            "tokens": self.tokens.to_dict(),
            "cache_hit_rate": round(self.tokens.cache_hit_rate, 4),
            "workers": list(self.workers),
            "similarity": self.similarity,
        }

    def count_batch(self, steps: list[dict[str, Any]], batch: dict[str, Any]) -> None:
        """Add a committed batch's log records (its steps and its batch line)."""
        assert batch["event"] == BATCH
        self.batches += 1
        for record in steps:
            self.done_now += 1
            self.trajectories += record["student_total"]
            self.correct += record["student_correct"]
            if record["skipped"] is not None:
                self.skipped[record["skipped"]] += 1
        compression = batch.get("compression") or {}
        for report in (
            batch.get("operations"),
            compression.get("removals"),
            compression.get("operations"),
        ):
            if report:
                self.applied_ops += report["num_applied"]
                self.rejected_ops += report["num_rejected"]
        if batch.get("reconcile"):
            self.reconcile_merged += batch["reconcile"]["merged"]
            self.reconcile_dropped += batch["reconcile"]["dropped"]
