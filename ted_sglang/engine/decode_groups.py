"""Which decoding requests read which cached KV once per step, together.

The branches of a fork decode over one cached prefix. That prefix is a chain of
radix nodes (a prompt prefilled in chunks caches one node per chunk; a prefix
cached by several requests in turn is cut where each one stopped), and every
request's cache path starts at the root: requests that read a node read every
node above it too. So a group's shared prefix is a chain from the root down to
one node, and the shared-prefix kernel, which takes one prefix tensor per group,
gets that whole chain: a single node read in place, several joined into one
copy by :class:`JoinedChains`, which keeps the copy for as long as the chain is
read (the forks' whole decode), not one copy per step or per layer.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ted_sglang.engine.attention import Segment
    from ted_sglang.kernels import SharedPrefixDecodePlan


class JoinedChains:
    """One contiguous copy of each chain of cache node values that decode groups read.

    Node values are never written in place (a split makes new tensors), so a chain of
    the same value objects is the same KV and its copy stays valid. Each step's
    :meth:`join` keeps the copies of that step's chains and drops the others, and the
    scheduler clears them when no request is left: memory is one copy per multi-node
    prefix being decoded over (per-request storage holds one per request), outside the
    radix cache's token budget. Not thread-safe: one per model runner, used by its
    forward.
    """

    def __init__(self) -> None:
        self._copies: dict[tuple[int, ...], tuple[tuple[torch.Tensor, ...], torch.Tensor]] = {}
        self.joins = 0  # copies made so far

    def join(self, chains: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """Each chain (node values in path order) as one ``[layers, 2, Hkv, P, D]`` tensor.

        A single node is its own value; a longer chain is joined on first use and the
        copy reused while consecutive calls ask for it.
        """
        import torch

        kept: dict[tuple[int, ...], tuple[tuple[torch.Tensor, ...], torch.Tensor]] = {}
        out = []
        for chain in chains:
            if len(chain) == 1:
                out.append(chain[0])
                continue
            key = tuple(id(value) for value in chain)  # the entry holds the values: ids stay theirs
            entry = kept.get(key) or self._copies.get(key)
            if entry is None:
                entry = (tuple(chain), torch.cat(chain, dim=3))
                self.joins += 1
            kept[key] = entry
            out.append(entry[1])
        self._copies = kept
        return out

    def clear(self) -> None:
        """Drop every copy (nothing decodes)."""
        self._copies = {}

    @property
    def num_copies(self) -> int:
        """Copies held now."""
        return len(self._copies)


@dataclass
class DecodeGroup:
    """Decoding requests that read one chain of cached nodes as one shared prefix.

    ``prefix`` is that chain's KV (``[layers, 2, Hkv, P, D]``), attended once for
    all ``rows`` (the members' packed query offsets); ``suffixes[i]`` are member
    ``i``'s other KV pieces (the rest of its cache path, then its own buffer).
    """

    rows: list[int]
    chain: list[torch.Tensor]
    suffixes: list[list[torch.Tensor]]
    prefix: torch.Tensor | None = None  # the chain as one tensor, set by group_decodes
    indptr: torch.Tensor | None = None  # the rest, set on the first layer
    plan: SharedPrefixDecodePlan | None = None
    row_index: torch.Tensor | None = None


def group_decodes(
    segments: list[Segment], chains: JoinedChains | None = None
) -> tuple[list[DecodeGroup], list[Segment]]:
    """Group decode segments by the chain of cached nodes each reads as its shared prefix.

    Every member takes the chain from the root down to the node of its cache path with
    the largest (decoding requests reading that node) x (tokens from the root to its
    end), i.e. the most KV read once instead of many times; members taking the same
    node form a group. ``chains`` joins multi-node chains (a fresh :class:`JoinedChains`,
    so a copy per call, when not given). Segments without a cache path are returned apart.
    """
    paths = {id(seg): seg.kv.parts(seg.start + 1)[:-1] for seg in segments}
    readers = Counter(id(value) for path in paths.values() for value in path)
    groups: dict[int, DecodeGroup] = {}
    alone = []
    for seg in segments:
        path = paths[id(seg)]
        if not path:
            alone.append(seg)
            continue
        ends = list(itertools.accumulate(value.shape[3] for value in path))
        best = max(range(len(path)), key=lambda i: readers[id(path[i])] * ends[i])
        group = groups.get(id(path[best]))
        if group is None:
            group = groups[id(path[best])] = DecodeGroup([], path[: best + 1], [])
        group.rows.append(seg.offset)
        rest = path[best + 1 :]
        rest.append(seg.kv.buffer[:, :, :, : seg.start + 1 - seg.kv.prefix_len])
        group.suffixes.append(rest)
    out = list(groups.values())
    joined = (chains or JoinedChains()).join([group.chain for group in out])
    for group, prefix in zip(out, joined, strict=True):
        group.prefix = prefix
    return out, alone
