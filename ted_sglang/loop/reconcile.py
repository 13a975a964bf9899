"""One operations document from the proposals of a batch of samples.

Every sample of a batch has its teacher propose an operations document against the
same bank version.  :func:`reconcile` checks each proposal against that version (as
:meth:`~ted_sglang.bank.ExperienceBank.apply` would) and merges the well-formed
operations by these rules, applied in this order:

1. **delete** -- deletes of the same entry become one; a delete wins over every other
   operation on its entry (an update or a merge naming it is dropped);
2. **merge** -- a merge naming an entry that an earlier kept merge names is dropped
   (the first merge in sample order wins); one naming the same entries with a
   near-identical text counts as merged into it;
3. **update** -- an update of an entry that a kept merge consumes is dropped (a merge
   wins over an update: it was written from the entry's text); updates of one entry
   with near-identical texts become one; updates with different texts form an
   :class:`UpdateConflict`, whose merged text a teacher may write (see
   :meth:`ReconcilePlan.finish`); without one, the first update is kept;
4. **add** -- an add that is a near-duplicate of an entry that stays in the bank, of
   an entry the bank gained after the batch's version (``newer``: written by a batch
   committed in the meantime), or of a text the batch writes (update, merge), is
   dropped; adds that are near-duplicates of each other become the first of them.

"Near-duplicate" means ``similarity >= threshold`` (any
:data:`~ted_sglang.bank.Similarity`); exact duplicates (same text up to case and
whitespace) always are.  The kept operations go into the document in sample order,
so new ids follow that order.  Every operation gets a :class:`Decision` saying what
happened to it and why.  Nothing here talks to a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ted_sglang.bank import Experience, OperationLimits, Similarity, normalize_text
from ted_sglang.bank.apply import judge
from ted_sglang.bank.operations import Operation, load_document
from ted_sglang.bank.similarity import check_threshold
from ted_sglang.loop.reconcile_rules import Decision, Rules, Source, UpdateConflict


@dataclass(frozen=True)
class Proposal:
    """One sample's operations document (a dict, or JSON text as the teacher wrote it)."""

    sample_id: str
    document: Any


@dataclass(frozen=True)
class Reconciled:
    """The batch's one document, the source of each of its operations, and a decision
    for every proposed operation."""

    document: dict[str, Any]
    sources: tuple[Source, ...]
    decisions: tuple[Decision, ...]
    num_proposals: int

    def counts(self) -> dict[str, Any]:
        """Proposals and operations in, kept / merged / dropped, and why (by code)."""
        by_code: dict[str, int] = {}
        for d in self.decisions:
            if d.fate != "kept":
                by_code[d.code] = by_code.get(d.code, 0) + 1
        return {
            "proposals": self.num_proposals,
            "operations": sum(d.source.index is not None for d in self.decisions),
            "kept": sum(d.fate == "kept" for d in self.decisions),
            "merged": sum(d.fate == "merged" for d in self.decisions),
            "dropped": sum(d.fate == "dropped" for d in self.decisions),
            "teacher_merged": sum(
                d.code == "teacher_merged" and d.fate == "kept" for d in self.decisions
            ),
            "by_code": dict(sorted(by_code.items())),
        }

    def to_record(self) -> dict[str, Any]:
        """For the log: the counts and every decision."""
        return {**self.counts(), "decisions": [d.to_dict() for d in self.decisions]}


