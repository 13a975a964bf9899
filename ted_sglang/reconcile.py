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
from typing import Any, Literal

from ted_sglang.bank import Experience, OperationLimits, Similarity, normalize_text
from ted_sglang.bank.apply import judge
from ted_sglang.bank.operations import Operation, load_document
from ted_sglang.bank.similarity import best_match, check_threshold, prepare

Fate = Literal["kept", "merged", "dropped"]


@dataclass(frozen=True)
class Proposal:
    """One sample's operations document (a dict, or JSON text as the teacher wrote it)."""

    sample_id: str
    document: Any


@dataclass(frozen=True)
class Source:
    """Where an operation came from: its sample and its position in that document
    (``None`` for the document as a whole)."""

    sample_id: str
    index: int | None

    def __str__(self) -> str:
        return self.sample_id if self.index is None else f"{self.sample_id}#{self.index}"


@dataclass(frozen=True)
class Decision:
    """What reconciling did with one operation.

    ``fate``: ``kept`` (in the document), ``merged`` (it said what a kept operation
    says: ``into``), ``dropped`` (invalid, or lost to another operation: ``into``).
    ``code`` names the rule; ``reason`` says it for people.
    """

    source: Source
    op: str | None
    fate: Fate
    code: str
    reason: str = ""
    into: Source | None = None
    similarity: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sample_id": self.source.sample_id,
            "index": self.source.index,
            "op": self.op,
            "fate": self.fate,
            "code": self.code,
        }
        if self.reason:
            out["reason"] = self.reason
        if self.into is not None:
            out["into"] = str(self.into)
        if self.similarity is not None:
            out["similarity"] = round(self.similarity, 4)
        return out


@dataclass(frozen=True)
class UpdateConflict:
    """Several samples rewrote entry ``id`` differently: ``texts`` (distinct, in sample
    order) came from ``sources``; ``current_text`` is the entry's text now."""

    id: str
    current_text: str
    texts: tuple[str, ...]
    sources: tuple[Source, ...]


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
    rules = _Rules(accepted, dict(entries), similarity, threshold, dict(newer))
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


