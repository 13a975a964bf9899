"""A distill run in batches of two, killed (SIGKILL) at random moments, then resumed,
processes every sample exactly once: a batch is committed by one bank write, the log
and the bank's history agree, nothing is applied twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

from distill_checks import check_log_matches_bank, distill_command, finish_distill

from ted_sglang.bank import ExperienceBank
from ted_sglang.loop.steplog import read_log

NUM_SAMPLES = 16


def command(data_dir: Path, bank: Path, url: str, *extra: str) -> list[str]:
    return distill_command(data_dir, bank, url, NUM_SAMPLES, 64, "--max-entries", "4", *extra)


def lines_in(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_after(cmd: list[str], log: Path, lines: int, extra_delay: float) -> bool:
    """Start ``cmd``; once ``log`` has ``lines`` lines, wait ``extra_delay`` s and SIGKILL
    it.  Returns whether it was killed (False: it finished first)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while lines_in(log) < lines and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(extra_delay)
        if proc.poll() is not None:
            return False
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_then_resume_processes_each_sample_once(
    data_dir: Path, tmp_path: Path, engine_url: str
) -> None:
    rng = random.Random()  # a different moment on every run of the suite
    bank_path, log = tmp_path / "bank.json", tmp_path / "bank.log.jsonl"
    first = kill_after(
        command(data_dir, bank_path, engine_url), log, rng.randint(1, 4), rng.uniform(0, 1.0)
    )
    assert first, "the run finished before it could be killed"
    done_after_first = ExperienceBank.load(bank_path).meta.extra["distill"]["done"]
    assert len(done_after_first) < NUM_SAMPLES
    # Killed again while resuming, at another moment.
    kill_after(
        command(data_dir, bank_path, engine_url, "--resume"),
        log,
        len(done_after_first) * 3 // 2 + 1,  # kept lines (2 steps + 1 batch per batch) + 1
        rng.uniform(0, 1.0),
    )
    finish_distill(command(data_dir, bank_path, engine_url, "--resume"))
    bank = ExperienceBank.load(bank_path)
    records, bad = read_log(log)
    steps = [r for r in records if r["event"] == "step"]
    batches = [r for r in records if r["event"] == "batch"]
    assert bad == 0 and len(steps) == NUM_SAMPLES and len(batches) == NUM_SAMPLES // 2
    assert len({r["sample_id"] for r in steps}) == NUM_SAMPLES
    check_log_matches_bank(bank, records)
    assert bank.meta.extra["distill"]["done"][: len(done_after_first)] == done_after_first
    assert len(done_after_first) % 2 == 0  # committed a whole batch at a time
    # A batch's versions appear in the history under its number only (never twice).
    tagged = [v.meta["batch"] for v in bank.history]
    for b in batches:
        assert len(b["sample_ids"]) == 2
        assert tagged.count(b["batch"]) == b["bank_version_after"] - b["bank_version_before"]
