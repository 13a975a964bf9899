"""``ted-sglang bank merge``: banks distilled separately, with overlapping entries, become
one bank with a conflict report (and, with a teacher, merged texts)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from distill_checks import validate_document

from ted_sglang.bank import ExperienceBank, OperationLimits, build_merged_bank, plan_merge
from ted_sglang.bank.similarity import sequence_ratio
from ted_sglang.cli import main
from ted_sglang.programs import single_operation_schema

SHARED = "Count the shapes of each colour separately before adding them up."
NEAR_A = "Read the axis scale before estimating the height of a bar."
NEAR_B = "Read the axis scale before you estimate the height of each bar."
ONLY_A = "Write the final answer as a single number without units."
ONLY_B = "Compare widths in pixels to decide which shape is the largest."
LIMITS = OperationLimits(max_operations=4, max_text_chars=120)


def make_bank(texts: list[str], model: str, samples: list[str], helpful: int) -> ExperienceBank:
    bank = ExperienceBank(limits=LIMITS, student_model=model)
    bank.apply({"operations": [{"op": "add", "text": t} for t in texts]}, step=1)
    for _ in range(helpful):
        bank.record_cited(helpful=bank.ids, step=2)
    bank.meta.add_training_samples(samples, [f"hash-{s}" for s in samples])
    return bank


@pytest.fixture
def banks(tmp_path: Path) -> tuple[Path, Path]:
    a = make_bank([SHARED, NEAR_A, ONLY_A], "org/Model", ["s1", "s2"], helpful=1)
    b = make_bank([ONLY_B, SHARED.upper(), NEAR_B], "org/Model", ["s2", "s3"], helpful=2)
    paths = tmp_path / "a.json", tmp_path / "b.json"
    a.save(paths[0])
    b.save(paths[1])
    return paths


def test_plan_groups_exact_and_near_duplicates(banks: tuple[Path, Path]) -> None:
    a, b = (ExperienceBank.load(p) for p in banks)
    plan = plan_merge([a, b], ["a", "b"], similarity=sequence_ratio, threshold=0.85)
    assert plan.counts() == {
        "entries_in": 6,
        "entries_out": 4,
        "exact_duplicates": 1,
        "near_duplicate_groups": 1,
        "near_duplicates": 1,
    }
    (near,) = plan.near_duplicate_groups
    assert plan.groups[near].texts == [NEAR_A, NEAR_B]
    kinds = [c["kind"] for c in plan.conflicts()]
    assert kinds == ["near_duplicate", "training_samples", "training_questions"]
    merged = build_merged_bank(plan, [a, b], {near: "Read the axis scale before any bar."})
    assert [e.text for e in merged] == [
        SHARED,
        "Read the axis scale before any bar.",
        ONLY_A,
        ONLY_B,
    ]
    assert merged["E1"].usage.helpful == 1 + 2  # usage of a group is summed
    assert merged.meta.training_sample_ids == ["s1", "s2", "s3"]
    assert merged.meta.student_model == "org/Model" and merged.version == 1
    # A stricter threshold keeps the near-duplicates apart; exact ones still merge.
    strict = plan_merge([a, b], similarity=sequence_ratio, threshold=0.99)
    assert strict.counts()["entries_out"] == 5 and not strict.near_duplicate_groups
    with pytest.raises(ValueError, match="at least two banks"):
        plan_merge([a], similarity=sequence_ratio)


def test_bank_merge_cli_reports_conflicts(banks: tuple[Path, Path], tmp_path: Path, capsys):
    other = make_bank([ONLY_B], "org/Other", ["s9"], helpful=0)
    other_path = tmp_path / "other.json"
    other.save(other_path)
    out = tmp_path / "merged.json"
    args = ["bank", "merge", *map(str, banks), str(other_path), "-o", str(out)]
    assert main([*args, "--similarity", "text", "--threshold", "0.85", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["entries_in"] == 7 and report["counts"]["entries_out"] == 4
    assert report["counts"]["teacher_texts"] == 0
    kinds = {c["kind"]: c for c in report["conflicts"]}
    assert set(kinds) == {
        "near_duplicate",
        "student_model",
        "training_samples",
        "training_questions",
    }
    assert kinds["training_samples"]["sample_ids"] == ["s2"]
    assert [e["text"] for e in kinds["near_duplicate"]["entries"]] == [NEAR_A, NEAR_B]
    assert report["student_model"] is None  # the banks differ: the result is untagged
    merged = ExperienceBank.load(out)
    assert len(merged) == 4 and NEAR_A in [e.text for e in merged]  # first text kept
    assert main(["bank", "validate", str(out)]) == 0
    # The output is not overwritten without --force; the readable report names conflicts.
    assert main([*args, "--similarity", "text"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--similarity", "text", "--threshold", "0.85", "--force"]) == 0
    printed = capsys.readouterr().out
    assert "near-duplicates" in printed and "different student models" in printed
    assert "1 training sample id(s) seen by more than one bank: s2" in printed


def test_bank_merge_of_a_file_whose_name_is_not_utf8(banks: tuple[Path, Path], capsys):
    """The names are recorded in the merged bank, which holds valid Unicode only."""
    odd = banks[1].with_name(os.fsdecode(b"caf\xe9.json"))
    banks[1].rename(odd)
    out = banks[0].with_name("merged.json")
    args = ["bank", "merge", str(banks[0]), str(odd), "-o", str(out), "--similarity", "text"]
    assert main(args) == 0, capsys.readouterr().err
    sources = ExperienceBank.load(out).history[0].meta["sources"]
    assert [s["bank"] for s in sources] == [str(banks[0]), str(odd.with_name("caf\ufffd.json"))]


def test_bank_merge_with_a_teacher(banks: tuple[Path, Path], tmp_path: Path, engine_url, capsys):
    out = tmp_path / "merged.json"
    args = ["bank", "merge", *map(str, banks), "-o", str(out), "--teacher", engine_url]
    assert main([*args, "--similarity", "text", "--threshold", "0.85", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    merged = ExperienceBank.load(out)
    assert len(merged) == 4 and main(["bank", "validate", str(out)]) == 0
    texts = [e.text for e in merged]
    assert texts[0] == SHARED and texts[2:] == [ONLY_A, ONLY_B]
    if report["counts"]["teacher_texts"]:  # the tiny model's text, under the grammar
        assert texts[1] not in (NEAR_A, NEAR_B)
        document = {"operations": [{"op": "merge", "ids": ["E1", "E2"], "text": texts[1]}]}
        validate_document(document, single_operation_schema("merge", ["E1", "E2"], LIMITS))
    else:
        assert report["teacher_notes"] and texts[1] == NEAR_A
    assert merged.history[0].meta["source"] == "merge"
