"""The radix tree: matching, inserting, splitting, locking, LRU eviction under a budget."""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ted_sglang.engine.radix_cache import RadixCache, common_prefix_len


def list_split(value: list[int], at: int) -> tuple[list[int], list[int]]:
    return value[:at], value[at:]


def make_cache(max_tokens: int = 1000) -> RadixCache:
    """Values are the tokens themselves, so every match can be checked against its key."""
    return RadixCache(max_tokens, split_value=list_split)


def insert(cache: RadixCache, key: list[int]):
    return cache.insert(key, lambda s, e: list(key[s:e]))


def flat(values: list[list[int]]) -> list[int]:
    return [t for v in values for t in v]


def test_common_prefix_len() -> None:
    assert common_prefix_len([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_len([], [1]) == 0
    long = list(range(1000))
    assert common_prefix_len(long, [*long[:500], -1, *long[501:]]) == 500
    assert common_prefix_len(long, [*long, 1]) == 1000


def test_match_insert_and_split() -> None:
    cache = make_cache()
    assert cache.match_prefix([1, 2, 3]).length == 0
    node, added = insert(cache, [1, 2, 3, 4, 5])
    assert added == 5 and cache.total_tokens == 5
    m = cache.match_prefix([1, 2, 3, 9])
    assert m.length == 3 and flat(m.values) == [1, 2, 3]
    assert m.node.key == [1, 2, 3]  # the node was split where the match ended
    _, added = insert(cache, [1, 2, 3, 7, 8])
    assert added == 2 and cache.total_tokens == 7
    assert flat(cache.match_prefix([1, 2, 3, 7, 8, 9]).values) == [1, 2, 3, 7, 8]
    assert cache.match_prefix([1, 2, 3, 4, 5], limit=4).length == 4
    node, added = insert(cache, [1, 2])
    assert added == 0 and node.key == [1, 2]


def test_tensor_values_split_on_the_token_axis() -> None:
    cache = RadixCache(100)
    kv = torch.arange(2 * 2 * 1 * 6 * 3, dtype=torch.float32).reshape(2, 2, 1, 6, 3)
    key = [5, 6, 7, 8, 9, 10]
    cache.insert(key, lambda s, e: kv[:, :, :, s:e].clone())
    m = cache.match_prefix([5, 6, 7, 0])
    assert m.length == 3
    assert torch.equal(torch.cat(m.values, dim=3), kv[:, :, :, :3])
    m = cache.match_prefix(key)
    assert torch.equal(torch.cat(m.values, dim=3), kv)


def test_lru_eviction_keeps_locked_and_recent() -> None:
    cache = make_cache(max_tokens=10)
    a, _ = insert(cache, [1, 1, 1, 1])
    time.sleep(0.001)
    insert(cache, [2, 2, 2, 2])
    time.sleep(0.001)
    cache.lock(a)
    cache.match_prefix([2, 2])  # touch: [2, 2, ...] is now more recent than [1, ...]
    time.sleep(0.001)
    insert(cache, [3, 3, 3, 3])  # 12 > 10: something must go, and [1, ...] is locked
    assert cache.total_tokens <= 10
    assert cache.match_prefix([1, 1, 1, 1]).length == 4
    assert cache.match_prefix([3, 3, 3, 3]).length == 4
    assert cache.match_prefix([2, 2, 2, 2]).length < 4
    assert cache.evicted_tokens >= 2 and cache.num_evictions >= 1
    cache.unlock(a)
    size = cache.total_tokens
    assert cache.evict(100) == size and cache.total_tokens == 0


def test_locked_nodes_may_overflow_the_budget() -> None:
    cache = make_cache(max_tokens=4)
    node, _ = insert(cache, [1, 2, 3, 4])
    cache.lock(node)
    insert(cache, [9, 9, 9])
    assert cache.match_prefix([1, 2, 3, 4]).length == 4
    cache.unlock(node)
    with pytest.raises(AssertionError):
        cache.unlock(node)


def test_disabled_cache_stores_nothing() -> None:
    cache = make_cache(max_tokens=0)
    insert(cache, [1, 2, 3])
    assert cache.total_tokens == 0 and cache.match_prefix([1, 2, 3]).length == 0


def test_reset_refuses_while_locked() -> None:
    cache = make_cache()
    node, _ = insert(cache, [1, 2, 3])
    cache.lock(node)
    with pytest.raises(AssertionError):
        cache.reset()
    cache.unlock(node)
    cache.reset()
    assert cache.total_tokens == 0 and cache.match_prefix([1, 2]).length == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=12), min_size=1, max_size=20),
    st.lists(st.integers(0, 3), max_size=14),
)
def test_match_is_longest_common_prefix_with_any_inserted_key(keys, probe) -> None:
    cache = make_cache(max_tokens=10_000)
    for key in keys:
        insert(cache, key)
    m = cache.match_prefix(probe)
    assert m.length == max(common_prefix_len(k, probe) for k in keys)
    assert flat(m.values) == probe[: m.length]
    distinct_prefixes = {tuple(k[:i]) for k in keys for i in range(1, len(k) + 1)}
    assert cache.total_tokens == len(distinct_prefixes)
