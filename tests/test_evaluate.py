"""``ted-sglang eval`` (with and without a bank) and ``ted-sglang demo`` on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ted_sglang.bank import ExperienceBank
from ted_sglang.cli import main
from ted_sglang.data import load_dataset, write_sample_set
from ted_sglang.loop.evaluate import ConditionReport, SampleScore, format_table

FAST = ["--rollouts", "2", "--student-max-tokens", "12", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("samples")
    write_sample_set(out, count=20, seed=2)
    return out


@pytest.fixture
def bank_file(tmp_path: Path) -> Path:
    bank = ExperienceBank(student_model="tiny")
    bank.apply({"operations": [{"op": "add", "text": "Count each colour separately."}]})
    path = tmp_path / "bank.json"
    bank.save(path)
    return path


def test_eval_reports_with_and_without_the_bank(
    data_dir: Path, bank_file: Path, tmp_path: Path, engine_url: str, capsys
) -> None:
    out = tmp_path / "report.json"
    args = ["eval", "--data", str(data_dir), "--student", engine_url, "--limit", "5"]
    assert main([*args, *FAST, "--bank", str(bank_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no_bank pass@1" in printed and "bank pass@1" in printed and "mean@2" in printed
    report = json.loads(out.read_text())
    assert set(report["conditions"]) == {"no_bank", "bank"}
    test_ids = [s.id for s in load_dataset(data_dir, split="test").samples[:5]]
    categories = {s.category for s in load_dataset(data_dir, split="test").samples[:5]}
    for name, condition in report["conditions"].items():
        assert condition["num_samples"] == 5 and not condition["failed"]
        assert [s["id"] for s in condition["samples"]] == test_ids
        assert all(s["rollouts"] == 2 for s in condition["samples"])
        assert set(condition["by_category"]) == categories
        assert sum(c["num_samples"] for c in condition["by_category"].values()) == 5
        assert 0 <= condition["pass_at_1"] <= 1 and 0 <= condition["mean_at_n"] <= 1
        assert condition["tokens"]["requests"] == 10
        assert condition["bank_entries"] == (1 if name == "bank" else 0)
    # The bank's rendering sits in the prompt: more prompt tokens with it than without.
    with_bank, without = report["conditions"]["bank"], report["conditions"]["no_bank"]
    assert with_bank["tokens"]["prompt"] > without["tokens"]["prompt"]
    assert set(report["delta"]) == {"pass_at_1", "mean_at_n"}
    assert report["bank_model"] == "tiny"


def test_eval_without_a_bank_and_greedy(data_dir: Path, tmp_path: Path, engine_url: str) -> None:
    out = tmp_path / "report.json"
    args = ["eval", "--data", str(data_dir), "--student", engine_url, "--limit", "3", "--greedy"]
    assert main([*args, *FAST, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["conditions"]) == ["no_bank"] and report["greedy"]
    # Two sampled rollouts and one greedy answer per sample.
    assert report["conditions"]["no_bank"]["tokens"]["requests"] == 3 * 3


def test_eval_refuses_the_banks_training_samples(
    data_dir: Path, tmp_path: Path, engine_url: str, capsys
) -> None:
    test_samples = load_dataset(data_dir, split="test").samples
    bank = ExperienceBank()
    bank.meta.add_training_samples([test_samples[0].id])
    path = tmp_path / "trained.json"
    bank.save(path)
    args = ["eval", "--data", str(data_dir), "--student", engine_url, "--limit", "2"]
    assert main([*args, *FAST, "--bank", str(path)]) == 2
    assert "were used to distill this bank" in capsys.readouterr().err
    out = tmp_path / "report.json"
    assert main([*args, *FAST, "--bank", str(path), "--exclude-trained", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [s["id"] for s in report["conditions"]["bank"]["samples"]] == [test_samples[1].id]


def test_report_figures_and_table() -> None:
    report = ConditionReport("bank", 3, 2)
    report.scores = [
        SampleScore("a", "x", True, 2, 2, ["1", "1"]),
        SampleScore("b", "x", False, 1, 2, ["2", "1"]),
        SampleScore("c", "y", False, 0, 2, [None, "3"]),
    ]
    data = report.to_dict()
    assert data["pass_at_1"] == pytest.approx(1 / 3)
    assert data["mean_at_n"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert data["by_category"]["x"] == {"num_samples": 2, "pass_at_1": 0.5, "mean_at_n": 0.75}
    table = format_table({"rollouts": 2, "conditions": {"bank": data}})
    assert "33.3%" in table and "50.0%" in table and "x (2)" in table


def test_demo_runs_distill_and_eval(tmp_path: Path, engine_url: str, capsys) -> None:
    work = tmp_path / "demo"
    args = ["demo", "--student", engine_url, "--workdir", str(work), "--no-progress"]
    assert main([*args, "--train", "2", "--test", "2", "--rollouts", "2"]) == 0
    printed = capsys.readouterr().out
    for expected in ("accuracy without bank", "accuracy with bank", "server prefix cache"):
        assert expected in printed
    assert "demo finished in" in printed
    assert f"report: {work / 'report.html'}" in printed
    for name in ("data/samples.jsonl", "bank.json", "bank.log.jsonl", "eval.json", "report.html"):
        assert (work / name).is_file()
    assert 'id="plot-accuracy"' in (work / "report.html").read_text()
    bank = ExperienceBank.load(work / "bank.json")
    assert len(bank.meta.training_sample_ids) == 2
    report = json.loads((work / "eval.json").read_text())
    assert report["conditions"]["bank"]["num_samples"] == 2
