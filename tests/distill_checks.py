"""Checks shared by the distillation tests: a finished run's log agrees with its bank."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema

from ted_sglang.bank import ExperienceBank, operations_schema
from ted_sglang.cli import main

# Small everything: the tiny model writes gibberish quickly, the grammar keeps it valid.
FAST = [
    "--rollouts", "3", "--student-max-tokens", "16", "--solution-max-tokens", "16",
    "--critique-max-tokens", "16", "--max-ops", "3", "--max-text-chars", "80",
    "--no-progress", "--retries", "0", "--similarity", "text",
]  # fmt: skip


def distill_command(
    data_dir: Path, bank: Path, url: str, limit: int, max_tokens: int, *extra: str
) -> list[str]:
    """``ted-sglang distill`` as a subprocess command: ``limit`` samples in batches of 2,
    ``max_tokens`` per generation, against the engine at ``url``."""
    tokens = str(max_tokens)
    return [
        sys.executable, "-m", "ted_sglang.cli", "distill", "--data", str(data_dir),
        "--bank", str(bank), "--student", url, "--limit", str(limit),
        "--rollouts", "3", "--concurrency", "2", "--student-max-tokens", tokens,
        "--solution-max-tokens", tokens, "--critique-max-tokens", tokens, "--max-ops", "3",
        "--max-text-chars", "80", "--no-progress", "--batch-size", "2",
        "--no-skip-uniform", "--similarity", "text", *extra,
    ]  # fmt: skip


def finish_distill(command: list[str]) -> None:
    """Run a :func:`distill_command` (a ``--resume``) to its end: it must succeed."""
    finish = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr[-3000:]


def run_distill(data_dir: Path, bank: Path, *extra: str) -> int:
    """``ted-sglang distill`` on ``data_dir`` into ``bank`` with :data:`FAST` settings."""
    return main(["distill", "--data", str(data_dir), "--bank", str(bank), *FAST, *extra])


def validate_document(document: object, schema: dict) -> None:
    """jsonschema validation of a constrained generation; every error fails (the engine
    keeps xgrammar's invalid UTF-8 out of strings, so ``maxLength`` holds as decoded)."""
    jsonschema.Draft202012Validator(schema).validate(document)


def check_log_matches_bank(bank: ExperienceBank, records: list[dict]) -> None:
    """Every done sample has one step line and sits in exactly one committed batch; the
    history's versions are exactly those the batch lines report, each tagged with its
    batch (a teacher version with the batch's sample ids, so no sample's operations are
    applied twice); the reconciled operations are the applied document; every teacher
    document validates against the schema of the bank its sample saw."""
    checkpoint = bank.meta.extra["distill"]
    steps = [r for r in records if r["event"] == "step"]
    batches = [r for r in records if r["event"] == "batch"]
    assert [r["sample_id"] for r in steps] == checkpoint["done"]
    assert sorted(checkpoint["done"]) == sorted(checkpoint["order"])
    assert bank.meta.training_sample_ids == checkpoint["done"]
    assert len(bank.meta.training_question_hashes) == len(checkpoint["done"])
    assert [b["batch"] for b in batches] == list(range(1, checkpoint["batches"] + 1))
    assert [i for b in batches for i in b["sample_ids"]] == checkpoint["done"]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
    history = {record.version: record for record in bank.history}
    seen_versions: list[int] = []
    tagged: list[str] = []
    for b in batches:
        mine = [r for r in steps if r["batch"] == b["batch"]]
        assert [r["sample_id"] for r in mine] == b["sample_ids"]
        assert [mine[0]["step"], mine[-1]["step"]] == b["steps"]
        assert {r["bank_version_seen"] for r in mine} == {b["bank_version_seen"]}
        versions = range(b["bank_version_before"] + 1, b["bank_version_after"] + 1)
        seen_versions += versions
        applied = 0
        for v in versions:
            assert history[v].meta["batch"] == b["batch"]
            if history[v].meta["source"] == "teacher":
                assert history[v].meta["sample_ids"] == b["sample_ids"]
                tagged += history[v].meta["sample_ids"]
            applied += len(history[v].operations)
        reports = [b["operations"]]
        if b["compression"]:
            reports += [b["compression"]["removals"], b["compression"]["operations"]]
        assert applied == sum(rep["num_applied"] for rep in reports if rep)
        if b["reconcile"] is not None:
            assert b["reconcile"]["kept"] == len(b["operations"]["results"])
            assert b["reconcile"]["proposals"] == sum(r["teacher_output"] is not None for r in mine)
    assert seen_versions == list(range(1, bank.version + 1))
    assert len(tagged) == len(set(tagged)), "a sample's operations were applied twice"
    for r in steps:
        if r["teacher_output"] is not None:
            document = json.loads(r["teacher_output"], strict=False)
            validate_document(document, operations_schema(r["bank_ids_seen"], bank.limits))
