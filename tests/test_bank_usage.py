"""Usage statistics: explicit recording, late feedback, persistence, merge sums."""

from __future__ import annotations

import pytest

from ted_sglang.bank import ExperienceBank, Usage, utility

TEXTS = [
    "Check the units before answering.",
    "Draw a diagram of the figure first.",
    "Count the objects twice, from different corners.",
]


def make_bank() -> ExperienceBank:
    bank = ExperienceBank()
    bank.apply({"operations": [{"op": "add", "text": t} for t in TEXTS]}, step=1)
    return bank


def test_recording_counts_existing_ids_once_per_call():
    bank = make_bank()
    assert bank.record_shown(["E1", "E2", "E2", "E9"], step=4) == 2
    assert bank["E1"].usage == Usage(shown=1, last_used_step=4)
    assert bank["E2"].usage.shown == 1 and bank["E3"].usage.shown == 0
    assert bank.record_outcome(["E1", "E3"], correct=True, step=5) == 2
    assert bank.record_outcome(["E1"], correct=False, step=6) == 1
    assert bank.record_cited(helpful=["E1", "E7"], harmful=["E2", "E1"], step=6) == 3
    u = bank["E1"].usage
    assert (u.shown, u.correct, u.wrong, u.helpful, u.harmful) == (1, 1, 1, 1, 1)
    assert u.last_used_step == 6


def test_late_feedback_never_moves_last_used_step_back():
    bank = make_bank()
    bank.record_shown(["E1"], step=9)
    bank.record_outcome(["E1"], correct=True, step=3)
    assert bank["E1"].usage.last_used_step == 9


def test_usage_is_not_a_version_and_does_not_change_the_rendering(tmp_path):
    bank = make_bank()
    render, version = bank.render(), bank.version
    bank.record_shown(bank.ids, step=2)
    bank.record_cited(helpful=["E2"], step=2)
    assert bank.render() == render and bank.version == version
    path = tmp_path / "bank.json"
    bank.save(path)
    assert ExperienceBank.load(path)["E2"].usage == bank["E2"].usage


def test_ids_of_deleted_or_merged_entries_are_skipped():
    bank = make_bank()
    bank.record_cited(helpful=["E1", "E2"], step=2)
    bank.record_outcome(["E1"], correct=False, step=2)
    bank.apply({"operations": [{"op": "merge", "ids": ["E1", "E2"], "text": "Units; diagram."}]})
    assert bank["E4"].usage == Usage(helpful=2, wrong=1, last_used_step=2)  # summed
    assert bank.record_shown(["E1", "E2", "E4"], step=3) == 1


def test_update_keeps_usage():
    bank = make_bank()
    bank.record_cited(helpful=["E3"], step=2)
    bank.apply({"operations": [{"op": "update", "id": "E3", "text": "Count objects twice."}]})
    assert bank["E3"].usage.helpful == 1 and bank["E3"].updated_version == 2


def test_recording_rejects_caller_mistakes():
    bank = make_bank()
    with pytest.raises(ValueError, match="not the string"):
        bank.record_shown("E1", step=1)
    with pytest.raises(ValueError, match="step"):
        bank.record_shown(["E1"], step=-2)
    with pytest.raises(ValueError, match="True or False"):
        bank.record_outcome(["E1"], correct=1, step=1)


def test_utility_is_laplace_smoothed():
    assert utility(Usage()) == 0.5
    assert utility(Usage(helpful=3)) > utility(Usage(helpful=1)) > 0.5
    assert utility(Usage(harmful=2)) < utility(Usage(harmful=1)) < 0.5
    assert utility(Usage(correct=5)) > 0.5 > utility(Usage(wrong=5))
    # Citations weigh more than outcomes by default.
    assert utility(Usage(helpful=1, wrong=1)) > 0.5
    assert 0 < utility(Usage(harmful=100, wrong=100)) < utility(Usage(harmful=1))
    assert Usage(helpful=3, harmful=1).importance == 2
