"""Reconciling a batch's proposals: each rule on hand-written proposals, then applied."""

from __future__ import annotations

import json

import pytest

from ted_sglang.bank import ExperienceBank, OperationLimits, sequence_ratio
from ted_sglang.loop.reconcile import Proposal, Source, reconcile

TEXTS = [
    "Count the shapes of each colour separately before adding them up.",
    "Read the axis scale before estimating the height of a bar.",
    "Compare widths in pixels to decide which shape is the largest.",
    "Write the final answer as a single number without units.",
]
LIMITS = OperationLimits(max_operations=4, max_text_chars=200)


@pytest.fixture
def bank() -> ExperienceBank:
    bank = ExperienceBank(limits=LIMITS)
    bank.apply({"operations": [{"op": "add", "text": t} for t in TEXTS]})
    return bank


def run(bank: ExperienceBank, *documents: object, threshold: float = 0.9, merged=None):
    """Reconcile one proposal per document (samples s1, s2, ...) against ``bank``."""
    proposals = [Proposal(f"s{n}", d) for n, d in enumerate(documents, start=1)]
    plan = reconcile(
        proposals, bank.render_entries(), limits=LIMITS, similarity=sequence_ratio,
        threshold=threshold, version=bank.version,
    )  # fmt: skip
    return plan, plan.finish(merged or {})


def ops(*items: dict) -> dict:
    return {"operations": list(items)}


def fates(reconciled) -> dict[str, tuple[str, str]]:
    return {str(d.source): (d.fate, d.code) for d in reconciled.decisions}


def test_identical_and_near_identical_adds_become_one(bank: ExperienceBank) -> None:
    tip = "Check every label of the chart before answering."
    close = "Check every label of the chart before you answer."
    other = "Units must match before two quantities are added."
    _, out = run(bank, ops({"op": "add", "text": tip}), ops({"op": "add", "text": tip.upper()}),
                 ops({"op": "add", "text": close}, {"op": "add", "text": other}))  # fmt: skip
    assert out.document == ops({"op": "add", "text": tip}, {"op": "add", "text": other})
    assert fates(out) == {
        "s1#0": ("kept", "kept"),
        "s2#0": ("merged", "same_add"),
        "s3#0": ("merged", "same_add"),
        "s3#1": ("kept", "kept"),
    }
    near = next(d for d in out.decisions if str(d.source) == "s3#0")
    assert near.into == Source("s1", 0) and 0.9 <= near.similarity < 1
    counts = out.counts()
    assert (counts["proposals"], counts["operations"], counts["kept"]) == (3, 4, 2)
    assert counts["merged"] == 2 and counts["by_code"] == {"same_add": 2}


def test_adds_that_repeat_the_bank_are_dropped_unless_the_entry_goes(bank) -> None:
    repeat = TEXTS[0].replace("adding them up", "adding them")  # near-duplicate of E1
    _, out = run(bank, ops({"op": "add", "text": repeat}))
    assert out.document == ops() and fates(out) == {"s1#0": ("dropped", "duplicate_of_entry")}
    assert "near-duplicate of E1" in out.decisions[0].reason
    # The same add while another sample deletes E1: nothing repeats it any more.
    _, out = run(bank, ops({"op": "add", "text": repeat}), ops({"op": "delete", "id": "E1"}))
    assert fates(out) == {"s1#0": ("kept", "kept"), "s2#0": ("kept", "kept")}
    # A lower threshold catches looser repeats; exact repeats are caught at any threshold.
    loose = "Count the shapes of every colour on their own, then add them up."
    assert run(bank, ops({"op": "add", "text": loose}), threshold=0.6)[1].document == ops()
    assert run(bank, ops({"op": "add", "text": loose}), threshold=1.0)[1].document != ops()


def test_delete_wins_over_update_and_deletes_become_one(bank: ExperienceBank) -> None:
    new_text = "Read the axis scale and the gridlines before estimating a bar."
    _, out = run(bank, ops({"op": "update", "id": "E2", "text": new_text}),
                 ops({"op": "delete", "id": "E2"}), ops({"op": "delete", "id": "E2"}))  # fmt: skip
    assert out.document == ops({"op": "delete", "id": "E2"})
    assert fates(out) == {
        "s1#0": ("dropped", "deleted"),
        "s2#0": ("kept", "kept"),
        "s3#0": ("merged", "same_delete"),
    }
    assert out.decisions[0].into == Source("s2", 0)


def test_updates_of_one_entry_same_text_merge_different_texts_conflict(bank) -> None:
    a = "Read the axis scale and the gridlines before estimating a bar."
    b = "Read the axis scale and the gridlines before estimating bars."
    c = "Estimate a bar from the nearest labelled tick, not from the bar's colour."
    plan, out = run(bank, ops({"op": "update", "id": "E2", "text": a}),
                    ops({"op": "update", "id": "E2", "text": b}),
                    ops({"op": "update", "id": "E2", "text": c}))  # fmt: skip
    (conflict,) = plan.conflicts
    assert conflict.id == "E2" and conflict.current_text == TEXTS[1]
    assert conflict.texts == (a, c) and conflict.sources == (Source("s1", 0), Source("s3", 0))
    # Without a teacher: the first update is kept and the conflict reported.
    assert out.document == ops({"op": "update", "id": "E2", "text": a})
    assert fates(out) == {
        "s1#0": ("kept", "kept"),
        "s2#0": ("merged", "same_update"),
        "s3#0": ("dropped", "update_conflict"),
    }
    assert "no teacher" in out.decisions[2].reason
    # With the teacher's merged text: one update carrying it.
    merged = "Read the scale and gridlines; estimate a bar from the nearest labelled tick."
    out = plan.finish({"E2": merged})
    assert out.document == ops({"op": "update", "id": "E2", "text": merged})
    assert fates(out)["s3#0"] == ("merged", "teacher_merged")
    assert out.counts()["teacher_merged"] == 1
    out = plan.finish({}, {"E2": "the teacher failed (HTTP 500)"})
    assert "HTTP 500" in out.decisions[2].reason


