"""The teacher's part of merging: one text written for several.

Two callers share one program (:func:`ted_sglang.programs.teacher_merge`, constrained
to a single operation of the bank's own grammar):

- reconciling a batch: several samples rewrote the same entry differently
  (:class:`~ted_sglang.loop.reconcile.UpdateConflict`) -> one ``update`` of that entry;
- merging banks: a group of near-duplicates whose texts differ
  (:class:`~ted_sglang.bank.merge.BankMergePlan`) -> one ``merge`` of the group.

Data flows one way: the pure planners (:mod:`ted_sglang.loop.reconcile`,
:mod:`ted_sglang.bank.merge`) make plans without a model; this module reads a plan and
returns texts; the plan's pure builder takes the texts.  Neither planner imports this
module, and a failed or unusable answer is reported, never raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ted_sglang import programs, prompts
from ted_sglang.bank import OperationLimits
from ted_sglang.bank.merge import BankMergePlan
from ted_sglang.loop.calls import RequestFailed, Tokens, merged_text
from ted_sglang.loop.config import GenerationConfig
from ted_sglang.loop.reconcile import UpdateConflict


def merge_updates(
    backend: Any,
    conflicts: Sequence[UpdateConflict],
    limits: OperationLimits,
    gen: GenerationConfig,
) -> tuple[dict[str, str], dict[str, str], Tokens]:
    """The teacher's merged text per conflicting entry id, why there is none for the
    others (id -> reason), and the tokens spent."""
    jobs = [
        (
            c.id,
            prompts.update_merge_request(c.id, c.current_text, c.texts, limits),
            programs.single_operation_schema("update", [c.id], limits),
        )
        for c in conflicts
    ]
    return _run(backend, jobs, limits, gen)


def merge_groups(
    backend: Any,
    plan: BankMergePlan,
    limits: OperationLimits,
    gen: GenerationConfig,
) -> tuple[dict[int, str], dict[int, str], Tokens]:
    """The teacher's merged text per near-duplicate group of ``plan`` (by group
    index), why there is none for the others, and the tokens spent."""
    jobs = []
    for index in plan.near_duplicate_groups:
        texts = plan.groups[index].texts
        ids = [f"E{n}" for n in range(1, len(texts) + 1)]
        jobs.append(
            (
                index,
                prompts.group_merge_request(texts, limits),
                programs.single_operation_schema("merge", ids, limits),
            )
        )
    return _run(backend, jobs, limits, gen)


def _run(
    backend: Any, jobs: list[tuple[Any, str, dict]], limits: OperationLimits, gen: GenerationConfig
) -> tuple[dict, dict, Tokens]:
    texts: dict[Any, str] = {}
    notes: dict[Any, str] = {}
    tokens = Tokens()
    if not jobs:
        return texts, notes, tokens

    def one(job: tuple[Any, str, dict]) -> tuple[str, Tokens]:
        _, request, schema = job
        return merged_text(backend, request, schema, limits, gen)

    with ThreadPoolExecutor(min(len(jobs), 4), thread_name_prefix="ted-merge") as pool:
        futures = [(job[0], pool.submit(one, job)) for job in jobs]
        for key, future in futures:
            try:
                text, spent = future.result()
            except RequestFailed as exc:
                notes[key] = f"the teacher failed ({exc})"
                continue
            except ValueError as exc:
                notes[key] = f"the teacher's answer was unusable ({exc})"
                continue
            texts[key] = text
            tokens += spent
    return texts, notes, tokens