class _Rules:
    """The four rules of the module docstring over the accepted operations."""

    def __init__(
        self,
        accepted: list[tuple[Source, Operation]],
        entries: dict[str, str],
        similarity: Similarity,
        threshold: float,
        newer: dict[str, str],
    ) -> None:
        self.accepted = accepted
        self.entries = entries
        self.newer = newer
        self.similarity = similarity
        self.threshold = threshold
        self.decisions: dict[int, Decision] = {}
        self.conflicts: list[UpdateConflict] = []
        self.conflict_positions: dict[str, tuple[int, ...]] = {}
        self.deleted: dict[str, int] = {}  # entry id -> position of the kept delete
        self.merged: dict[str, int] = {}  # entry id -> position of the kept merge naming it

    def of(self, op: str) -> list[int]:
        return [p for p, (_, o) in enumerate(self.accepted) if o.op == op]

    def keep(self, position: int) -> None:
        source, op = self.accepted[position]
        self.decisions[position] = Decision(source, op.op, "kept", "kept")

    def lose(
        self,
        position: int,
        fate: Fate,
        code: str,
        reason: str,
        winner: int | None,
        similarity: float | None = None,
    ) -> None:
        source, op = self.accepted[position]
        into = None if winner is None else self.accepted[winner][0]
        self.decisions[position] = Decision(source, op.op, fate, code, reason, into, similarity)

    def run(self) -> None:
        texts = [*self.entries.values(), *self.newer.values()]
        prepare(self.similarity, [*texts, *(o.text for _, o in self.accepted if o.text)])
        self.deletes()
        self.merges()
        self.updates()
        self.adds()
        assert len(self.decisions) + sum(len(p) for p in self.conflict_positions.values()) == len(
            self.accepted
        )

    def deletes(self) -> None:
        for p in self.of("delete"):
            target = self.accepted[p][1].id
            assert target is not None
            if target in self.deleted:
                winner = self.deleted[target]
                self.lose(p, "merged", "same_delete", f"{target} is deleted once", winner)
            else:
                self.deleted[target] = p
                self.keep(p)

    def merges(self) -> None:
        for p in self.of("merge"):
            op = self.accepted[p][1]
            gone = [i for i in op.ids if i in self.deleted]
            if gone:
                self.lose(
                    p,
                    "dropped",
                    "deleted",
                    f"{gone[0]} is deleted: a delete wins over a merge",
                    self.deleted[gone[0]],
                )
                continue
            taken = [i for i in op.ids if i in self.merged]
            if not taken:
                for i in op.ids:
                    self.merged[i] = p
                self.keep(p)
                continue
            winner = self.merged[taken[0]]
            other = self.accepted[winner][1]
            assert op.text is not None and other.text is not None
            score = self._similar(op.text, other.text)
            if set(op.ids) == set(other.ids) and score is not None:
                self.lose(
                    p,
                    "merged",
                    "same_merge",
                    f"the same merge of {'+'.join(op.ids)}",
                    winner,
                    score,
                )
            else:
                self.lose(
                    p,
                    "dropped",
                    "merge_overlap",
                    f"{taken[0]} is already merged by an earlier proposal (the first merge wins)",
                    winner,
                )

    def updates(self) -> None:
        by_id: dict[str, list[int]] = {}
        for p in self.of("update"):
            target = self.accepted[p][1].id
            assert target is not None
            if target in self.deleted:
                self.lose(
                    p,
                    "dropped",
                    "deleted",
                    f"{target} is deleted: a delete wins over an update",
                    self.deleted[target],
                )
            elif target in self.merged:
                self.lose(
                    p,
                    "dropped",
                    "merged_away",
                    f"{target} is merged into another entry: a merge wins over an update",
                    self.merged[target],
                )
            else:
                by_id.setdefault(target, []).append(p)
        for target, positions in by_id.items():
            distinct: list[int] = []  # first position of each distinct text
            for p in positions:
                text = self.accepted[p][1].text
                assert text is not None
                match = best_match(
                    text,
                    [self.accepted[q][1].text or "" for q in distinct],
                    self.similarity,
                    self.threshold,
                )
                if match is None:
                    distinct.append(p)
                else:
                    self.lose(
                        p,
                        "merged",
                        "same_update",
                        f"the same update of {target}",
                        distinct[match[0]],
                        match[1],
                    )
            if len(distinct) == 1:
                self.keep(distinct[0])
                continue
            self.conflict_positions[target] = tuple(distinct)
            self.conflicts.append(
                UpdateConflict(
                    target,
                    self.entries[target],
                    tuple(self.accepted[p][1].text or "" for p in distinct),
                    tuple(self.accepted[p][0] for p in distinct),
                )
            )

    def adds(self) -> None:
        reference: list[tuple[str, str, int | None]] = []  # (what, text, position)
        changed = set(self.deleted) | set(self.merged)
        changed |= {op.id for _, op in self.accepted if op.op == "update" and op.id is not None}
        for entry_id, text in self.entries.items():
            if entry_id not in changed:
                reference.append((entry_id, text, None))
        for entry_id, text in self.newer.items():
            reference.append((f"{entry_id} (written since this batch's bank version)", text, None))
        for position, (_, op) in enumerate(self.accepted):
            kept = self.decisions.get(position)
            in_conflict = (
                op.id in self.conflict_positions and position in (self.conflict_positions[op.id])
            )
            if op.op in ("update", "merge") and (in_conflict or (kept and kept.fate == "kept")):
                target = op.id or "+".join(op.ids)
                reference.append((f"the new text of {target}", op.text or "", position))
        kept_adds: list[int] = []
        for p in self.of("add"):
            text = self.accepted[p][1].text
            assert text is not None
            texts = [t for _, t, _ in reference]
            match = best_match(text, texts, self.similarity, self.threshold)
            if match is not None:
                what, _, winner = reference[match[0]]
                self.lose(
                    p,
                    "dropped",
                    "duplicate_of_entry",
                    f"near-duplicate of {what} (similarity {match[1]:.2f})",
                    winner,
                    match[1],
                )
                continue
            added = [self.accepted[q][1].text or "" for q in kept_adds]
            match = best_match(text, added, self.similarity, self.threshold)
            if match is not None:
                self.lose(
                    p,
                    "merged",
                    "same_add",
                    "near-duplicate of another add",
                    kept_adds[match[0]],
                    match[1],
                )
                continue
            kept_adds.append(p)
            self.keep(p)

    def _similar(self, a: str, b: str) -> float | None:
        match = best_match(a, [b], self.similarity, self.threshold)
        return None if match is None else match[1]
