"""Merging banks distilled separately into one.

:func:`plan_merge` groups the entries of all banks into exact and near-duplicates and
lists the conflicts (near-duplicates whose texts differ, different student models,
training samples or questions seen by more than one bank); :func:`build_merged_bank`
turns a plan into a new bank.  In between, a caller may have a teacher write one text
for each near-duplicate group (``texts``); without one, a group keeps the text of its
first entry.  The new bank has fresh ids, one version (the merge, with its sources and
counts in the history), the summed usage of each group and the union of the training
samples.  Nothing here talks to a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ted_sglang.bank.experience import Experience, format_id, normalize_text, text_key
from ted_sglang.bank.history import VersionRecord
from ted_sglang.bank.meta import BankMeta
from ted_sglang.bank.similarity import (
    Similarity,
    check_threshold,
    near_duplicate_groups,
    similarity_name,
)
from ted_sglang.bank.storage import FORMAT_NAME, FORMAT_VERSION
from ted_sglang.bank.usage import Usage

if TYPE_CHECKING:
    from ted_sglang.bank.bank import ExperienceBank


@dataclass(frozen=True)
class SourceEntry:
    """An entry of one of the banks being merged (``source``: the bank's position)."""

    source: int
    id: str
    text: str
    usage: Usage


@dataclass(frozen=True)
class EntryGroup:
    """Entries that say the same thing; ``similarities[i]``: member i's similarity to
    the first member (1.0 for exact duplicates)."""

    members: tuple[SourceEntry, ...]
    similarities: tuple[float, ...]

    @property
    def is_exact(self) -> bool:
        """Whether every member has the same text (up to case and whitespace)."""
        return len({text_key(m.text) for m in self.members}) == 1

    @property
    def texts(self) -> list[str]:
        """The members' distinct texts, first-seen order."""
        seen: dict[str, str] = {}
        for m in self.members:
            seen.setdefault(text_key(m.text), m.text)
        return list(seen.values())

    @property
    def usage(self) -> Usage:
        total = Usage()
        for m in self.members:
            total = total.merged(m.usage)
        return total


@dataclass(frozen=True)
class BankMergePlan:
    """How the entries of ``labels`` (one per bank) group, and what conflicts."""

    labels: tuple[str, ...]
    versions: tuple[int, ...]
    student_models: tuple[str | None, ...]
    groups: tuple[EntryGroup, ...]
    shared_sample_ids: tuple[str, ...]
    shared_question_hashes: tuple[str, ...]
    threshold: float
    similarity: str
    sample_ids: tuple[str, ...]
    question_hashes: tuple[str, ...]

    @property
    def near_duplicate_groups(self) -> list[int]:
        """Indexes of the groups whose texts differ (a text must be chosen or written)."""
        return [i for i, g in enumerate(self.groups) if not g.is_exact]

    @property
    def student_model(self) -> str | None:
        """The banks' common student model; ``None`` when they differ or none is set."""
        models = set(self.student_models)
        return models.pop() if len(models) == 1 else None

    def counts(self) -> dict[str, int]:
        entries_in = sum(len(g.members) for g in self.groups)
        near = [g for g in self.groups if not g.is_exact]
        return {
            "entries_in": entries_in,
            "entries_out": len(self.groups),
            "exact_duplicates": sum(len(g.members) - 1 for g in self.groups if g.is_exact),
            "near_duplicate_groups": len(near),
            "near_duplicates": sum(len(g.members) - 1 for g in near),
        }

    def conflicts(self) -> list[dict[str, Any]]:
        """What a person should look at: near-duplicates whose texts differ, different
        student models, training samples / questions that more than one bank saw."""
        out: list[dict[str, Any]] = []
        for i in self.near_duplicate_groups:
            group = self.groups[i]
            out.append(
                {
                    "kind": "near_duplicate",
                    "group": i,
                    "entries": [
                        {"bank": self.labels[m.source], "id": m.id, "text": m.text}
                        for m in group.members
                    ],
                    "similarity": round(min(group.similarities), 4),
                }
            )
        if len(set(self.student_models)) > 1:
            out.append(
                {
                    "kind": "student_model",
                    "models": dict(zip(self.labels, self.student_models, strict=True)),
                }
            )
        if self.shared_sample_ids:
            out.append({"kind": "training_samples", "sample_ids": list(self.shared_sample_ids)})
        if self.shared_question_hashes:
            out.append({"kind": "training_questions", "count": len(self.shared_question_hashes)})
        return out

    def summary(self) -> str:
        """Readable lines for the command line."""
        c = self.counts()
        lines = [
            f"{c['entries_in']} entries from {len(self.labels)} banks -> {c['entries_out']} "
            f"({c['exact_duplicates']} exact duplicates, {c['near_duplicates']} near-duplicates "
            f"in {c['near_duplicate_groups']} groups; {self.similarity} >= {self.threshold})"
        ]
        for conflict in self.conflicts():
            kind = conflict["kind"]
            if kind == "near_duplicate":
                lines.append(
                    f"near-duplicates (similarity >= {conflict['similarity']:.2f}), texts differ:"
                )
                lines += [f"  {e['bank']} [{e['id']}] {e['text']}" for e in conflict["entries"]]
            elif kind == "student_model":
                models = ", ".join(f"{k}: {v}" for k, v in conflict["models"].items())
                lines.append(f"different student models ({models}): the result is untagged")
            elif kind == "training_samples":
                shown = ", ".join(conflict["sample_ids"][:5])
                more = " ..." if len(conflict["sample_ids"]) > 5 else ""
                lines.append(
                    f"{len(conflict['sample_ids'])} training sample id(s) seen by more than "
                    f"one bank: {shown}{more}"
                )
            else:
                lines.append(f"{conflict['count']} training question(s) seen by more than one bank")
        return "\n".join(lines)


def plan_merge(
    banks: Sequence[ExperienceBank],
    labels: Sequence[str] | None = None,
    *,
    similarity: Similarity,
    threshold: float = 0.9,
) -> BankMergePlan:
    """Group the entries of ``banks`` (in order; each bank's in render order) into exact
    and near-duplicates (``similarity >= threshold``, see
    :func:`~ted_sglang.bank.similarity.near_duplicate_groups`)."""
    if len(banks) < 2:
        raise ValueError("merging needs at least two banks")
    threshold = check_threshold(threshold, "the near-duplicate threshold")
    labels = tuple(labels) if labels is not None else tuple(f"bank{i}" for i in range(len(banks)))
    if len(labels) != len(banks):
        raise ValueError("give one label per bank")
    entries = [SourceEntry(i, e.id, e.text, e.usage) for i, bank in enumerate(banks) for e in bank]
    grouped = near_duplicate_groups([e.text for e in entries], similarity, threshold)
    groups = tuple(
        EntryGroup(tuple(entries[i] for i, _ in g), tuple(s for _, s in g)) for g in grouped
    )
    return BankMergePlan(
        labels=labels,
        versions=tuple(b.version for b in banks),
        student_models=tuple(b.meta.student_model for b in banks),
        groups=groups,
        shared_sample_ids=_shared([b.meta.training_sample_ids for b in banks]),
        shared_question_hashes=_shared([b.meta.training_question_hashes for b in banks]),
        threshold=threshold,
        similarity=similarity_name(similarity),
        sample_ids=_union([b.meta.training_sample_ids for b in banks]),
        question_hashes=_union([b.meta.training_question_hashes for b in banks]),
    )


def build_merged_bank(
    plan: BankMergePlan,
    banks: Sequence[ExperienceBank],
    texts: Mapping[int, str] | None = None,
) -> ExperienceBank:
    """The merged bank: one entry per group, ids ``E1, E2, ...`` in group order.

    ``texts`` maps a group's index to the text written for it (e.g. by a teacher); a
    text that is empty or that another group already holds is not used.  Otherwise a
    group keeps its first member's text.  Limits come from the first bank, with room
    for the longest text.
    """
    from ted_sglang.bank.bank import ExperienceBank

    if len(banks) != len(plan.labels):
        raise ValueError("build_merged_bank needs the banks the plan was made from")
    texts = texts or {}
    written, chosen = 0, []
    firsts = {text_key(g.members[0].text) for g in plan.groups}
    assert len(firsts) == len(plan.groups), "groups hold distinct texts"
    used: set[str] = set()
    for i, group in enumerate(plan.groups):
        own = text_key(group.members[0].text)
        candidate = normalize_text(texts.get(i) or "")
        key = text_key(candidate)
        if candidate and key not in used and (key == own or key not in firsts):
            written += 1
        else:
            candidate, key = group.members[0].text, own
        used.add(key)
        chosen.append(candidate)
    counts = {**plan.counts(), "teacher_texts": written}
    sources = [
        {"bank": label, "version": version, "student_model": model}
        for label, version, model in zip(
            plan.labels, plan.versions, plan.student_models, strict=True
        )
    ]
    operations = [
        {"op": "add", "text": text, "result_id": format_id(n)}
        for n, text in enumerate(chosen, start=1)
    ]
    record = VersionRecord(
        1, 0, tuple(operations), {"source": "merge", "sources": sources, "counts": counts}
    )
    entries = [
        Experience(format_id(n), text, 0, 0, 1, 1, group.usage)
        for n, (text, group) in enumerate(zip(chosen, plan.groups, strict=True), start=1)
    ]
    limits = banks[0].limits
    longest = max((len(t) for t in chosen), default=0)
    if longest > limits.max_text_chars:
        limits = replace(limits, max_text_chars=longest)
    meta = BankMeta(
        student_model=plan.student_model,
        training_sample_ids=list(plan.sample_ids),
        training_question_hashes=list(plan.question_hashes),
        extra={
            "merge": {
                "sources": sources,
                "counts": counts,
                "threshold": plan.threshold,
                "similarity": plan.similarity,
            }
        },
    )
    data = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "version": 1 if entries else 0,
        "next_id": format_id(len(entries) + 1),
        "limits": limits.to_dict(),
        "meta": meta.to_dict(),
        "entries": [e.to_dict() for e in entries],
        "history": [record.to_dict()] if entries else [],
    }
    return ExperienceBank.from_dict(data)


def _shared(lists: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """Values that occur in more than one list, first-seen order."""
    seen: dict[str, int] = {}
    for values in lists:
        for v in set(values):
            seen[v] = seen.get(v, 0) + 1
    return tuple(v for v in _union(lists) if seen[v] > 1)


def _union(lists: Sequence[Sequence[str]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for values in lists for v in values))