@dataclass(frozen=True)
class ReconcilePlan:
    """The outcome of the rules, before update conflicts are settled."""

    version: int | None
    accepted: tuple[tuple[Source, Operation], ...]
    decisions: Mapping[int, Decision]  # position in ``accepted`` -> its decision
    rejected: tuple[Decision, ...]  # invalid documents and operations
    conflicts: tuple[UpdateConflict, ...]
    sample_ids: tuple[str, ...]  # the proposals' samples, in order
    conflict_positions: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def finish(
        self, merged_texts: Mapping[str, str] | None = None, notes: Mapping[str, str] | None = None
    ) -> Reconciled:
        """The document, settling each conflict with ``merged_texts[id]`` (a text the
        teacher wrote for that entry) or else with its first update; ``notes[id]`` says
        why there is no merged text (e.g. the teacher failed)."""
        merged_texts, notes = merged_texts or {}, notes or {}
        decisions = dict(self.decisions)
        replaced: dict[int, str] = {}
        for conflict in self.conflicts:
            first, *others = self.conflict_positions[conflict.id]
            first_source = self.accepted[first][0]
            text = normalize_text(merged_texts.get(conflict.id) or "")
            if text:
                replaced[first] = text
                reason = f"the teacher merged {len(conflict.texts)} updates of {conflict.id}"
                decisions[first] = Decision(
                    first_source, "update", "kept", "teacher_merged", reason
                )
                for position in others:
                    decisions[position] = Decision(
                        self.accepted[position][0],
                        "update",
                        "merged",
                        "teacher_merged",
                        reason,
                        into=first_source,
                    )
                continue
            why = notes.get(conflict.id, "no teacher to merge them")
            decisions[first] = Decision(
                first_source,
                "update",
                "kept",
                "kept",
                f"first of {len(conflict.texts)} different updates of {conflict.id} ({why})",
            )
            for position in others:
                decisions[position] = Decision(
                    self.accepted[position][0],
                    "update",
                    "dropped",
                    "update_conflict",
                    f"{conflict.id} is also updated by {first_source} with another text; "
                    f"{why}: the first update is kept",
                    into=first_source,
                )
        operations, sources = [], []
        for position, (source, op) in enumerate(self.accepted):
            if decisions[position].fate != "kept":
                continue
            document_op = op.to_dict()
            if position in replaced:
                document_op["text"] = replaced[position]
            operations.append(document_op)
            sources.append(source)
        order = {sample_id: n for n, sample_id in enumerate(self.sample_ids)}
        ordered = sorted(
            [*self.rejected, *decisions.values()],
            key=lambda d: (
                order[d.source.sample_id],
                -1 if d.source.index is None else d.source.index,
            ),
        )
        return Reconciled(
            {"operations": operations}, tuple(sources), tuple(ordered), len(self.sample_ids)
        )


def reconcile(
    proposals: Sequence[Proposal],
    entries: Sequence[tuple[str, str]],
    *,
    limits: OperationLimits,
    similarity: Similarity,
    threshold: float = 0.9,
    version: int | None = None,
    newer: Sequence[tuple[str, str]] = (),
) -> ReconcilePlan:
    """Apply the module's rules to ``proposals`` made against the bank ``entries``
    ((id, text) pairs of bank ``version``); ``newer``: (id, text) pairs the bank holds
    now that ``entries`` lacks (an add repeating one is dropped too)."""
    threshold = check_threshold(threshold, "the near-duplicate threshold")
    ids = [s.sample_id for s in proposals]
    if len(set(ids)) != len(ids):
        raise ValueError(f"each sample may propose once per batch; got {ids}")
    base = {i: Experience(i, text, 0, 0, 0, 0) for i, text in entries}
    accepted: list[tuple[Source, Operation]] = []
    rejected: list[Decision] = []
    for proposal in proposals:
        raw_ops, error = load_document(proposal.document)
        if error is not None:
            source = Source(proposal.sample_id, None)
            rejected.append(Decision(source, None, "dropped", error.code, error.reason))
            continue
        for verdict in judge(base, raw_ops, limits):
            source = Source(proposal.sample_id, verdict.index)
            if verdict.rejection is not None:
                rejected.append(
                    Decision(
                        source,
                        verdict.op_name,
                        "dropped",
                        verdict.rejection.code,
                        verdict.rejection.reason,
                    )
                )
            elif verdict.operation is not None:
                accepted.append((source, verdict.operation))
    rules = Rules(accepted, dict(entries), similarity, threshold, dict(newer))
    rules.run()
    return ReconcilePlan(
        version,
        tuple(accepted),
        rules.decisions,
        tuple(rejected),
        tuple(rules.conflicts),
        tuple(ids),
        rules.conflict_positions,
    )
