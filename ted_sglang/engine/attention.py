"""The attention that reads engine-owned KV.

The model's attention layers are routed (through transformers'
``AttentionInterface``) to :func:`engine_attention`, which hands each layer's
new queries, keys and values to the :class:`AttentionBackend` of the batch being
run. All requests of a step are packed into one row of tokens; the backend
writes each request's new K/V into that request's :class:`SequenceKV` and
attends its queries over everything the request has so far.

:class:`AttentionBackend` (``--attention-backend per-request``) gives every request
its own copy of its KV and attends each decode token alone.
:class:`SharedPrefixBackend` (``shared-prefix``) goes with shared storage: requests
read their cached prefix in place from the radix tree (see ``kv.py``), and requests
decoding over the same chain of cached nodes (the branches of a fork) attend it once
per step, all their queries stacked, through ``ted_sglang.kernels.shared_prefix_decode``
(Triton on CUDA, its torch path elsewhere); ``decode_groups.py`` forms the groups.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ted_sglang.engine.decode_groups import DecodeGroup, JoinedChains, group_decodes
from ted_sglang.engine.kv import SequenceKV

if TYPE_CHECKING:
    import torch

ATTENTION_NAME = "ted_sglang_engine"
_active = threading.local()

__all__ = [
    "ATTENTION_NAME",
    "AttentionBackend",
    "Segment",
    "SequenceKV",
    "SharedPrefixBackend",
    "active_backend",
    "engine_attention",
    "register_attention",
]


@dataclass
class Segment:
    """``num_tokens`` new tokens of one request at positions ``start...``, packed at ``offset``."""

    kv: SequenceKV
    start: int
    num_tokens: int
    offset: int


class AttentionBackend:
    """Attention over engine-owned KV for one packed batch (prefill chunks, then decodes)."""

    shares_prefix_kv = False  # whether requests read cached prefixes in place (kv.py)

    def __init__(self, segments: list[Segment], chains: JoinedChains | None = None) -> None:
        """``chains``: the model runner's store of joined prefixes (shared-prefix only)."""
        self.segments = segments

    def forward(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """``query [1, Hq, T, D]``, ``key/value [1, Hkv, T, D]`` -> ``[1, T, Hq, D]``."""
        import torch

        out = torch.empty(
            (1, query.shape[2], query.shape[1], query.shape[3]),
            dtype=query.dtype,
            device=query.device,
        )
        decodes = []
        for seg in self.segments:
            end = seg.offset + seg.num_tokens
            new_k, new_v = key[0, :, seg.offset : end], value[0, :, seg.offset : end]
            seg.kv.write(layer, seg.start, new_k, new_v)
            if seg.num_tokens == 1:
                decodes.append(seg)
            else:
                out[0, seg.offset : end] = self.prefill(layer, seg, query, scale)
        if decodes:
            self.decode(layer, decodes, query, out, scale)
        return out

    def prefill(self, layer: int, seg: Segment, query: torch.Tensor, scale: float) -> torch.Tensor:
        """Causal attention of a chunk over its request's KV; returns ``[n, Hq, D]``."""
        import torch
        import torch.nn.functional as F

        n, total = seg.num_tokens, seg.start + seg.num_tokens
        q = query[:, :, seg.offset : seg.offset + n]
        kv = seg.kv.layer_kv(layer, total).unsqueeze(1)  # [2, 1, Hkv, total, D]
        if seg.start == 0:
            o = F.scaled_dot_product_attention(
                q, kv[0], kv[1], is_causal=True, scale=scale, enable_gqa=True
            )
        else:
            rows = torch.arange(seg.start, total, device=q.device).unsqueeze(1)
            mask = torch.arange(total, device=q.device).unsqueeze(0) <= rows
            o = F.scaled_dot_product_attention(
                q, kv[0], kv[1], attn_mask=mask, scale=scale, enable_gqa=True
            )
        return o[0].transpose(0, 1)

    def decode(
        self,
        layer: int,
        segments: list[Segment],
        query: torch.Tensor,
        out: torch.Tensor,
        scale: float,
    ) -> None:
        """One new token per request: attend it over all of that request's KV (into ``out``)."""
        import torch.nn.functional as F

        for seg in segments:
            q = query[:, :, seg.offset : seg.offset + 1]
            kv = seg.kv.layer_kv(layer, seg.start + 1).unsqueeze(1)
            o = F.scaled_dot_product_attention(q, kv[0], kv[1], scale=scale, enable_gqa=True)
            out[0, seg.offset] = o[0, :, 0]


class SharedPrefixBackend(AttentionBackend):
    """Decodes requests over a common cached prefix reading that prefix once per step.

    A group's queries, stacked, attend the shared chain of cached nodes once and each
    member's other KV (ragged), merged by log-sum-exp:
    ``ted_sglang.kernels.shared_prefix_decode`` (Triton on CUDA, a fused CPU path
    elsewhere). A chain of one node is read in place; a longer one (a prefix prefilled
    in chunks, or cached by several requests in turn) as the copy ``chains`` keeps
    while it is read (see ``decode_groups.py``). Requests without a cached prefix
    decode as in :class:`AttentionBackend`.
    """

    shares_prefix_kv = True

    def __init__(self, segments: list[Segment], chains: JoinedChains | None = None) -> None:
        super().__init__(segments, chains)
        self._chains = chains if chains is not None else JoinedChains()
        self._groups: list[DecodeGroup] | None = None  # the same in every layer
        self._alone: list[Segment] = []
        if not any(seg.num_tokens == 1 for seg in segments):
            self._chains.join([])  # nothing decodes: no joined prefix is needed any more

    def decode(
        self,
        layer: int,
        segments: list[Segment],
        query: torch.Tensor,
        out: torch.Tensor,
        scale: float,
    ) -> None:
        if self._groups is None:
            self._groups, self._alone = group_decodes(segments, self._chains)
        for group in self._groups:
            self.decode_group(layer, group, query, out, scale)
        if self._alone:
            super().decode(layer, self._alone, query, out, scale)

    def decode_group(
        self,
        layer: int,
        group: DecodeGroup,
        query: torch.Tensor,
        out: torch.Tensor,
        scale: float,
    ) -> None:
        """Shared-prefix decode of one group's queries into their rows of ``out``."""
        import torch

        from ted_sglang.kernels import plan_shared_prefix_decode, shared_prefix_decode

        pieces = [p[layer] for parts in group.suffixes for p in parts]  # [2, Hkv, n, D] each
        suffix = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)
        assert group.prefix is not None
        prefix = group.prefix[layer]
        num_q_heads, (num_kv_heads, head_dim) = query.shape[1], prefix.shape[1::2]
        if group.plan is None:
            lengths = [sum(p.shape[3] for p in parts) for parts in group.suffixes]
            group.indptr = torch.tensor([0, *lengths]).cumsum(0)
            group.plan = plan_shared_prefix_decode(
                group.indptr.tolist(),
                prefix.shape[2],
                num_q_heads,
                num_kv_heads,
                head_dim,
                num_sms=None if query.is_cuda else 1,
            )
            group.row_index = torch.tensor(group.rows, device=query.device)
        rows = group.row_index
        assert group.indptr is not None and rows is not None
        result = shared_prefix_decode(
            query[0].index_select(1, rows).transpose(0, 1),  # [N, Hq, D]
            prefix[0].transpose(0, 1),  # [P, Hkv, D]
            prefix[1].transpose(0, 1),
            suffix[0].transpose(0, 1),  # [total_S, Hkv, D]
            suffix[1].transpose(0, 1),
            group.indptr,
            scale,
            plan=group.plan,
        )
        out[0].index_copy_(0, rows, result.to(out.dtype))


def engine_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers attention function: delegates to the active :class:`AttentionBackend`."""
    backend: AttentionBackend | None = getattr(_active, "backend", None)
    assert backend is not None, "engine attention called outside ModelRunner.forward"
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return backend.forward(module.layer_idx, query, key, value, scale), None


def register_attention() -> None:
    """Make ``ATTENTION_NAME`` a transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, engine_attention)


class active_backend:
    """Context manager: route this thread's engine attention to ``backend``."""

    def __init__(self, backend: AttentionBackend) -> None:
        self.backend = backend

    def __enter__(self) -> AttentionBackend:
        _active.backend = self.backend
        return self.backend

    def __exit__(self, *exc: object) -> None:
        _active.backend = None
