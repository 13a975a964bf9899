"""``ted-sglang serve`` as a user runs it: with no endpoint it launches the reference
engine and stops it on exit; ``serve-usage --apply`` folds the counts it kept into the
bank (same version, applied once)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from ted_sglang.bank import ExperienceBank
from ted_sglang.cli import main
from ted_sglang.engine.launcher import free_port, start_server

AUTH = {"Authorization": "Bearer adm"}


def test_bad_bank_is_refused_before_launching(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "bank.json").write_text("{")
    assert main(["serve", "--bank", str(tmp_path / "bank.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    code = main(["serve", "--bank", str(tmp_path / "x"), "--endpoint", "a:1", "--model", "m"])
    assert code == 2


@pytest.mark.slow
def test_embedded_engine_lifecycle_and_usage_apply(tiny_model_dir: Path, tmp_path: Path) -> None:
    bank_path = tmp_path / "bank.json"
    bank = ExperienceBank(student_model="tiny")
    bank.apply({"operations": [{"op": "add", "text": "Read the question twice before solving."}]})
    bank.save(bank_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TED_ADMIN_TOKEN": "adm"}
    env.pop("TED_API_KEY", None)
    command = [
        sys.executable, "-m", "ted_sglang.cli", "serve", "--bank", str(bank_path),
        "--model", str(tiny_model_dir), "--port", str(port), "--poll-interval", "0.1",
        "--log-level", "warning", "--served-model-name", "m",
    ]  # fmt: skip
    server = start_server(command, url, "serve", tmp_path / "serve.log", timeout=240, env=env)
    process = server.process
    try:
        engine_url = httpx.get(url + "/admin/bank", headers=AUTH).json()["endpoints"][0]["url"]
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        out = httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()
        feedback = {"request_id": out["id"], "correct": True}
        assert httpx.post(url + "/v1/feedback", json=feedback).status_code == 200

        process.send_signal(signal.SIGINT)  # a clean exit writes the usage file
        assert process.wait(timeout=60) == 0
        with pytest.raises(httpx.ConnectError):  # the launched engine is gone too
            httpx.get(engine_url + "/health", timeout=5)
    finally:
        server.close()

    usage = json.loads((tmp_path / "bank.json.usage.json").read_text())
    assert usage["entries"]["E1"] == {"shown": 1, "correct": 1, "wrong": 0}
    assert main(["serve-usage", "--bank", str(bank_path), "--apply"]) == 0
    applied = ExperienceBank.load(bank_path)
    assert applied.version == 1 and applied["E1"].usage.correct == 1
    assert main(["serve-usage", "--bank", str(bank_path), "--apply"]) == 0  # nothing new
    assert ExperienceBank.load(bank_path)["E1"].usage.shown == 1
