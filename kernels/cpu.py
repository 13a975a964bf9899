"""Shared-prefix decode on the CPU through PyTorch's fused flash attention.

What :func:`ted_sglang.kernels.shared_prefix_decode` runs for float32 CPU tensors
with ``backend="auto"`` when the prefix and every fork's suffix are non-empty (the
engine's decode steps); anything else goes to the torch reference
(``reference.py``). Same math in three calls: all ``N * group`` query rows of a KV
head attend the single prefix copy (one fused kernel, which also returns the
log-sum-exp); the same rows attend the concatenated suffixes with every other
fork's rows masked out; the two partials are merged by their LSEs. On a small
CPU the cost of a decode step is mostly the number of tensor operations, which
this keeps to about ten per call.
"""

from __future__ import annotations

import functools
import itertools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def fast_path_applies(q: torch.Tensor, prefix_len: int, suffix_indptr: tuple[int, ...]) -> bool:
    """float32 CPU inputs, a non-empty prefix and a non-empty suffix for every fork."""
    import torch

    if q.is_cuda or q.dtype != torch.float32 or prefix_len == 0 or q.shape[0] == 0:
        return False
    if not hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return False
    return all(a < b for a, b in itertools.pairwise(suffix_indptr))


@functools.lru_cache(maxsize=16)
def _suffix_bias(suffix_indptr: tuple[int, ...], group: int) -> torch.Tensor:
    """``[N * group, total_S]`` additive mask: 0 where a query row may see a suffix row."""
    import torch

    num_forks = len(suffix_indptr) - 1
    lengths = torch.tensor(suffix_indptr).diff()
    owner = torch.repeat_interleave(torch.arange(num_forks), lengths)  # fork of each suffix row
    row_fork = torch.arange(num_forks).repeat_interleave(group)
    visible = row_fork.unsqueeze(1) == owner.unsqueeze(0)
    return torch.where(visible, 0.0, float("-inf")).to(torch.float32)


def shared_prefix_decode_cpu(
    q: torch.Tensor,
    k_prefix: torch.Tensor,
    v_prefix: torch.Tensor,
    k_suffix: torch.Tensor,
    v_suffix: torch.Tensor,
    suffix_indptr: tuple[int, ...],
    sm_scale: float,
) -> torch.Tensor:
    """``q [N, Hq, D]``, ``k/v_prefix [P, Hkv, D]``, ``k/v_suffix [total_S, Hkv, D]`` ->
    ``[N, Hq, D]``; ``suffix_indptr`` as a tuple of ints (its masks are cached). Only under
    the preconditions of :func:`fast_path_applies`; inputs checked by the caller.
    """
    import torch

    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    num_forks, num_qo_heads, head_dim = q.shape
    num_kv_heads = k_prefix.shape[1]
    group = num_qo_heads // num_kv_heads
    # [1, Hkv, N * group, D]: row (n, g) of KV head h is query n, head h * group + g.
    qh = q.reshape(num_forks, num_kv_heads, group, head_dim).permute(1, 0, 2, 3)
    qh = qh.reshape(1, num_kv_heads, num_forks * group, head_dim)

    def heads_first(x: torch.Tensor) -> torch.Tensor:
        return x.permute(1, 0, 2).unsqueeze(0)  # [1, Hkv, L, D]

    out_prefix, lse_prefix = flash(qh, heads_first(k_prefix), heads_first(v_prefix), scale=sm_scale)
    bias = _suffix_bias(suffix_indptr, group)
    out_suffix, lse_suffix = flash(
        qh, heads_first(k_suffix), heads_first(v_suffix), attn_mask=bias, scale=sm_scale
    )
    # softmax over both key sets = lerp of the partials by the prefix's share of the mass
    weight = torch.sigmoid(lse_prefix - lse_suffix).unsqueeze(-1)
    out = torch.lerp(out_suffix, out_prefix, weight)
    out = out.reshape(num_kv_heads, num_forks, group, head_dim).permute(1, 0, 2, 3)
    return out.reshape(num_forks, num_qo_heads, head_dim)
