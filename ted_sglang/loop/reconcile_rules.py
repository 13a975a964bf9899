"""The four rules of :mod:`ted_sglang.loop.reconcile` (delete, merge, update, add),
applied in that order to the operations a batch's proposals hold, and the decisions
they record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ted_sglang.bank import Similarity
from ted_sglang.bank.operations import Operation
from ted_sglang.bank.similarity import best_match, prepare

Fate = Literal["kept", "merged", "dropped"]


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


class Rules:
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
