"""Launching the engine: failures say why, and no engine outlives its launcher."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ted_sglang.engine.launcher import free_port, launch_engine


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split()[2] == "Z")


def test_a_bad_model_fails_fast_with_the_log(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="model not found"):
        launch_engine(tmp_path / "missing-model", log_path=tmp_path / "log.txt", timeout=120)
    assert time.monotonic() - start < 60


def test_the_cli_refuses_bad_settings() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ted_sglang.engine", "--model", "x", "--max-batch-size", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "max_batch_size" in result.stderr


@pytest.mark.slow
def test_engine_exits_when_its_launcher_is_killed(tiny_model_dir: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "engine.pid"
    script = (
        "import sys, time\n"
        "from ted_sglang.engine.launcher import launch_engine\n"
        f"engine = launch_engine({str(tiny_model_dir)!r}, port={free_port()})\n"
        f"open({str(pid_file)!r}, 'w').write(str(engine.process.pid))\n"
        "time.sleep(600)\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 180
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and launcher.poll() is None
            time.sleep(0.2)
        engine_pid = int(pid_file.read_text())
        assert alive(engine_pid)
        launcher.send_signal(signal.SIGKILL)  # no atexit, no cleanup: the engine must notice
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 30
        while alive(engine_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(engine_pid)
    finally:
        if launcher.poll() is None:
            launcher.kill()
