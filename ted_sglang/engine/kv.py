"""One request's KV: positions read in place from the radix cache, then its own buffer.

Layout everywhere: ``[layers, 2 (K, V), kv_heads, tokens, head_dim]``; a radix
node's value covers exactly the node's tokens in that layout.

With per-request storage a request copies its cached prefix into its own buffer
(:meth:`SequenceKV.extend_from`). With shared storage it points at the cache path
that spells its first ``prefix_len`` tokens instead (:meth:`SequenceKV.share_prefix`)
and owns only the tokens after them, so requests over one cached prefix (the
branches of a fork) hold a single copy of it: the tree's. The path's nodes are
locked by the request, so they stay; a split of one of them only inserts a node
above it, and the values are always read from the tree as it is now.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def path_values(node: Any) -> list[torch.Tensor]:
    """Values of the radix nodes from the root's child down to ``node``, in order."""
    values = []
    while node is not None and node.value is not None:
        values.append(node.value)
        node = node.parent
    values.reverse()
    return values


class SequenceKV:
    """K and V of one request for every layer, positions ``0 .. length``.

    Positions below ``prefix_len`` are the values of the cache path ending at
    ``prefix_node`` (shared, read-only); ``buffer`` holds positions ``prefix_len ..``.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: Any,
        device: Any,
    ) -> None:
        import torch

        self.buffer = torch.empty(
            (num_layers, 2, num_kv_heads, capacity, head_dim), dtype=dtype, device=device
        )
        self.length = 0
        self.prefix_node: Any = None  # radix TreeNode whose path spells the prefix
        self.prefix_len = 0

    @property
    def capacity(self) -> int:
        return self.prefix_len + self.buffer.shape[3]

    @property
    def own_len(self) -> int:
        """Tokens held in ``buffer``."""
        return self.length - self.prefix_len

    def _regrow(self, own_capacity: int, drop: int) -> None:
        """New buffer of ``own_capacity`` tokens keeping own tokens ``drop ..``."""
        import torch

        shape = list(self.buffer.shape)
        shape[3] = own_capacity
        grown = torch.empty(shape, dtype=self.buffer.dtype, device=self.buffer.device)
        kept = self.own_len - drop
        if kept > 0:
            grown[:, :, :, :kept].copy_(self.buffer[:, :, :, drop : self.own_len])
        self.buffer = grown

    def ensure_capacity(self, num_tokens: int) -> None:
        """Grow (by doubling, at least to ``num_tokens``) so that many tokens fit."""
        if num_tokens <= self.capacity:
            return
        own = self.buffer.shape[3]
        self._regrow(max(num_tokens - self.prefix_len, 2 * own), 0)

    def extend_from(self, values: Sequence[torch.Tensor]) -> None:
        """Append cached segments (radix node values, in prefix order) as own copies."""
        for value in values:
            n = value.shape[3]
            assert self.length + n <= self.capacity
            start = self.own_len
            self.buffer[:, :, :, start : start + n].copy_(value)
            self.length += n

    def share_prefix(self, node: Any, length: int) -> None:
        """Read positions ``[0, length)`` from the cache path ending at ``node`` from now on.

        On a new request this replaces :meth:`extend_from`; on one that computed
        those tokens itself (and put them in the cache) it frees its own copy of
        them. Capacity is unchanged.
        """
        assert self.prefix_len <= length and sum(v.shape[3] for v in path_values(node)) == length
        if length == self.prefix_len and node is self.prefix_node:
            return
        capacity = self.capacity
        drop = min(length, self.length) - self.prefix_len
        self._regrow(max(capacity - length, 1), drop)
        self.prefix_node, self.prefix_len = node, length
        self.length = max(self.length, length)

    def write(self, layer: int, start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store ``key``/``value`` ``[kv_heads, n, head_dim]`` at positions ``start ..``."""
        assert start >= self.prefix_len, "cannot overwrite shared prefix KV"
        begin = start - self.prefix_len
        end = begin + key.shape[1]
        self.buffer[layer, 0, :, begin:end] = key
        self.buffer[layer, 1, :, begin:end] = value

    def parts(self, end: int | None = None) -> list[torch.Tensor]:
        """Tensors covering positions ``[0, end)`` in order: the cache path, then own tokens."""
        end = self.length if end is None else end
        assert self.prefix_len <= end <= self.capacity
        out = path_values(self.prefix_node)
        if end > self.prefix_len or not out:
            out.append(self.buffer[:, :, :, : end - self.prefix_len])
        return out

    def layer_kv(self, layer: int, end: int) -> torch.Tensor:
        """``[2, kv_heads, end, head_dim]`` of one layer (a copy only when shared parts exist)."""
        import torch

        parts = [p[layer] for p in self.parts(end)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    def segment(self, start: int, end: int) -> torch.Tensor:
        """A copy of tokens ``[start, end)``, in the radix cache's layout."""
        import torch

        assert 0 <= start <= end <= self.length
        pieces, pos = [], 0
        for part in self.parts():
            n = part.shape[3]
            lo, hi = max(start, pos), min(end, pos + n)
            if lo < hi:
                pieces.append(part[:, :, :, lo - pos : hi - pos])
            pos += n
        if not pieces:
            return self.buffer[:, :, :, :0].clone()
        return pieces[0].clone() if len(pieces) == 1 else torch.cat(pieces, dim=3)
