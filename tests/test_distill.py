"""``ted-sglang distill`` end to end on the bundled sample set and the tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

from distill_checks import check_log_matches_bank, run_distill

from ted_sglang.bank import CompressionBudget, CompressionPolicy, ExperienceBank
from ted_sglang.cli import main
from ted_sglang.loop.compress import compress_bank
from ted_sglang.loop.config import DistillConfig
from ted_sglang.loop.steplog import read_log
from ted_sglang.runtime import connect


def steps_of(records: list[dict]) -> list[dict]:
    return [r for r in records if r["event"] == "step"]


def distill(sample_dir: Path, bank: Path, url: str, *extra: str) -> int:
    return run_distill(sample_dir, bank, "--student", url, "--no-skip-uniform", *extra)


def test_distill_end_to_end(sample_dir: Path, tmp_path: Path, engine_url: str, capsys) -> None:
    bank_path = tmp_path / "bank.json"
    assert distill(sample_dir, bank_path, engine_url, "--limit", "8", "--concurrency", "3") == 0
    out = capsys.readouterr().out
    assert "8 processed now" in out and "operations:" in out
    bank = ExperienceBank.load(bank_path)
    records, bad = read_log(tmp_path / "bank.log.jsonl")
    assert bad == 0 and len(records) == 16  # a step line and a batch line per sample
    check_log_matches_bank(bank, records)
    teacher_versions = [v for v in bank.history if v.meta.get("source") == "teacher"]
    assert teacher_versions, "no teacher operation was applied"
    assert all(len(v.meta["sample_ids"]) == 1 for v in teacher_versions)  # --batch-size 1
    assert bank.meta.student_model == connect(engine_url).model_path
    for r in steps_of(records):
        assert r["student_total"] == 3 and len(r["trajectories"]) == 3
        assert set(r["tokens"]) >= {"student", "teacher_solution", "extraction"}
        assert r["tokens"]["student"]["cached"] > 0
        assert r["critique"] is not None and r["teacher_solution"] is not None
        assert sorted(r["attempt_order"]) == [0, 1, 2]
    # The whole bank is valid: it loads (history replayed) and validates on the CLI.
    assert main(["bank", "validate", str(bank_path)]) == 0


def test_existing_bank_needs_resume_or_force(sample_dir: Path, tmp_path: Path, engine_url, capsys):
    bank_path = tmp_path / "bank.json"
    assert distill(sample_dir, bank_path, engine_url, "--limit", "1") == 0
    assert distill(sample_dir, bank_path, engine_url, "--limit", "1") == 2
    assert "already exists: pass --resume or --force" in capsys.readouterr().err
    assert distill(sample_dir, bank_path, engine_url, "--limit", "2", "--resume") == 2
    assert "--resume must continue the same run: the dataset differs" in capsys.readouterr().err
    code = distill(sample_dir, bank_path, engine_url, "--limit", "1", "--resume", "--seed", "5")
    assert code == 2 and "seed was 0, now 5" in capsys.readouterr().err
    # Nothing left to do: a resume of a finished run changes nothing.
    before = bank_path.read_bytes()
    assert distill(sample_dir, bank_path, engine_url, "--limit", "1", "--resume") == 0
    assert ExperienceBank.load(bank_path).to_dict() == json.loads(before)
    assert distill(sample_dir, bank_path, engine_url, "--limit", "2", "--force") == 0
    assert len(steps_of(read_log(tmp_path / "bank.log.jsonl")[0])) == 2


def test_failed_samples_are_logged_and_retried_on_resume(
    sample_dir: Path, tmp_path: Path, engine_url: str, failing_url: str, capsys
) -> None:
    bank_path = tmp_path / "bank.json"
    code = distill(sample_dir, bank_path, engine_url, "--limit", "3", "--teacher", failing_url)
    assert code == 1
    assert "3 sample(s) failed" in capsys.readouterr().err
    records, _ = read_log(tmp_path / "bank.log.jsonl")
    assert [r["event"] for r in records] == ["failed"] * 3
    assert all("out of memory" in r["error"] for r in records)
    assert ExperienceBank.load(bank_path).meta.extra["distill"]["done"] == []
    # The teacher's URL is no setting of the run: resume with a working one.
    assert distill(sample_dir, bank_path, engine_url, "--limit", "3", "--resume") == 0
    bank = ExperienceBank.load(bank_path)
    records, _ = read_log(tmp_path / "bank.log.jsonl")
    check_log_matches_bank(bank, records)
    assert len(steps_of(records)) == 3


def test_structured_chains_and_images(
    sample_dir: Path, tmp_path: Path, vision_engine_url: str
) -> None:
    bank_path = tmp_path / "bank.json"
    code = distill(sample_dir, bank_path, vision_engine_url, "--limit", "1", "--structured-chains")
    assert code == 0
    (record,) = steps_of(read_log(tmp_path / "bank.log.jsonl")[0])
    assert len(record["chains"]) == 4 and record["tokens"]["chains"]["requests"] == 4
    # The vision student read the image itself: its prompt holds the 16 image tokens.
    text_only = connect(vision_engine_url)
    assert text_only.takes_images
    assert record["tokens"]["student"]["prompt"] >= 3 * 16


def test_compression_removes_and_asks_the_teacher(engine_url: str) -> None:
    bank = ExperienceBank()
    texts = [
        "Count the red shapes one by one before answering.",
        "Count the red shapes one by one before you answer.",
        "Long advice: " + "read every label and every value; " * 8,
        "Read the axis ticks to get bar values right.",
        "Compare sizes by their widths in pixels.",
    ]
    bank.apply({"operations": [{"op": "add", "text": t} for t in texts]}, step=1)
    bank.record_cited(helpful=["E1", "E2", "E3"], harmful=["E5"], step=1)
    policy = CompressionPolicy(
        budget=CompressionBudget(max_entries=4, max_tokens=None), long_entry_tokens=30
    )
    plan = policy.plan(bank)
    assert plan.removals and plan.merges and plan.rewrites
    record = compress_bank(
        bank, policy, connect(engine_url), DistillConfig(), step=2, meta={"batch": 9}
    )
    assert record is not None and record["teacher_error"] is None
    assert record["removals"]["num_applied"] == len(plan.removals)
    assert "E5" not in bank  # the entry the teacher called harmful went first
    assert record["teacher_output"] is not None and record["tokens"].requests == 1
    document = json.loads(record["teacher_output"], strict=False)
    assert len(document["operations"]) == (
        len(record["outside_plan"]) + len((record["operations"] or {"results": []})["results"])
    )
    sources = [(v.meta.get("source"), v.meta.get("kind")) for v in bank.history[1:]]
    assert sources[0] == ("compression", "removal")
    assert all(v.meta["batch"] == 9 for v in bank.history[1:])
    assert record["version_after"] == bank.version
    assert (
        compress_bank(bank, CompressionPolicy(), None, DistillConfig(), step=3, meta={"batch": 1})
        is None
    )
