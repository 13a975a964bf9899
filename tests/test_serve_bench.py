"""Smoke run of ``bench/serve_load.py`` with tiny sizes (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "serve_load.py"


@pytest.mark.slow
def test_serve_load_smoke(engine_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH.parent))  # the bench's own helper modules
    spec = importlib.util.spec_from_file_location("serve_load", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = [
        "--endpoint", engine_url, "--clients", "3", "--duration", "2",
        "--serial-requests", "4", "--entries", "5", "--out", str(tmp_path),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads((tmp_path / "serve_load.json").read_text())
    assert result["errors"] == 0
    for phase in ("serial", "concurrent"):
        report = result[phase]
        assert report["serve"]["count"] == report["direct"]["count"] >= 4
        assert set(report["overhead_ms"]) == {"mean_ms", "p50_ms", "p90_ms", "p99_ms"}
        assert 0.0 <= report["serve_cached_over_prompt"] <= 1.0
    assert result["concurrent"]["serve_cached_over_prompt"] > 0.5  # the bank prefix is cached
    assert result["bank"]["entries"] == 5
