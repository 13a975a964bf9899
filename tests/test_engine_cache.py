"""The radix cache in the running engine: same tokens with or without it, shared prefixes
computed once, chunked prefill, and eviction under a small budget."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

_VOCABULARY = (
    "the student reads each question and writes down what is given before "
    "solving it step by step and checking the units twice"
)
WORDS = _VOCABULARY.split()


def text_of(num_words: int, seed: int) -> str:
    import random

    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


def generate(url: str, text: str, **sampling) -> dict:
    body = {
        "text": text,
        "sampling_params": {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True, **sampling},
    }
    response = httpx.post(url + "/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def concurrently(url: str, texts: list[str], **sampling) -> list[dict]:
    results: list[dict] = [{}] * len(texts)
    barrier = threading.Barrier(len(texts))

    def run(i: int) -> None:
        barrier.wait()
        results[i] = generate(url, texts[i], **sampling)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def cache_info(url: str) -> dict:
    return httpx.get(url + "/server_info", timeout=30).json()["cache"]


def flush(url: str) -> None:
    assert httpx.post(url + "/flush_cache", timeout=30).status_code == 200


@pytest.fixture(scope="module")
def small_engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Chunked prefill (48 tokens a step), a 600-token cache budget, per-request decode."""
    from ted_sglang.engine.launcher import launch_engine

    engine = launch_engine(
        tiny_model_dir,
        cache_tokens=600,
        extra_args=["--max-prefill-tokens", "48", "--attention-backend", "per-request"],
        log_path=tmp_path_factory.mktemp("small-engine") / "engine.log",
        timeout=180,
    )
    yield engine.url
    engine.close()


def test_greedy_tokens_same_cached_flushed_and_batched(engine_url: str) -> None:
    prompt = text_of(120, seed=1)
    flush(engine_url)
    cold = generate(engine_url, prompt)
    assert cold["meta_info"]["cached_tokens"] == 0
    warm = generate(engine_url, prompt)
    assert warm["meta_info"]["cached_tokens"] == warm["meta_info"]["prompt_tokens"] - 1
    assert warm["output_ids"] == cold["output_ids"]
    # The prompt's prefix cached by another request, its tail computed here.
    flush(engine_url)
    generate(engine_url, " ".join(prompt.split()[:60]), max_new_tokens=0)
    partial = generate(engine_url, prompt)
    assert 0 < partial["meta_info"]["cached_tokens"] < partial["meta_info"]["prompt_tokens"] - 1
    assert partial["output_ids"] == cold["output_ids"]
    # Decoded in a batch with requests of other lengths, prefilled together.
    flush(engine_url)
    others = [text_of(n, seed=10 + n) for n in (7, 33, 90, 150, 61)]
    batch = concurrently(engine_url, [*others, prompt])
    assert batch[-1]["output_ids"] == cold["output_ids"]
    for text, out in zip(others, batch, strict=False):
        assert generate(engine_url, text)["output_ids"] == out["output_ids"]


def test_concurrent_requests_compute_a_common_prefix_once(engine_url: str) -> None:
    prefix = text_of(300, seed=2)
    texts = [f"{prefix} and then branch number {i} goes on" for i in range(6)]
    flush(engine_url)
    before = cache_info(engine_url)
    outs = concurrently(engine_url, texts, max_new_tokens=4)
    after = cache_info(engine_url)
    cached = sorted(o["meta_info"]["cached_tokens"] for o in outs)
    prompt_tokens = outs[0]["meta_info"]["prompt_tokens"]
    assert cached[0] < 0.5 * prompt_tokens  # one request computed the prefix ...
    assert all(c > 0.9 * prompt_tokens for c in cached[1:])  # ... and the others reused it
    computed = after["computed_prompt_tokens"] - before["computed_prompt_tokens"]
    total = sum(o["meta_info"]["prompt_tokens"] for o in outs)
    assert computed == total - sum(cached)
    assert computed < 2 * prompt_tokens


def test_chunked_prefill_matches_one_shot(small_engine: str, engine_url: str) -> None:
    prompt = text_of(200, seed=3)  # several 48-token chunks
    chunked = generate(small_engine, prompt)
    whole = generate(engine_url, prompt)
    assert chunked["meta_info"]["prompt_tokens"] > 150
    assert chunked["output_ids"] == whole["output_ids"]
    # A long prefill does not stall a short request's decoding.
    outs = concurrently(small_engine, [text_of(400, seed=4), "short one"], max_new_tokens=8)
    assert all(o["meta_info"]["completion_tokens"] == 8 for o in outs)


def test_eviction_keeps_the_budget_and_recent_prefixes(small_engine: str) -> None:
    flush(small_engine)
    prompts = [text_of(60, seed=20 + i) for i in range(6)]  # ~100 tokens + outputs each
    for p in prompts:
        generate(small_engine, p)
    info = cache_info(small_engine)
    assert info["size_tokens"] <= info["budget_tokens"] == 600
    assert info["evicted_tokens"] > 0 and info["num_evictions"] > 0
    recent = generate(small_engine, prompts[-1])
    assert recent["meta_info"]["cached_tokens"] == recent["meta_info"]["prompt_tokens"] - 1
    oldest = generate(small_engine, prompts[0])
    assert oldest["meta_info"]["cached_tokens"] < oldest["meta_info"]["prompt_tokens"] - 1


def test_flush_is_refused_while_requests_run(small_engine: str) -> None:
    results: dict = {}

    def long_request() -> None:
        results["out"] = generate(small_engine, text_of(500, seed=5), max_new_tokens=64)

    thread = threading.Thread(target=long_request)
    thread.start()
    codes = set()
    while thread.is_alive():
        codes.add(httpx.post(small_engine + "/flush_cache", timeout=30).status_code)
    thread.join()
    assert 400 in codes  # busy: refused, as SGLang does
    assert results["out"]["meta_info"]["completion_tokens"] == 64
    assert httpx.post(small_engine + "/flush_cache", timeout=30).status_code == 200


def test_forks_decode_the_same_with_shared_or_per_request_attention(
    engine_url: str, small_engine: str
) -> None:
    prefix = text_of(80, seed=6)
    texts = [f"{prefix} and branch {i}" for i in range(5)]
    for url in (engine_url, small_engine):
        flush(url)
        generate(url, prefix, max_new_tokens=0)
    shared = concurrently(engine_url, texts, max_new_tokens=16)
    alone = concurrently(small_engine, texts, max_new_tokens=16)
    assert [o["output_ids"] for o in shared] == [o["output_ids"] for o in alone]
    info = httpx.get(engine_url + "/server_info", timeout=30).json()
    assert info["attention_backend"] == "shared-prefix"
