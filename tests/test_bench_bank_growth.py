"""The bank-growth benchmark: its parts, and its whole code path on the tiny model."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench():
    saved = list(sys.path)
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bank_growth", BENCH / "bank_growth.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bank_growth"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bank_growth"]
    sys.path[:] = saved


def brute_force_cached(history: list[tuple[int, ...]], ids: tuple[int, ...]) -> int:
    best = 0
    for seen in history:
        n = 0
        while n < min(len(seen), len(ids)) and seen[n] == ids[n]:
            n += 1
        best = max(best, n)
    return min(best, len(ids) - 1)


def test_ideal_cache_matches_brute_force(bench) -> None:
    from _request_stream import IdealPrefixCache

    rng = random.Random(0)
    cache, seen = IdealPrefixCache(), []
    stems = [tuple(rng.randrange(4) for _ in range(rng.randrange(1, 12))) for _ in range(6)]
    for _ in range(300):
        ids = rng.choice(stems) + tuple(rng.randrange(4) for _ in range(rng.randrange(0, 6)))
        assert cache.request(ids) == brute_force_cached(seen, ids)
        seen.append(ids)
    cache.clear()
    assert cache.request((1, 2, 3)) == 0


def test_simulated_history_is_seeded_and_within_budget(bench) -> None:
    from _bank_versions import LAYOUTS, render, simulate_history

    history = simulate_history(15, seed=3)
    again = simulate_history(15, seed=3)
    assert [render(v, "cache_friendly") for v in history.versions] == [
        render(v, "cache_friendly") for v in again.versions
    ]
    assert [v.version for v in history.versions] == list(range(len(history.versions)))
    assert history.compression_versions, "the bank passed its budget, so it was compressed"
    for v in history.versions:
        if v.compressed:
            assert len(v.entries) <= 15
        for layout in LAYOUTS:  # every layout renders the same entries
            assert sorted(render(v, layout).splitlines()) == sorted(
                render(v, "cache_friendly").splitlines()
            )
    assert max(len(v.entries) for v in history.versions) > 15


def test_history_of_a_bank_file(bench, tmp_path: Path) -> None:
    from _bank_versions import load_history

    from ted_sglang.bank import ExperienceBank

    bank = ExperienceBank()
    bank.apply({"operations": [{"op": "add", "text": "Check the units of every quantity."}]})
    bank.apply({"operations": [{"op": "add", "text": "Count each shape once, then recount."}]})
    bank.apply({"operations": [{"op": "delete", "id": "E1"}]}, meta={"source": "compression"})
    bank.save(tmp_path / "bank.json")
    history = load_history(tmp_path / "bank.json")
    assert [len(v.entries) for v in history.versions] == [0, 1, 2, 1]
    assert history.compression_versions == [3] and not history.has_usage


def test_bank_growth_end_to_end(bench, engine_url: str, tmp_path: Path) -> None:
    result = bench.main(
        [
            "--endpoint", engine_url, "--entries", "4", "--questions", "1", "--rollouts", "2",
            "--max-tokens", "2", "--windows", "1", "--window", "2", "--out", str(tmp_path),
            "--seed", "1",
        ]
    )  # fmt: skip
    saved = json.loads((tmp_path / "bank_growth.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(result["summary"]))
    assert (tmp_path / "bank_growth.png").stat().st_size > 0
    records = saved["records"]
    passes = {(r["layout"], r["mode"]) for r in records}
    assert passes == {
        ("cache_friendly", "fork"),
        ("naive_utility", "fork"),
        ("cache_friendly", "independent"),
    }
    fields = {
        "layout", "mode", "bank_version", "bank_entries", "bank_tokens", "prompt_tokens",
        "cached_tokens", "hit_rate", "ideal_hit_rate", "prefix_retention", "tokens_per_s",
        "decode_tokens_per_s", "compressed", "wall_s", "completion_tokens",
    }  # fmt: skip
    measured = saved["bank"]["measured_versions"]
    assert saved["bank"]["measured"][0] > 0  # so the version before it was served first
    for r in records:
        assert fields <= set(r)
        assert r["hit_rate"] <= r["ideal_hit_rate"] + 1e-12, r
        assert r["tokenizer_mismatches"] == 0
        assert r["server_cached_tokens"] == r["cached_tokens"]  # nothing else used the engine
        # fork: a precache request and 2 branches per question; independent: 2 requests
        assert r["requests"] == (3 if r["mode"] == "fork" else 2)
    assert len(records) == 3 * measured
    assert {"hit_rate_over_ideal", "median_prefix_retention", "mean_tokens_per_s"} <= set(
        saved["summary"]["cache_friendly/fork"]
    )
    assert "fork_vs_independent" in saved["summary"]
