"""A distill run whose engine dies (SIGKILL) mid-run stops after a few connection
failures with one clear message and exit code 3, the committed batches saved; after a
new engine is up, ``--resume`` finishes the run.  Another writer changing the bank file
mid-run stops it the same way (the save is refused: nothing is lost)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ENGINE_ARGS
from distill_checks import check_log_matches_bank, distill_command, finish_distill

from ted_sglang.bank import ExperienceBank
from ted_sglang.engine.launcher import launch_engine
from ted_sglang.loop.steplog import read_log

NUM_SAMPLES = 6


def command(data_dir: Path, bank: Path, url: str, *extra: str) -> list[str]:
    return distill_command(data_dir, bank, url, NUM_SAMPLES, 16, "--retries", "1", *extra)


def start(argv: list[str]) -> subprocess.Popen:
    """A distill process whose output the test reads when it ends."""
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def done_in(bank_path: Path) -> list[str]:
    try:
        return ExperienceBank.load(bank_path).meta.extra["distill"]["done"]
    except (ValueError, KeyError):
        return []


def wait_for_done(proc: subprocess.Popen, bank_path: Path, count: int) -> None:
    deadline = time.monotonic() + 240
    while len(done_in(bank_path)) < count:
        assert proc.poll() is None, "distill ended before the test could act"
        assert time.monotonic() < deadline, "distill made no progress"
        time.sleep(0.05)


@pytest.mark.slow
def test_engine_killed_mid_run_stops_distill_then_resume_finishes(
    data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    bank_path = tmp_path / "bank.json"
    engine = launch_engine(
        tiny_model_dir, extra_args=ENGINE_ARGS, log_path=tmp_path / "a.log", timeout=180
    )
    try:
        proc = start(command(data_dir, bank_path, engine.url))
        try:
            wait_for_done(proc, bank_path, 2)
            os.killpg(engine.process.pid, signal.SIGKILL)  # the engine dies
            started = time.monotonic()
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        engine.close()
    assert proc.returncode == 3, err[-3000:]
    assert time.monotonic() - started < 30
    assert err.count("distill stopped:") == 1 and "could not reach a server" in err
    assert "--resume" in err
    assert "Traceback" not in err, err[-3000:]
    assert err.count("\n") <= 6, err[-3000:]  # no flood of per-sample errors
    before = done_in(bank_path)
    assert 2 <= len(before) < NUM_SAMPLES and len(before) % 2 == 0
    records, bad = read_log(tmp_path / "bank.log.jsonl")
    assert bad == 0

    with launch_engine(
        tiny_model_dir, extra_args=ENGINE_ARGS, log_path=tmp_path / "b.log", timeout=180
    ) as second:
        finish_distill(command(data_dir, bank_path, second.url, "--resume"))
    bank = ExperienceBank.load(bank_path)
    records, bad = read_log(tmp_path / "bank.log.jsonl")
    assert bad == 0
    check_log_matches_bank(bank, records)
    assert bank.meta.extra["distill"]["done"][: len(before)] == before


@pytest.mark.slow
def test_another_writer_mid_run_stops_distill_without_losing_its_edit(
    data_dir: Path, engine_url: str, tmp_path: Path
) -> None:
    bank_path = tmp_path / "bank.json"
    proc = start(command(data_dir, bank_path, engine_url))
    try:
        wait_for_done(proc, bank_path, 2)
        ExperienceBank.update_file(
            bank_path, lambda bank: bank.meta.extra.__setitem__("operator", "was here")
        )
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode == 0:
        pytest.skip("the run committed its last batch before the other writer's edit")
    assert proc.returncode == 3, err[-3000:]
    assert err.count("distill stopped:") == 1 and "another writer changed" in err
    assert "still at version" in err  # the other writer's edit did not move the version
    bank = ExperienceBank.load(bank_path)
    assert bank.meta.extra["operator"] == "was here"
    finish_distill(command(data_dir, bank_path, engine_url, "--resume"))
    bank = ExperienceBank.load(bank_path)
    assert bank.meta.extra["operator"] == "was here"
    check_log_matches_bank(bank, read_log(tmp_path / "bank.log.jsonl")[0])


@pytest.mark.slow
def test_a_second_run_on_the_bank_is_refused_at_once(
    data_dir: Path, engine_url: str, tmp_path: Path
) -> None:
    """Without the run lock, the second run raced the first: one of them stopped on a
    conflict, and the log held the loser's lines of a batch the bank never saved."""
    bank_path = tmp_path / "bank.json"
    first = start(command(data_dir, bank_path, engine_url))
    try:
        wait_for_done(first, bank_path, 2)
        first.send_signal(signal.SIGSTOP)  # mid-run, holding its run lock, until SIGCONT
        try:
            for extra in ("--resume", "--force"):
                second = subprocess.run(
                    command(data_dir, bank_path, engine_url, extra),
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert second.returncode == 2, second.stderr[-3000:]
                assert "another distill run is using it" in second.stderr
                assert str(bank_path) in second.stderr and "Traceback" not in second.stderr
        finally:
            first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err[-3000:]
    bank = ExperienceBank.load(bank_path)
    assert len(bank.meta.extra["distill"]["done"]) == NUM_SAMPLES
    check_log_matches_bank(bank, read_log(tmp_path / "bank.log.jsonl")[0])


def refused_error() -> BaseException:
    """What the frontend's urllib raises for a server that is gone (a real socket)."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the request: nobody listens
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/generate", timeout=5)
    except OSError as exc:
        return exc
    raise AssertionError("a closed port answered")


def test_connection_failures_are_told_from_other_failures() -> None:
    import urllib.error

    from ted_sglang.loop.calls import RequestFailed
    from ted_sglang.loop.connection_watch import is_connection_failure

    refused = refused_error()
    wrapped = RequestFailed(f"URLError: {refused}")
    wrapped.__cause__ = refused
    assert is_connection_failure(refused) and is_connection_failure(wrapped)
    assert is_connection_failure(ConnectionResetError("reset by peer"))
    http_500 = urllib.error.HTTPError("http://x/generate", 500, "out of memory", {}, None)
    slow = urllib.error.URLError(TimeoutError("timed out"))
    for other in (http_500, slow, RequestFailed("RuntimeError: bad output"), ValueError("x")):
        assert not is_connection_failure(other)


def test_the_watch_trips_after_failures_in_a_row_only() -> None:
    from ted_sglang.loop.connection_watch import ConnectionWatch

    refused, other = refused_error(), RuntimeError("the server answered 500")
    watch = ConnectionWatch(3)
    for exc in (refused, refused, other, refused, refused):
        watch.failed(exc)
    watch.succeeded()
    watch.failed(refused)
    watch.failed(refused)
    assert not watch.tripped and watch.in_a_row == 2
    started = time.monotonic()
    watch.failed(refused)
    assert watch.tripped and "Connection refused" in (watch.last_error or "")
    watch.pause(30)  # a retry's back-off ends at once when the watch has tripped
    assert time.monotonic() - started < 5
    never = ConnectionWatch(0)
    for _ in range(10):
        never.failed(refused)
    assert not never.tripped
    with pytest.raises(ValueError, match=">= 0"):
        ConnectionWatch(-1)
