"""Distillation at scale on the tiny random model: several workers funnelled into one
bank, batches committed as one reconciled version, uniform groups skipped."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from distill_checks import check_log_matches_bank, run_distill, validate_document

from ted_sglang.bank import CompressionPolicy, ExperienceBank, OperationLimits, sequence_ratio
from ted_sglang.cli import main
from ted_sglang.data import grade, load_dataset
from ted_sglang.loop.batch import BatchContext, commit_batch
from ted_sglang.loop.calls import Extraction
from ted_sglang.loop.config import DistillConfig, GenerationConfig
from ted_sglang.loop.step import ALL_CORRECT, ALL_WRONG, BankView, PhaseResult, uniform_outcome
from ted_sglang.loop.steplog import read_log
from ted_sglang.programs import single_operation_schema
from ted_sglang.runtime import connect


def test_two_workers_make_one_consistent_bank(
    sample_dir: Path, tmp_path: Path, engine_url: str, second_engine_url: str, capsys
) -> None:
    bank_path = tmp_path / "bank.json"
    urls = [engine_url, second_engine_url]
    args = ["--student", urls[0], "--student", urls[1], "--workers", "2", "--limit", "6"]
    code = run_distill(sample_dir, bank_path, *args, "--batch-size", "3", "--no-skip-uniform")
    assert code == 0
    out = capsys.readouterr().out
    assert "6 processed now" in out and "on 2 workers" in out and "batches: 2" in out
    bank = ExperienceBank.load(bank_path)  # the history replays to the same entries
    records, bad = read_log(tmp_path / "bank.log.jsonl")
    assert bad == 0
    check_log_matches_bank(bank, records)
    steps = [r for r in records if r["event"] == "step"]
    batches = [r for r in records if r["event"] == "batch"]
    assert {r["worker"] for r in steps} == set(urls)  # both engines did student work
    assert [len(b["sample_ids"]) for b in batches] == [3, 3]
    # Each batch's proposals, made against one version, became at most one teacher version.
    for b in batches:
        teacher = [
            v
            for v in bank.history
            if v.meta.get("batch") == b["batch"] and v.meta["source"] == "teacher"
        ]
        applied = (b["operations"] or {}).get("num_applied", 0)
        assert len(teacher) == (1 if applied else 0)
        assert b["reconcile"]["proposals"] == 3
        assert set(b["reconcile"]) >= {"kept", "merged", "dropped", "by_code", "decisions"}
    assert main(["bank", "validate", str(bank_path)]) == 0
    assert bank.meta.student_model == connect(engine_url).model_path


def test_workers_flag_launches_that_many_engines(
    sample_dir: Path, tmp_path: Path, tiny_model_dir: Path, capsys
) -> None:
    bank_path = tmp_path / "bank.json"
    args = ["--model", str(tiny_model_dir), "--workers", "2", "--limit", "4", "--batch-size", "2"]
    assert run_distill(sample_dir, bank_path, *args, "--concurrency", "1", "--no-skip-uniform") == 0
    assert "launching 2 x the engine" in capsys.readouterr().err
    records, _ = read_log(tmp_path / "bank.log.jsonl")
    check_log_matches_bank(ExperienceBank.load(bank_path), records)
    workers = {r["worker"] for r in records if r["event"] == "step"}
    assert len(workers) == 2  # one sample of each batch on each engine
    for url in workers:  # the launched engines are gone
        with pytest.raises(OSError):
            urllib.request.urlopen(url + "/health", timeout=5)


def test_workers_must_match_the_urls_and_serve_one_model(
    sample_dir: Path, tmp_path: Path, engine_url: str, vision_engine_url: str, capsys
) -> None:
    bank_path = tmp_path / "bank.json"
    assert run_distill(sample_dir, bank_path, "--student", engine_url, "--workers", "2") == 2
    assert "--workers 2 with 1 --student URL(s)" in capsys.readouterr().err
    both = f"{engine_url},{vision_engine_url}"
    assert run_distill(sample_dir, bank_path, "--student", both, "--limit", "1") == 2
    assert "serve different models" in capsys.readouterr().err
    assert not bank_path.exists()


def test_skip_uniform_counts_the_skipped_samples(
    sample_dir: Path, tmp_path: Path, engine_url: str, capsys
) -> None:
    bank_path = tmp_path / "bank.json"
    args = ("--student", engine_url, "--limit", "6", "--batch-size", "2")
    assert run_distill(sample_dir, bank_path, *args) == 0  # --skip-uniform is the default
    out = capsys.readouterr().out
    records, _ = read_log(tmp_path / "bank.log.jsonl")
    steps = [r for r in records if r["event"] == "step"]
    batches = [r for r in records if r["event"] == "batch"]
    check_log_matches_bank(ExperienceBank.load(bank_path), records)
    skipped = {ALL_CORRECT: 0, ALL_WRONG: 0}
    for r in steps:
        outcomes = {t["correct"] for t in r["trajectories"]}
        if r["skipped"] is None:
            assert outcomes == {True, False}  # a mixed group: the teacher was asked
            assert r["teacher_output"] is not None and "extraction" in r["tokens"]
        else:
            assert outcomes == {r["skipped"] == ALL_CORRECT}
            assert set(r["tokens"]) == {"student"} and r["teacher_solution"] is None
            assert r["teacher_output"] is None
            skipped[r["skipped"]] += 1
    assert sum(skipped.values()) > 0  # random text rarely answers right, let alone mixed
    total = {k: sum(b["skipped"][k] for b in batches) for k in skipped}
    assert total == skipped
    line = (
        f"skipped (uniform rollouts, teacher not asked): {sum(skipped.values())} "
        f"({skipped[ALL_CORRECT]} all correct, {skipped[ALL_WRONG]} all wrong)"
    )
    assert line in out
    # Without --skip-uniform every sample asks the teacher.
    other = tmp_path / "all.json"
    assert run_distill(sample_dir, other, *args, "--no-skip-uniform") == 0
    steps, _ = read_log(tmp_path / "all.log.jsonl")
    assert all(r["teacher_output"] is not None for r in steps if r["event"] == "step")
    assert "skipped (uniform rollouts, teacher not asked): 0 " in capsys.readouterr().out


def test_uniform_outcome() -> None:
    def g(correct: bool):
        return type("G", (), {"correct": correct})()

    assert uniform_outcome([g(True), g(True)]) == ALL_CORRECT
    assert uniform_outcome([g(False), g(False)]) == ALL_WRONG
    assert uniform_outcome([g(True), g(False)]) is None
    with pytest.raises(ValueError, match="every group is uniform"):
        DistillConfig(rollouts=1)


def test_a_batch_commits_one_version_with_updates_merged_by_the_teacher(
    sample_dir: Path, engine_url: str
) -> None:
    """Hand-written proposals of three samples, committed as one batch: two different
    updates of E1 are merged by the teacher (the tiny model, under the grammar), a
    delete wins over an update of E2, and two identical adds become one."""
    limits = OperationLimits(max_operations=3, max_text_chars=80)
    bank = ExperienceBank(limits=limits)
    texts = ["Count the shapes of each colour first.", "Read the axis before the bars."]
    bank.apply({"operations": [{"op": "add", "text": t} for t in texts]}, step=0)
    view = BankView.of(bank)
    tip = "Name the colour of every shape before counting."
    documents = [
        [{"op": "update", "id": "E1", "text": "Count shapes colour by colour."}],
        [
            {"op": "update", "id": "E1", "text": "Sort the shapes by colour, then count."},
            {"op": "update", "id": "E2", "text": "Read the axis scale first."},
            {"op": "add", "text": tip},
        ],
        [{"op": "delete", "id": "E2"}, {"op": "add", "text": tip}],
    ]
    samples = load_dataset(sample_dir, split="train").samples[:3]
    results = []
    for sample, ops in zip(samples, documents, strict=True):
        document = json.dumps({"operations": ops})
        grades = [grade("x", sample), grade("y", sample)]
        extraction = Extraction("critique", document, None)
        results.append(PhaseResult(sample, view, ["x", "y"], grades, extraction=extraction))
    config = DistillConfig(
        rollouts=2, batch_size=3, limits=limits, similarity="text",
        generation=GenerationConfig(teacher_temperature=0.0),
    )  # fmt: skip
    teacher = connect(engine_url)
    context = BatchContext(CompressionPolicy(), teacher, config, sequence_ratio)
    steps, record = commit_batch(bank, results, batch=1, first_step=1, context=context)
    assert bank.version == view.version + 1  # one version for the whole batch
    assert bank.history[-1].meta == {
        "source": "teacher",
        "batch": 1,
        "sample_ids": [s.id for s in samples],
    }
    reconciled = record["reconcile"]
    by_source = {
        (d["sample_id"], d["index"]): (d["fate"], d["code"]) for d in reconciled["decisions"]
    }
    assert by_source[(samples[1].id, 1)] == ("dropped", "deleted")  # delete wins over update
    assert by_source[(samples[2].id, 1)] == ("merged", "same_add")
    assert "E2" not in bank and sum(e.text == tip for e in bank) == 1
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert sum(s["proposal"]["operations"] for s in steps) == reconciled["operations"] == 6
    # The teacher (greedy) wrote one text for E1 under the single-update grammar.
    assert reconciled["teacher_merged"] == 1 and record["tokens"]["reconcile"]["requests"] == 1
    assert by_source[(samples[0].id, 0)] == ("kept", "teacher_merged")
    assert by_source[(samples[1].id, 0)] == ("merged", "teacher_merged")
    update = next(op for op in bank.history[-1].operations if op["op"] == "update")
    assert bank["E1"].text == update["text"] not in (documents[0][0]["text"], texts[0])
    document = {"operations": [{k: v for k, v in update.items() if k != "result_id"}]}
    validate_document(document, single_operation_schema("update", ["E1"], limits))
