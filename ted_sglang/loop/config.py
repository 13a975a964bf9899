"""Settings of the TED loop: token budgets of the programs and the distillation run.

Two small dataclasses, checked on creation.  Nothing heavy is imported here, so the
command line can build them before any model or server is touched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ted_sglang.bank.operations import OperationLimits


@dataclass(frozen=True)
class GenerationConfig:
    """Token budgets (``max_new_tokens``) and sampling of each program.

    ``ops_max_tokens=None`` bounds the operations document by what its schema can
    hold (see :meth:`ops_token_bound`), ``citation_max_tokens=None`` the citations
    (:func:`ted_sglang.programs.citation_token_bound`); the grammar stops a document
    earlier as soon as it is complete.  Teacher trajectories longer than
    ``max_trajectory_chars`` are cut (with a marker) before the teacher reads them.
    """

    student_max_tokens: int = 256
    student_temperature: float = 0.8
    student_top_p: float = 0.95
    solution_max_tokens: int = 384
    critique_max_tokens: int = 192
    citation_max_tokens: int | None = None
    chain_max_tokens: int = 192
    ops_max_tokens: int | None = None
    teacher_temperature: float = 0.3
    max_trajectory_chars: int = 2000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_tokens", "_chars")):
                if value is None and f.name in ("ops_max_tokens", "citation_max_tokens"):
                    continue
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"{f.name} must be a positive integer, got {value!r}")
        for name in ("student_temperature", "teacher_temperature"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0 < self.student_top_p <= 1:
            raise ValueError("student_top_p must be in (0, 1]")

    def ops_token_bound(self, limits: OperationLimits, num_operations: int | None = None) -> int:
        """``max_new_tokens`` for an operations document under ``limits``.

        Every token writes at least one character, so the longest document the schema
        admits (plus room for escapes) bounds the tokens; ``ops_max_tokens`` caps it.
        """
        ops = limits.max_operations if num_operations is None else num_operations
        per_op = 48 + 8 * limits.max_merge_ids + limits.max_text_chars
        bound = 24 + ops * per_op
        return bound if self.ops_max_tokens is None else min(bound, self.ops_max_tokens)


@dataclass(frozen=True)
class DistillConfig:
    """One distillation run.

    ``rollouts``: student trajectories per sample; ``batch_size``: samples whose
    teacher proposals are made against the same bank version and reconciled into one
    new version (1: every sample makes its own); ``concurrency``: samples in flight
    per student endpoint (a sample in flight sees the bank as it was when it started);
    ``skip_uniform``: a group of rollouts that are all right or all wrong teaches
    nothing, so the teacher is not asked about it (usage statistics are still
    counted); ``retries``: extra attempts for a sample whose requests fail;
    ``max_entries`` / ``max_bank_tokens``: the bank's compression budget; ``limits``:
    bounds on each operations document.  Near-duplicates are found with
    ``similarity`` (``embedding``: a sentence-embedding model, or ``text``):
    ``dup_threshold`` for adds that repeat an entry or each other, ``merge_threshold``
    for the compression's merge candidates.
    """

    rollouts: int = 5
    concurrency: int = 2
    batch_size: int = 1
    seed: int = 0
    structured_chains: bool = False
    skip_uniform: bool = True
    retries: int = 2
    max_entries: int | None = 64
    max_bank_tokens: int | None = 2048
    similarity: str = "embedding"
    dup_threshold: float = 0.9
    merge_threshold: float = 0.7
    limits: OperationLimits = field(default_factory=OperationLimits)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    # Fields that do not change what a run computes, so a resumed run may change them.
    RUNTIME_FIELDS = ("concurrency", "retries")

    def __post_init__(self) -> None:
        if not isinstance(self.rollouts, int) or not 1 <= self.rollouts <= 64:
            raise ValueError(f"rollouts must be between 1 and 64, got {self.rollouts!r}")
        if self.rollouts == 1 and self.skip_uniform:
            raise ValueError(
                "with one rollout every group is uniform (all right or all wrong), so "
                "skip_uniform would skip every sample: use more rollouts or --no-skip-uniform"
            )
        for name in ("concurrency", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries!r}")
        for name in ("max_entries", "max_bank_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if self.similarity not in ("embedding", "text"):
            raise ValueError(f"similarity must be 'embedding' or 'text', got {self.similarity!r}")
        for name in ("dup_threshold", "merge_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues (JSON)."""
        out = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in self.RUNTIME_FIELDS and f.name not in ("limits", "generation")
        }
        out["limits"] = self.limits.to_dict()
        out["generation"] = asdict(self.generation)
        return out
