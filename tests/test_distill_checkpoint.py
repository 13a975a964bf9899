"""Checkpoints inside the bank file and the step log, without any server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ted_sglang.bank import ExperienceBank
from ted_sglang.data import Sample
from ted_sglang.loop.checkpoint import Checkpoint, dataset_fingerprint
from ted_sglang.loop.config import DistillConfig, GenerationConfig
from ted_sglang.loop.distill import prepare_bank
from ted_sglang.loop.steplog import StepLog, default_log_path, read_log


def samples(n: int = 6) -> list[Sample]:
    return [Sample(f"s{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(n)]


DATASET = {"path": "data.jsonl", "split": "train", "limit": None}


def test_start_shuffles_from_the_seed_and_stores_in_the_bank() -> None:
    config = DistillConfig()
    a = Checkpoint.start(samples(), DATASET, config.fingerprint(), seed=1)
    b = Checkpoint.start(samples(), DATASET, config.fingerprint(), seed=1)
    c = Checkpoint.start(samples(), DATASET, config.fingerprint(), seed=2)
    assert a.order == b.order and sorted(a.order) == [f"s{i}" for i in range(6)]
    assert a.order != c.order
    bank = ExperienceBank()
    a.store(bank)
    again = Checkpoint.from_bank(ExperienceBank.from_dict(json.loads(json.dumps(bank.to_dict()))))
    assert again.to_dict() == a.to_dict()
    assert again.dataset["fingerprint"] == dataset_fingerprint(samples())


def test_rng_state_resumes_the_same_draws() -> None:
    checkpoint = Checkpoint.start(samples(), DATASET, {}, seed=0)
    rng = checkpoint.rng()
    rng.sample(range(5), 5)  # this sample's draw
    checkpoint.mark_done(checkpoint.order[0], rng.getstate())
    uninterrupted = rng.sample(range(5), 5)
    restored = Checkpoint.from_bank(_stored(checkpoint)).rng()
    assert restored.sample(range(5), 5) == uninterrupted


def _stored(checkpoint: Checkpoint) -> ExperienceBank:
    bank = ExperienceBank()
    checkpoint.store(bank)
    return ExperienceBank.from_dict(json.loads(json.dumps(bank.to_dict())))


def test_mark_done_and_remaining_keep_the_order() -> None:
    checkpoint = Checkpoint.start(samples(4), DATASET, {}, seed=0)
    order = list(checkpoint.order)
    rng = checkpoint.rng()
    assert checkpoint.mark_done(order[2], rng.getstate()) == 1
    assert checkpoint.mark_done(order[0], rng.getstate()) == 2
    assert checkpoint.remaining() == [order[1], order[3]]
    assert checkpoint.done == [order[2], order[0]] and checkpoint.step == 2
    with pytest.raises(AssertionError):
        checkpoint.mark_done(order[0], rng.getstate())


def test_resume_refuses_another_dataset_or_setting() -> None:
    config = DistillConfig(rollouts=3)
    checkpoint = Checkpoint.start(samples(), DATASET, config.fingerprint(), seed=0)
    checkpoint.check_matches(samples(), DATASET, config.fingerprint())
    # Concurrency and retries may change on resume; they do not change the result.
    other_runtime = DistillConfig(rollouts=3, concurrency=4, retries=0)
    checkpoint.check_matches(samples(), DATASET, other_runtime.fingerprint())
    with pytest.raises(ValueError, match="rollouts was 3, now 5"):
        checkpoint.check_matches(samples(), DATASET, DistillConfig(rollouts=5).fingerprint())
    budget = DistillConfig(rollouts=3, generation=GenerationConfig(student_max_tokens=9))
    with pytest.raises(ValueError, match="generation"):
        checkpoint.check_matches(samples(), DATASET, budget.fingerprint())
    with pytest.raises(ValueError, match="the dataset differs"):
        checkpoint.check_matches(samples(5), DATASET, config.fingerprint())


def test_damaged_or_missing_checkpoints_are_errors() -> None:
    with pytest.raises(ValueError, match="no distillation checkpoint"):
        Checkpoint.from_bank(ExperienceBank())
    checkpoint = Checkpoint.start(samples(), DATASET, {}, seed=0)
    bank = ExperienceBank()
    checkpoint.store(bank)
    bank.meta.extra["distill"]["done"] = ["s1", "s1"]
    bank.meta.extra["distill"]["step"] = 2
    with pytest.raises(ValueError, match="repeated"):
        Checkpoint.from_bank(bank)
    bank.meta.extra["distill"]["rng_state"] = "nope"
    with pytest.raises(ValueError, match="damaged"):
        Checkpoint.from_bank(bank)


def test_prepare_bank_refuses_to_overwrite_and_to_resume_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bank.json"
    config = DistillConfig()
    with pytest.raises(ValueError, match="does not exist"):
        prepare_bank(path, samples(), DATASET, config, "m", resume=True, force=False)
    bank, checkpoint = prepare_bank(
        path, samples(), DATASET, config, "m", resume=False, force=False
    )
    assert bank.meta.student_model == "m" and checkpoint.step == 0
    bank.save(path)
    with pytest.raises(ValueError, match="already exists: pass --resume"):
        prepare_bank(path, samples(), DATASET, config, "m", resume=False, force=False)
    prepare_bank(path, samples(), DATASET, config, "m", resume=False, force=True)
    resumed, again = prepare_bank(path, samples(), DATASET, config, "m", resume=True, force=False)
    assert again.order == checkpoint.order and resumed.meta.student_model == "m"
    with pytest.raises(ValueError, match="distilled for 'm'"):
        prepare_bank(path, samples(), DATASET, config, "other", resume=True, force=False)
    with pytest.raises(ValueError, match="contradict"):
        prepare_bank(path, samples(), DATASET, config, "m", resume=True, force=True)


def test_log_reconcile_keeps_exactly_the_done_steps(tmp_path: Path) -> None:
    path = tmp_path / "run.log.jsonl"
    log = StepLog(path)
    log.start_fresh()
    for record in (
        {"event": "step", "sample_id": "a", "n": 1},
        {"event": "failed", "sample_id": "b", "error": "HTTP 500"},
        {"event": "step", "sample_id": "c", "n": 2},
        {"event": "step", "sample_id": "d", "n": 3},  # written, but the bank save never came
    ):
        log.append(record)
    log.close()
    with open(path, "ab") as handle:
        handle.write(b'{"event": "step", "sample_id": "e", "tru')  # killed mid-write
    records, bad = read_log(path)
    assert len(records) == 4 and bad == 1
    kept, dropped = StepLog(path).reconcile(["a", "c"])
    assert [r["sample_id"] for r in kept] == ["a", "c"] and dropped == 3
    assert [r["sample_id"] for r in read_log(path)[0]] == ["a", "c"]
    again = StepLog(path)
    again.append({"event": "step", "sample_id": "b"})
    again.close()
    assert [r["sample_id"] for r in read_log(path)[0]] == ["a", "c", "b"]


def test_log_lines_survive_odd_text(tmp_path: Path) -> None:
    log = StepLog(tmp_path / "x.jsonl")
    log.append({"event": "step", "sample_id": "a", "text": "tab\tnul\x00 lone \ud800 é"})
    log.close()
    (record,), bad = read_log(tmp_path / "x.jsonl")
    assert bad == 0 and record["text"] == "tab\tnul\x00 lone \ud800 é"


def test_default_log_path() -> None:
    assert default_log_path("out/bank.json") == Path("out/bank.log.jsonl")
