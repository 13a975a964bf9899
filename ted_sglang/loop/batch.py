"""Committing a batch of samples to the bank: usage, one reconciled edit, compression.

Every sample of a batch was run against the same bank version.  :func:`commit_batch`
counts each sample's usage statistics, reconciles the teachers' proposals into one
document (:mod:`ted_sglang.loop.reconcile`; the teacher merges updates of one entry that
disagree), applies it as ONE new version whose history meta lists the batch's sample
ids, and compresses the bank if it is over budget.  It returns a log record per
sample and one for the batch, saying how many proposals were kept, merged or dropped
and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from ted_sglang.bank import CompressionPolicy, ExperienceBank, Similarity
from ted_sglang.loop.calls import Tokens
from ted_sglang.loop.compress import compress_bank
from ted_sglang.loop.config import DistillConfig
from ted_sglang.loop.merging import merge_updates
from ted_sglang.loop.reconcile import Proposal, Reconciled, reconcile
from ted_sglang.loop.step import ALL_CORRECT, ALL_WRONG, PhaseResult, sample_record
from ted_sglang.loop.steplog import BATCH, report_record
from ted_sglang.runtime import Endpoint


@dataclass(frozen=True)
class BatchContext:
    """What committing needs besides the bank: the compression policy, the teacher
    that merges conflicting updates and writes compressions (``None``: none), the
    run's settings and the near-duplicate similarity."""

    policy: CompressionPolicy
    teacher: Endpoint | None
    config: DistillConfig
    similarity: Similarity


def commit_batch(
    bank: ExperienceBank,
    results: list[PhaseResult],
    *,
    batch: int,
    first_step: int,
    context: BatchContext,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Apply ``results`` (in sample order, steps ``first_step``...) to ``bank`` as batch
    number ``batch``; returns the samples' log records and the batch's."""
    assert results, "a batch has at least one sample"
    views = {r.view.version for r in results}
    assert len(views) == 1, f"a batch's samples saw one bank version, not {views}"
    start = time.perf_counter()
    config, view = context.config, results[0].view
    before = bank.version
    last_step = first_step + len(results) - 1
    sample_ids = [r.sample.id for r in results]
    records = [
        {**sample_record(bank, r, step=first_step + n), "batch": batch}
        for n, r in enumerate(results)
    ]
    skipped = [r.skipped for r in results]
    out: dict[str, Any] = {
        "event": BATCH,
        "batch": batch,
        "sample_ids": sample_ids,
        "steps": [first_step, last_step],
        "bank_version_seen": view.version,
        "bank_version_before": before,
        "skipped": {ALL_CORRECT: skipped.count(ALL_CORRECT), ALL_WRONG: skipped.count(ALL_WRONG)},
        "reconcile": None,
        "operations": None,
    }
    tokens: dict[str, Tokens] = {}
    proposals = [
        Proposal(r.sample.id, r.extraction.operations) for r in results if r.extraction is not None
    ]
    if proposals:
        seen = set(view.entries)
        newer = [entry for entry in bank.render_entries() if entry not in seen]
        plan = reconcile(
            proposals, view.entries, limits=config.limits, similarity=context.similarity,
            threshold=config.dup_threshold, version=view.version, newer=newer,
        )  # fmt: skip
        merged: dict[str, str] = {}
        notes: dict[str, str] = {}
        if plan.conflicts and context.teacher is not None:
            merged, notes, tokens["reconcile"] = merge_updates(
                context.teacher.backend, plan.conflicts, config.limits, config.generation
            )
        reconciled = plan.finish(merged, notes)
        count = len(reconciled.document["operations"])
        limits = replace(bank.limits, max_operations=max(bank.limits.max_operations, count, 1))
        meta = {"source": "teacher", "batch": batch, "sample_ids": sample_ids}
        report = bank.apply(reconciled.document, step=last_step, meta=meta, limits=limits)
        out["reconcile"] = reconciled.to_record()
        out["operations"] = report_record(report)
        for result, source in zip(out["operations"]["results"], reconciled.sources, strict=True):
            result["from"] = str(source)
        for record in records:
            record["proposal"] = _proposal_fate(record["sample_id"], reconciled, report)
    compression = compress_bank(
        bank, context.policy, context.teacher, config, step=last_step, meta={"batch": batch}
    )
    if compression is not None:
        tokens["compression"] = compression.pop("tokens")
    out["compression"] = compression
    out["bank_version_after"] = bank.version
    out["bank_size"] = len(bank)
    out["tokens"] = {name: t.to_dict() for name, t in tokens.items()}
    out["seconds"] = round(time.perf_counter() - start, 3)
    return records, out


def _proposal_fate(sample_id: str, reconciled: Reconciled, report: Any) -> dict[str, int]:
    """How one sample's proposed operations fared: reconciled, then applied."""
    mine = [d for d in reconciled.decisions if d.source.sample_id == sample_id]
    applied = rejected = 0
    for result, source in zip(report.results, reconciled.sources, strict=True):
        if source.sample_id == sample_id:
            applied += result.status == "applied"
            rejected += result.status == "rejected"
    return {
        "operations": sum(d.source.index is not None for d in mine),
        "kept": sum(d.fate == "kept" for d in mine),
        "merged": sum(d.fate == "merged" for d in mine),
        "dropped": sum(d.fate == "dropped" for d in mine),
        "applied": applied,
        "rejected": rejected,
    }