def test_merges_lose_to_deletes_win_over_updates_and_the_first_merge_wins(bank) -> None:
    merge_13 = {"op": "merge", "ids": ["E1", "E3"], "text": "Count and measure shapes carefully."}
    merge_34 = {"op": "merge", "ids": ["E3", "E4"], "text": "Measure shapes; answer with numbers."}
    same_13 = {"op": "merge", "ids": ["E3", "E1"], "text": "Count and measure shapes carefully!"}
    update_1 = {"op": "update", "id": "E1", "text": "Count each colour on its own first."}
    _, out = run(bank, ops(merge_13), ops(merge_34), ops(same_13), ops(update_1))
    assert out.document == ops(merge_13)
    assert fates(out) == {
        "s1#0": ("kept", "kept"),
        "s2#0": ("dropped", "merge_overlap"),
        "s3#0": ("merged", "same_merge"),
        "s4#0": ("dropped", "merged_away"),
    }
    _, out = run(bank, ops(merge_13), ops({"op": "delete", "id": "E3"}), ops(update_1))
    assert out.document == ops({"op": "delete", "id": "E3"}, update_1)
    assert fates(out)["s1#0"] == ("dropped", "deleted")


def test_adds_that_repeat_a_text_the_batch_writes_are_dropped(bank) -> None:
    merge = {"op": "merge", "ids": ["E1", "E3"], "text": "Count and measure every shape carefully."}
    _, out = run(
        bank, ops(merge), ops({"op": "add", "text": "Count and measure every shape carefully!"})
    )
    assert fates(out) == {"s1#0": ("kept", "kept"), "s2#0": ("dropped", "duplicate_of_entry")}
    assert "the new text of E1+E3" in out.decisions[1].reason


def test_invalid_proposals_and_operations_are_dropped_with_their_reason(bank) -> None:
    _, out = run(
        bank,
        "not json",
        ops({"op": "delete", "id": "E9"}, {"op": "none"}, {"op": "add", "text": "short"}),
        {"operations": [{"op": "add"}]},
    )
    assert out.document == ops()
    assert fates(out) == {
        "s1": ("dropped", "invalid_json"),
        "s2#0": ("dropped", "unknown_id"),
        "s2#2": ("dropped", "text_too_short"),
        "s3#0": ("dropped", "missing_field"),
    }
    assert out.counts()["operations"] == 3  # the unreadable document is not an operation
    with pytest.raises(ValueError, match="once per batch"):
        reconcile([Proposal("a", ops()), Proposal("a", ops())], [], limits=LIMITS,
                  similarity=sequence_ratio)  # fmt: skip


def test_the_document_applies_as_one_version_in_sample_order(bank: ExperienceBank) -> None:
    documents = [
        ops({"op": "add", "text": "Look for a hidden shape behind the others."},
            {"op": "update", "id": "E4", "text": "Give the final answer as a bare number."}),
        ops({"op": "delete", "id": "E2"}, {"op": "add", "text": "Say the unit out loud first."},
            {"op": "add", "text": "Look for a hidden shape behind the others!"}),
        ops({"op": "add", "text": "Prefer the simplest reading of the question."},
            {"op": "update", "id": "E2", "text": "Read the scale carefully before any bar."}),
    ]  # fmt: skip
    _, out = run(bank, *documents)
    assert len(out.document["operations"]) == 5 > LIMITS.max_operations - 1
    before = bank.version
    limits = OperationLimits(max_operations=len(out.document["operations"]), max_text_chars=200)
    report = bank.apply(out.document, meta={"sample_ids": ["s1", "s2", "s3"]}, limits=limits)
    assert report.ok and bank.version == before + 1
    assert report.new_ids == ["E5", "E6", "E7"]  # s1's add, s2's add, s3's add
    assert [str(s) for s in out.sources] == ["s1#0", "s1#1", "s2#0", "s2#1", "s3#0"]
    assert "E2" not in bank and bank["E4"].text == "Give the final answer as a bare number."
    assert bank.history[-1].meta == {"sample_ids": ["s1", "s2", "s3"]}
    record = out.to_record()
    assert json.loads(json.dumps(record)) == record
    assert [d["fate"] for d in record["decisions"]].count("kept") == 5


def test_adds_that_repeat_an_entry_written_since_the_batch_started_are_dropped(bank) -> None:
    # Another batch, committed while this one ran, added the tip (E5): this batch's
    # samples saw the bank without it, so only ``newer`` can catch the repeat.
    seen = bank.render_entries()
    tip = "Check every label of the chart before answering."
    bank.apply({"operations": [{"op": "add", "text": tip}]})
    newer = [e for e in bank.render_entries() if e not in seen]
    assert newer == [("E5", tip)]
    proposals = [Proposal("s1", ops({"op": "add", "text": tip.replace("answering", "you answer")}))]
    kwargs = {"limits": LIMITS, "similarity": sequence_ratio, "threshold": 0.9}
    out = reconcile(proposals, seen, **kwargs, newer=newer).finish()
    assert out.document == ops() and fates(out) == {"s1#0": ("dropped", "duplicate_of_entry")}
    assert "E5 (written since" in out.decisions[0].reason
    assert reconcile(proposals, seen, **kwargs).finish().document != ops()
