"""The leakage guard: a bank's training samples and model tag against an evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ted_sglang.bank import ExperienceBank
from ted_sglang.cli import main
from ted_sglang.data import load_dataset, write_sample_set
from ted_sglang.loop.leakage import (
    find_overlap,
    model_mismatch,
    normalize_model_name,
    question_hash,
)
from ted_sglang.runtime import connect

FAST = ["--rollouts", "2", "--student-max-tokens", "8", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The sample set, plus a test item that repeats a training question (same text up
    to case and spacing, same image) under a new id."""
    folder = tmp_path_factory.mktemp("samples")
    path = write_sample_set(folder, count=12, seed=1)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    train = next(r for r in rows if r["split"] == "train")
    copy = {**train, "id": "copy-of-" + train["id"], "split": "test"}
    copy["question"] = "  " + train["question"].upper().replace(" ", "  ")
    rows.insert(0, copy)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def trained_bank(data: Path, tmp_path: Path, model: str | None) -> tuple[Path, str]:
    """A bank distilled (by its meta) from the first training sample; returns its file
    and that sample's id."""
    sample = load_dataset(data, split="train").samples[0]
    bank = ExperienceBank(student_model=model)
    bank.apply({"operations": [{"op": "add", "text": "Count each colour separately."}]})
    bank.meta.add_training_samples([sample.id], [question_hash(sample)])
    path = tmp_path / "bank.json"
    bank.save(path)
    return path, sample.id


def test_question_hash_and_overlap(data: Path) -> None:
    train = load_dataset(data, split="train").samples
    test = load_dataset(data, split="test").samples
    copy = next(s for s in test if s.id.startswith("copy-of-"))
    original = next(s for s in train if s.id == copy.id.removeprefix("copy-of-"))
    assert question_hash(copy) == question_hash(original)
    assert len({question_hash(s) for s in train}) == len(train)
    bank = ExperienceBank()
    bank.meta.add_training_samples([original.id], [question_hash(original)])
    overlap = find_overlap([*test, original], bank.meta)
    assert overlap.by_id == (original.id,) and overlap.by_question == (copy.id,)
    assert "by identical question under another id" in overlap.describe()
    assert not find_overlap(test[1:], bank.meta)


def test_eval_refuses_overlap_unless_allowed(data: Path, tmp_path: Path, engine_url, capsys):
    bank_path, trained_id = trained_bank(data, tmp_path, connect(engine_url).model_path)
    args = ["eval", "--data", str(data), "--student", engine_url, "--limit", "3", *FAST]
    assert main([*args, "--bank", str(bank_path)]) == 2
    err = capsys.readouterr().err
    assert "were used to distill this bank" in err and f"copy-of-{trained_id}" in err
    assert "--allow-overlap" in err
    # --split all holds the training sample itself too: refused by id and by question.
    assert main([*args, "--split", "all", "--limit", "20", "--bank", str(bank_path)]) == 2
    assert "by id" in capsys.readouterr().err
    out = tmp_path / "report.json"
    assert main([*args, "--bank", str(bank_path), "--allow-overlap", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "scoring them anyway" in captured.err and "distilled for" not in captured.err
    report = json.loads(out.read_text())
    assert report["dataset"]["training_overlap"] == {
        "by_id": [],
        "by_question": [f"copy-of-{trained_id}"],
        "handling": "scored",
    }
    assert report["conditions"]["bank"]["num_samples"] == 3
    conflicting = [*args, "--bank", str(bank_path), "--allow-overlap", "--exclude-trained"]
    assert main(conflicting) == 2
    assert "contradict" in capsys.readouterr().err


def test_eval_warns_when_the_bank_was_distilled_for_another_model(
    data: Path, tmp_path: Path, engine_url: str, capsys
) -> None:
    bank_path, _ = trained_bank(data, tmp_path, "HuggingFaceTB/Some-Other-Model")
    args = ["eval", "--data", str(data), "--student", engine_url, "--limit", "2", *FAST]
    assert main([*args, "--bank", str(bank_path), "--exclude-trained"]) == 0
    err = capsys.readouterr().err
    assert "the bank was distilled for HuggingFaceTB/Some-Other-Model" in err
    assert "leaving them out" in err


def test_model_names_compare_by_their_last_part() -> None:
    assert normalize_model_name("HuggingFaceTB/SmolLM2-135M-Instruct/") == "smollm2-135m-instruct"
    assert normalize_model_name("/models/smollm2-135m-instruct.gguf") == "smollm2-135m-instruct"
    assert model_mismatch("org/SmolLM2-135M-Instruct", "/m/smollm2-135m-instruct") is None
    assert "may not fit" in (model_mismatch("org/A", "org/B") or "")
    assert "does not say" in (model_mismatch(None, "org/B") or "")
