"""Compression: deterministic plans that bring the bank under its budget."""

from __future__ import annotations

import pytest

from ted_sglang.bank import (
    CompressionBudget,
    CompressionPolicy,
    ExperienceBank,
    OperationLimits,
    approx_tokenize,
)
from ted_sglang.bank.render import render_text

TOPICS = ["units", "diagram", "symmetry", "parity", "angles", "areas", "colours", "counting"]


def make_bank(n: int, words: int = 6) -> ExperienceBank:
    """``n`` distinct entries of about ``words`` words each."""
    bank = ExperienceBank(limits=OperationLimits(max_operations=500, max_text_chars=2000))
    texts = [
        f"Tip {i}: when {TOPICS[i % len(TOPICS)]} matter, "
        + " ".join(f"w{i}x{j}" for j in range(words))
        for i in range(n)
    ]
    report = bank.apply({"operations": [{"op": "add", "text": t} for t in texts]}, step=1)
    assert report.ok
    return bank


def test_within_budget_gives_an_empty_plan():
    bank = make_bank(5)
    plan = CompressionPolicy(CompressionBudget(max_entries=10, max_tokens=None)).plan(bank)
    assert not plan.over_budget and plan.is_empty and plan.removal_document() == {"operations": []}
    assert plan.entries_before == plan.entries_after == 5


def test_entry_budget_removes_lowest_utility_first():
    bank = make_bank(30)
    bank.record_cited(harmful=["E3", "E7"], step=2)
    bank.record_cited(helpful=["E1", "E2"], step=2)
    policy = CompressionPolicy(CompressionBudget(max_entries=20, max_tokens=None, target_ratio=0.9))
    plan = policy.plan(bank)
    assert plan.over_budget and plan.entries_before == 30 and plan.entries_after == 18
    removed = [r.id for r in plan.removals]
    assert removed[:2] == ["E3", "E7"] and "E1" not in removed and "E2" not in removed
    assert all(r.reason for r in plan.removals)
    # Ties (no evidence, same step) go by id: the oldest entries first.
    assert removed[2:] == [f"E{i}" for i in range(4, 31) if i != 7][:10]

    version = bank.version
    report = policy.apply_removals(bank, plan, step=9)
    assert report.ok and len(report.applied) == 12 and bank.version == version + 1
    assert len(bank) == 18 and not policy.is_over_budget(bank)
    assert bank.history[-1].meta == {"source": "compression"}
    assert policy.plan(bank).is_empty
    with pytest.raises(ValueError, match="plan is for version"):
        policy.apply_removals(bank, plan)


def test_plan_is_deterministic():
    policy = CompressionPolicy(CompressionBudget(max_entries=12, max_tokens=200))
    a, b = make_bank(25), make_bank(25)
    for bank in (a, b):
        bank.record_shown(bank.ids, step=2)
        bank.record_outcome(["E5", "E6"], correct=False, step=2)
    assert policy.plan(a) == policy.plan(b) == policy.plan(a)
    assert policy.plan(ExperienceBank.from_dict(a.to_dict())) == policy.plan(a)


@pytest.mark.parametrize(
    "tokenize", [approx_tokenize, lambda s: list(s.encode("utf-8"))], ids=["approx", "bytes"]
)
def test_token_budget_is_enforced(tokenize):
    bank = make_bank(40, words=12)
    policy = CompressionPolicy(CompressionBudget(max_entries=None, max_tokens=400), tokenize)
    assert len(tokenize(bank.render())) > 400 and policy.is_over_budget(bank)
    entries = bank.entries
    plan, report = policy.compress(bank, step=3)
    assert report is not None and report.changed
    tokens = len(tokenize(bank.render()))
    assert tokens <= 400 * 0.9 and tokens == plan.tokens_after
    # No more than needed: without the last removal the bank would still be over target.
    all_but_last = {r.id for r in plan.removals[:-1]}
    assert len(tokenize(render_text(e for e in entries if e.id not in all_but_last))) > 400 * 0.9
    assert policy.compress(bank)[1] is None


def test_a_single_huge_entry_is_removed_too():
    bank = make_bank(3, words=200)
    policy = CompressionPolicy(CompressionBudget(max_entries=None, max_tokens=50))
    policy.compress(bank)
    assert len(approx_tokenize(bank.render())) <= 50


def test_near_duplicates_are_grouped_for_merging():
    bank = ExperienceBank(limits=OperationLimits(max_merge_ids=3))
    texts = [
        "Check the units of every quantity before answering.",
        "Before answering, check the units of every quantity.",
        "Check the units of each quantity before you answer.",
        "Check units of every quantity before answering, always.",
        "Draw a diagram of the figure first.",
        "Draw the figure as a diagram first.",
        "Count the objects twice.",
    ]
    bank.apply({"operations": [{"op": "add", "text": t} for t in texts]})
    bank.record_cited(harmful=["E7"], step=2)
    budget = CompressionBudget(max_entries=6, max_tokens=None, target_ratio=1.0)
    policy = CompressionPolicy(budget, merge_threshold=0.5)
    plan = policy.plan(bank)
    removed = {r.id for r in plan.removals}
    assert removed == {"E7"}
    groups = [m.ids for m in plan.merges]
    assert all(len(g) <= 3 for g in groups) and not removed & {i for g in groups for i in g}
    assert any({"E5", "E6"} <= set(g) for g in groups)
    assert ("E1", "E2", "E4") in groups  # complete linkage, capped at max_merge_ids
    assert all(m.similarity >= 0.5 for m in plan.merges)

    # The teacher carries a merge out through the same operations.
    group = plan.merges[0]
    report = bank.apply(
        {"operations": [{"op": "merge", "ids": list(group.ids), "text": "Merged advice here."}]}
    )
    assert report.ok


def test_similarity_is_pluggable_and_long_entries_are_proposed_for_rewrite():
    bank = make_bank(10)
    bank.apply({"operations": [{"op": "add", "text": "Long advice " + "very " * 80 + "long."}]})
    same_topic = lambda a, b: float(a.split()[3] == b.split()[3])  # noqa: E731
    policy = CompressionPolicy(
        CompressionBudget(max_entries=10, max_tokens=None, target_ratio=1.0),
        similarity=same_topic,
        long_entry_tokens=40,
    )
    plan = policy.plan(bank)
    assert [r.id for r in plan.removals] == ["E1"]
    assert [m.ids for m in plan.merges] == [("E2", "E10")]
    assert [r.id for r in plan.rewrites] == ["E11"] and plan.rewrites[0].tokens > 40
    assert "rewrite E11" in plan.summary()


def test_budget_validation():
    with pytest.raises(ValueError):
        CompressionBudget(max_entries=0)
    with pytest.raises(ValueError):
        CompressionBudget(target_ratio=0)
    with pytest.raises(ValueError):
        CompressionPolicy(merge_threshold=0)
