"""Keeping the bank within its budget.

When the bank has too many entries or its rendering too many tokens, the policy
plans, from the usage statistics, which entries to remove (lowest utility first),
which near-duplicates the teacher should merge and which long entries it should
rewrite.  Removals alone bring the bank under the budget (with some headroom, so
compression happens rarely and in batches); they need no model and go through the
same :meth:`ExperienceBank.apply` as any other edit.  The plan depends only on the
bank's content, never on the clock: the same bank gives the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ted_sglang.bank.experience import Experience, id_number
from ted_sglang.bank.render import Tokenize, approx_tokenize, render_line, render_text
from ted_sglang.bank.similarity import Similarity, prepare, token_jaccard
from ted_sglang.bank.usage import utility

if TYPE_CHECKING:
    from ted_sglang.bank.apply_report import ApplyReport
    from ted_sglang.bank.bank import ExperienceBank


@dataclass(frozen=True)
class CompressionBudget:
    """Bounds on the bank: entries and rendered tokens (``None``: unbounded).

    Compression starts when a bound is passed and removes entries until the bank is
    within ``target_ratio`` of each bound.
    """

    max_entries: int | None = 64
    max_tokens: int | None = 2048
    target_ratio: float = 0.9

    def __post_init__(self) -> None:
        for name in ("max_entries", "max_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None")
        if not 0 < self.target_ratio <= 1:
            raise ValueError("target_ratio must be in (0, 1]")

    def target(self, bound: int | None) -> int | None:
        return None if bound is None else max(int(bound * self.target_ratio), 1)


@dataclass(frozen=True)
class Removal:
    id: str
    utility: float
    reason: str


@dataclass(frozen=True)
class MergeGroup:
    ids: tuple[str, ...]
    similarity: float  # the lowest pairwise similarity in the group
    reason: str


@dataclass(frozen=True)
class Rewrite:
    id: str
    tokens: int
    reason: str


@dataclass(frozen=True)
class CompressionPlan:
    """What to do for bank ``version``: ``removals`` (applied without a model, see
    :meth:`removal_document`), ``merges`` and ``rewrites`` (for the teacher).
    ``*_after`` count the bank once the removals are applied."""

    version: int
    over_budget: bool
    entries_before: int
    tokens_before: int
    entries_after: int
    tokens_after: int
    removals: tuple[Removal, ...] = ()
    merges: tuple[MergeGroup, ...] = ()
    rewrites: tuple[Rewrite, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.removals or self.merges or self.rewrites)

    def removal_document(self) -> dict[str, Any]:
        """The removals as an operations document (deletes, in plan order)."""
        return {"operations": [{"op": "delete", "id": r.id} for r in self.removals]}

    def summary(self) -> str:
        state = "over budget" if self.over_budget else "within budget"
        lines = [
            f"version {self.version} {state}: {self.entries_before} entries / "
            f"{self.tokens_before} tokens -> {self.entries_after} / {self.tokens_after} "
            f"after {len(self.removals)} removals"
        ]
        lines += [f"remove {r.id}: {r.reason}" for r in self.removals]
        lines += [f"merge {'+'.join(m.ids)}: {m.reason}" for m in self.merges]
        lines += [f"rewrite {r.id}: {r.reason}" for r in self.rewrites]
        return "\n".join(lines)


@dataclass(frozen=True)
class CompressionPolicy:
    """How to keep a bank within ``budget``.

    ``tokenize`` counts rendered tokens (pass the student tokenizer's encode for exact
    counts; the default is a cheap estimate); ``similarity`` finds near-duplicates
    (pluggable, e.g. an embedding cosine); entries longer than ``long_entry_tokens``
    are proposed for a rewrite.
    """

    budget: CompressionBudget = field(default_factory=CompressionBudget)
    tokenize: Tokenize = approx_tokenize
    similarity: Similarity = token_jaccard
    merge_threshold: float = 0.6
    long_entry_tokens: int = 60
    cite_weight: float = 2.0
    outcome_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.merge_threshold <= 1:
            raise ValueError("merge_threshold must be in (0, 1]")
        if self.long_entry_tokens < 1:
            raise ValueError("long_entry_tokens must be positive")

    def utility(self, entry: Experience) -> float:
        return utility(entry.usage, self.cite_weight, self.outcome_weight)

    def count_tokens(self, entries: list[Experience]) -> int:
        return len(self.tokenize(render_text(entries)))

    def is_over_budget(self, bank: ExperienceBank) -> bool:
        return self._over(bank.entries, self.budget.max_entries, self.budget.max_tokens)

    def _over(
        self, entries: list[Experience], max_entries: int | None, max_tokens: int | None
    ) -> bool:
        if max_entries is not None and len(entries) > max_entries:
            return True
        return max_tokens is not None and self.count_tokens(entries) > max_tokens

    def plan(self, bank: ExperienceBank) -> CompressionPlan:
        """The plan for ``bank``; empty when the bank is within its budget."""
        entries = bank.entries
        tokens = self.count_tokens(entries)
        if not self.is_over_budget(bank):
            n = len(entries)
            return CompressionPlan(bank.version, False, n, tokens, n, tokens)
        removals = self._removals(entries)
        removed = {r.id for r in removals}
        kept = [e for e in entries if e.id not in removed]
        merges = self._merges(kept, bank.limits.max_merge_ids)
        grouped = {i for m in merges for i in m.ids}
        rewrites = self._rewrites([e for e in kept if e.id not in grouped])
        return CompressionPlan(
            bank.version,
            True,
            len(entries),
            tokens,
            len(kept),
            self.count_tokens(kept),
            tuple(removals),
            tuple(merges),
            tuple(rewrites),
        )

    def apply_removals(
        self,
        bank: ExperienceBank,
        plan: CompressionPlan,
        *,
        step: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> ApplyReport:
        """Apply the plan's removals as one version (history meta ``source="compression"``)."""
        if plan.version != bank.version:
            raise ValueError(
                f"the plan is for version {plan.version}, the bank is at {bank.version}"
            )
        limits = replace(
            bank.limits, max_operations=max(bank.limits.max_operations, len(plan.removals))
        )
        meta = {"source": "compression", **(meta or {})}
        return bank.apply(plan.removal_document(), step=step, meta=meta, limits=limits)

    def compress(
        self, bank: ExperienceBank, *, step: int | None = None, meta: dict[str, Any] | None = None
    ) -> tuple[CompressionPlan, ApplyReport | None]:
        """Plan, and apply the removals if the bank is over budget (the report is
        ``None`` when there was nothing to remove)."""
        plan = self.plan(bank)
        if not plan.removals:
            return plan, None
        return plan, self.apply_removals(bank, plan, step=step, meta=meta)

    # ---- planning --------------------------------------------------------------------

    def _removal_order(self, entries: list[Experience]) -> list[Experience]:
        """Lowest utility first; then least recently used; then oldest id."""

        def key(e: Experience) -> tuple[float, int, int]:
            last = e.usage.last_used_step
            return (self.utility(e), e.created_step if last is None else last, id_number(e.id))

        return sorted(entries, key=key)

    def _removals(self, entries: list[Experience]) -> list[Removal]:
        max_entries = self.budget.target(self.budget.max_entries)
        max_tokens = self.budget.target(self.budget.max_tokens)
        line_tokens = {e.id: len(self.tokenize(render_line(e))) for e in entries}
        count, total = len(entries), sum(line_tokens.values())
        removed: list[Removal] = []
        gone: set[str] = set()
        for entry in self._removal_order(entries):
            over_count = max_entries is not None and count > max_entries
            over_tokens = max_tokens is not None and total > max_tokens
            # Per-line counts estimate the rendering; the exact count decides at the end.
            if not (over_count or over_tokens):
                kept = [e for e in entries if e.id not in gone]
                if not self._over(kept, max_entries, max_tokens):
                    break
            score = self.utility(entry)
            removed.append(Removal(entry.id, score, _removal_reason(score, entry)))
            gone.add(entry.id)
            count, total = count - 1, total - line_tokens[entry.id]
        return removed

    def _merges(self, entries: list[Experience], max_group: int) -> list[MergeGroup]:
        prepare(self.similarity, [e.text for e in entries])
        sims: dict[tuple[str, str], float] = {}
        for i, a in enumerate(entries):
            for b in entries[i + 1 :]:
                s = self.similarity(a.text, b.text)
                if s >= self.merge_threshold:
                    sims[_pair(a.id, b.id)] = s
        group_of: dict[str, list[str]] = {}
        groups: list[list[str]] = []
        for a, b in sorted(sims, key=lambda p: (-sims[p], *map(id_number, p))):
            ga, gb = group_of.get(a), group_of.get(b)
            if ga is None and gb is None:
                group = [a, b]
                groups.append(group)
                group_of[a] = group_of[b] = group
                continue
            if ga is not None and gb is not None:
                continue
            group, new = (ga, b) if ga is not None else (gb, a)
            assert group is not None
            if len(group) < max_group and all(_pair(new, m) in sims for m in group):
                group.append(new)
                group_of[new] = group
        out = []
        for group in groups:
            ids = tuple(sorted(group, key=id_number))
            low = min(sims[_pair(a, b)] for i, a in enumerate(ids) for b in ids[i + 1 :])
            out.append(MergeGroup(ids, low, f"near-duplicates (similarity >= {low:.2f})"))
        return sorted(out, key=lambda m: id_number(m.ids[0]))

    def _rewrites(self, entries: list[Experience]) -> list[Rewrite]:
        out = []
        for e in entries:
            n = len(self.tokenize(e.text))
            if n > self.long_entry_tokens:
                out.append(Rewrite(e.id, n, f"{n} tokens, longer than {self.long_entry_tokens}"))
        return sorted(out, key=lambda r: (-r.tokens, id_number(r.id)))


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if id_number(a) < id_number(b) else (b, a)


def _removal_reason(score: float, e: Experience) -> str:
    u = e.usage
    return (
        f"utility {score:.2f} (helpful {u.helpful}, harmful {u.harmful}, "
        f"correct {u.correct}, wrong {u.wrong}, shown {u.shown})"
    )
