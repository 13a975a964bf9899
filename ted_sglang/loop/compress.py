"""Compression of the bank during distillation: removals directly, merges and
rewrites written by the teacher and held to the plan."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ted_sglang.bank import CompressionPlan, CompressionPolicy, ExperienceBank
from ted_sglang.loop.calls import RequestFailed, Tokens, compress, parse_json
from ted_sglang.loop.config import DistillConfig
from ted_sglang.loop.steplog import report_record
from ted_sglang.runtime import Endpoint


def compress_bank(
    bank: ExperienceBank,
    policy: CompressionPolicy,
    teacher: Endpoint | None,
    config: DistillConfig,
    *,
    step: int,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Compress ``bank`` if it is over budget; ``None`` when it is not.

    The plan's removals are applied as one version; then the teacher writes the
    merged / shortened texts of the plan's candidates, and the operations that fit
    the plan are applied as another (history meta ``source="compression"`` plus
    ``meta``, e.g. the batch number).  A
    teacher failure or an operation outside the plan is reported, never raised.
    The record holds ``tokens`` (a :class:`~ted_sglang.loop.calls.Tokens`).
    """
    plan = policy.plan(bank)
    if not plan.over_budget:
        return None
    meta = dict(meta or {})
    record: dict[str, Any] = {
        "plan": plan.summary(),
        "version_before": bank.version,
        "removals": None,
        "teacher_output": None,
        "teacher_error": None,
        "outside_plan": [],
        "operations": None,
        "tokens": Tokens(),
    }
    if plan.removals:
        report = policy.apply_removals(bank, plan, step=step, meta={**meta, "kind": "removal"})
        record["removals"] = report_record(report)
    candidates = _candidates(bank, plan)
    if teacher is not None and candidates is not None:
        merges, rewrites = candidates
        limits = replace(bank.limits, max_operations=max(len(merges) + len(rewrites), 1))
        try:
            text, tokens = compress(teacher.backend, merges, rewrites, limits, config.generation)
        except RequestFailed as exc:
            record["teacher_error"] = str(exc)
        else:
            record["teacher_output"] = text
            record["tokens"] = tokens
            document, outside = restrict_to_plan(text, plan)
            record["outside_plan"] = outside
            if document is not None:
                report = bank.apply(
                    document, step=step, limits=limits,
                    meta={**meta, "source": "compression", "kind": "teacher"},
                )  # fmt: skip
                record["operations"] = report_record(report)
            else:
                record["teacher_error"] = outside[0]["reason"] if outside else "no document"
    record["version_after"] = bank.version
    return record


def _candidates(
    bank: ExperienceBank, plan: CompressionPlan
) -> tuple[list[list[tuple[str, str]]], list[tuple[str, str]]] | None:
    """The plan's merge groups and rewrites with their texts (entries still present)."""
    merges = []
    for group in plan.merges:
        present = [(i, bank[i].text) for i in group.ids if i in bank]
        if len(present) >= 2:
            merges.append(present)
    rewrites = [(r.id, bank[r.id].text) for r in plan.rewrites if r.id in bank]
    return (merges, rewrites) if merges or rewrites else None


def _fits_plan(op: Any, groups: list[set[str]], rewrites: set[str]) -> bool:
    if not isinstance(op, dict):
        return False
    if op.get("op") == "none":
        return True
    if op.get("op") == "update":
        return op.get("id") in rewrites
    ids = op.get("ids")
    if op.get("op") != "merge" or not isinstance(ids, list):
        return False
    named = {i for i in ids if isinstance(i, str)}
    return len(named) >= 2 and any(named <= g for g in groups)


def restrict_to_plan(
    text: str, plan: CompressionPlan
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The operations of ``text`` that the plan allows (merges of ids of one planned
    group, updates of planned rewrites, ``none``), and a report of the others.
    Returns ``(None, [why])`` when ``text`` is not an operations document."""
    try:
        data = parse_json(text)
    except ValueError as exc:
        return None, [{"index": None, "reason": str(exc)}]
    if not isinstance(data, dict) or not isinstance(data.get("operations"), list):
        return None, [{"index": None, "reason": 'not {"operations": [...]}'}]
    groups = [set(m.ids) for m in plan.merges]
    rewrites = {r.id for r in plan.rewrites}
    kept, outside = [], []
    for index, op in enumerate(data["operations"]):
        if _fits_plan(op, groups, rewrites):
            kept.append(op)
        else:
            outside.append(
                {"index": index, "raw": op, "reason": "not a merge or rewrite of the plan"}
            )
    return {"operations": kept}, outside
