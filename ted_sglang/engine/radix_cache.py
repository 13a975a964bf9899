"""A radix tree over token ids whose nodes hold the KV of the prefixes they spell.

Each edge carries a run of token ids and the value computed for exactly those
tokens (in the engine: the K and V of every layer, ``[layers, 2, kv_heads, n,
head_dim]``). A request matches its prompt against the tree, copies or reads
the matched values, and inserts what it computed. Nodes in use are locked
(``lock_ref`` counts the requests below them) and never evicted; unlocked leaves
go least recently used first when the tree holds more tokens than its budget.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

SplitFn = Callable[[Any, int], tuple[Any, Any]]
ValueFn = Callable[[int, int], Any]


def split_tensor_value(value: Any, at: int) -> tuple[Any, Any]:
    """Split a KV tensor ``[..., n, head_dim]`` into its first ``at`` tokens and the rest."""
    return value[..., :at, :].clone(), value[..., at:, :].clone()


class TreeNode:
    __slots__ = ("children", "key", "last_access", "lock_ref", "parent", "value")

    def __init__(self, key: list[int], value: Any, parent: TreeNode | None) -> None:
        self.key = key
        self.value = value
        self.parent = parent
        self.children: dict[int, TreeNode] = {}
        self.lock_ref = 0
        self.last_access = time.monotonic()

    @property
    def is_leaf(self) -> bool:
        return not self.children


@dataclass
class MatchResult:
    """``length`` tokens matched; ``node`` ends exactly there; ``values`` spell them in order."""

    length: int
    node: TreeNode
    values: list[Any]


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo = 0
    while n - lo > 32:  # bisect on slices (C-speed compares), then scan the last few
        mid = (lo + n) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            n = mid
    while lo < n and a[lo] == b[lo]:
        lo += 1
    return lo


class RadixCache:
    """Token-id radix tree with a token budget and LRU eviction of unlocked leaves.

    ``max_tokens == 0`` disables it: nothing matches and nothing is stored.
    """

    def __init__(self, max_tokens: int, split_value: SplitFn = split_tensor_value) -> None:
        assert max_tokens >= 0
        self.max_tokens = max_tokens
        self.split_value = split_value
        self.root = TreeNode([], None, None)
        self.root.lock_ref = 1  # the root is never evicted
        self.total_tokens = 0
        self.evicted_tokens = 0
        self.num_evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_tokens > 0

    def match_prefix(self, key: Sequence[int], limit: int | None = None) -> MatchResult:
        """Longest cached prefix of ``key[:limit]``; splits a node so the match ends on one."""
        if limit is not None:
            key = key[:limit]
        node, pos, values = self.root, 0, []
        now = time.monotonic()
        while pos < len(key) and key[pos] in node.children:
            child = node.children[key[pos]]
            n = common_prefix_len(child.key, key[pos:])
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            values.append(child.value)
            node, pos = child, pos + n
        return MatchResult(pos, node, values)

    def insert(self, key: Sequence[int], value_fn: ValueFn) -> tuple[TreeNode, int]:
        """Make ``key`` a path of the tree; ``value_fn(start, end)`` gives the missing values.

        Returns the node that ends at ``len(key)`` and the number of tokens added.
        Evicts unlocked leaves afterwards if the tree is over budget.
        """
        if not self.enabled or not key:
            return self.root, 0
        node, pos = self.root, 0
        now = time.monotonic()
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                leaf = TreeNode(list(key[pos:]), value_fn(pos, len(key)), node)
                node.children[key[pos]] = leaf
                self.total_tokens += len(leaf.key)
                added, node = len(leaf.key), leaf
                break
            n = common_prefix_len(child.key, key[pos:])
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            node, pos = child, pos + n
        else:
            added = 0
        if self.total_tokens > self.max_tokens:
            # Keep the new path while evicting to make room for it.
            self.lock(node)
            self.evict(self.total_tokens - self.max_tokens)
            self.unlock(node)
        return node, added

    def lock(self, node: TreeNode) -> None:
        """Protect ``node`` and its ancestors from eviction (one count per caller)."""
        while node is not None:
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: TreeNode) -> None:
        while node is not None:
            assert node.lock_ref > 0, "unlock without lock"
            node.lock_ref -= 1
            node = node.parent

    def evict(self, num_tokens: int) -> int:
        """Drop least recently used unlocked leaves until ``num_tokens`` are freed."""
        counter = itertools.count()
        heap = [(leaf.last_access, next(counter), leaf) for leaf in self._evictable_leaves()]
        heapq.heapify(heap)
        freed = 0
        while freed < num_tokens and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            freed += len(leaf.key)
            self.num_evictions += 1
            if parent is not self.root and parent.is_leaf and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access, next(counter), parent))
        self.total_tokens -= freed
        self.evicted_tokens += freed
        return freed

    def reset(self) -> None:
        """Empty the tree; only when no request holds a lock."""
        assert all(child.lock_ref == 0 for child in self.root.children.values()), (
            "reset while requests hold cached prefixes"
        )
        self.root.children.clear()
        self.total_tokens = 0

    @property
    def locked_tokens(self) -> int:
        return sum(len(n.key) for n in self._nodes() if n.lock_ref > 0)

    def _nodes(self) -> list[TreeNode]:
        out, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def _evictable_leaves(self) -> list[TreeNode]:
        return [n for n in self._nodes() if n.is_leaf and n.lock_ref == 0]

    def _split(self, node: TreeNode, at: int) -> TreeNode:
        """Cut ``node`` after ``at`` tokens; returns the new upper half (same parent)."""
        assert 0 < at < len(node.key)
        head_value, tail_value = self.split_value(node.value, at)
        head = TreeNode(node.key[:at], head_value, node.parent)
        head.lock_ref = node.lock_ref
        head.last_access = node.last_access
        head.children = {node.key[at]: node}
        node.parent.children[node.key[0]] = head
        node.parent = head
        node.key = node.key[at:]
        node.value = tail_value
        return head
