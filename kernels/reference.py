"""Shared-prefix decode attention in plain torch.

This is the CPU path of :func:`ted_sglang.kernels.shared_prefix_decode` and the
reference the Triton kernels are tested against. The prefix is attended by all
``N * group`` query rows in one batched matmul against the single prefix copy; the
suffixes are gathered into a padded batch; the two partial attentions are merged
through their log-sum-exp.

Conventions shared by every function here:

* ``lse`` is the natural-log log-sum-exp of the scaled scores,
  ``lse = log(sum_j exp(sm_scale * q . k_j))``.
* An empty key set gives ``out = 0`` and ``lse = -inf``; merging with it is a no-op,
  and a query with no keys at all gets a zero output.
* Outputs are float32 (float64 for float64 inputs): partial states are combined
  before anything is rounded to the inputs' dtype.
* GQA: query head ``h`` reads KV head ``h // (Hq // Hkv)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    import torch

    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int]:
    if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape:
        raise ValueError(
            f"expected q [Lq, Hq, D] and k, v of the same shape [Lk, Hkv, D]; got q "
            f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    num_qo_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k.shape[1]
    if k.shape[2] != head_dim or num_kv_heads == 0 or num_qo_heads % num_kv_heads:
        raise ValueError(
            f"head_dim must match and Hq must be a multiple of Hkv; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}"
        )
    return num_qo_heads, num_kv_heads, head_dim


def attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every query row attends to every key (no mask); returns the output and its LSE.

    Args:
        q: ``[num_queries, num_qo_heads, head_dim]``.
        k, v: ``[num_keys, num_kv_heads, head_dim]``; ``num_kv_heads`` divides
            ``num_qo_heads`` (GQA). ``num_keys`` may be 0.
        sm_scale: softmax scale, default ``1 / sqrt(head_dim)``.

    Returns:
        ``out [num_queries, num_qo_heads, head_dim]`` and ``lse [num_queries,
        num_qo_heads]`` (natural log), float32 (float64 for float64 inputs). With no
        keys: ``out = 0``, ``lse = -inf``.

    All queries of one KV head go through a single batched matmul, so a shared prefix
    is read once for all of them.

    Example:
        >>> import torch
        >>> q, k = torch.randn(4, 8, 64), torch.randn(100, 2, 64)
        >>> out, lse = attention_with_lse(q, k, k)
        >>> out.shape, lse.shape
        (torch.Size([4, 8, 64]), torch.Size([4, 8]))
    """
    import torch

    num_qo_heads, num_kv_heads, head_dim = _check_heads(q, k, v)
    scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale)
    acc = _acc_dtype(q.dtype)
    num_queries, num_keys = q.shape[0], k.shape[0]
    group = num_qo_heads // num_kv_heads
    if num_keys == 0:
        out = torch.zeros(q.shape, dtype=acc, device=q.device)
        lse = torch.full(q.shape[:2], float("-inf"), dtype=acc, device=q.device)
        return out, lse
    # [Hkv, num_queries * group, D]: row (n, g) is query n, head kv_head * group + g.
    qh = q.to(acc).reshape(num_queries, num_kv_heads, group, head_dim).permute(1, 0, 2, 3)
    qh = qh.reshape(num_kv_heads, num_queries * group, head_dim)
    kh = k.to(acc).permute(1, 2, 0)  # [Hkv, D, num_keys]
    vh = v.to(acc).permute(1, 0, 2)  # [Hkv, num_keys, D]
    scores = torch.bmm(qh, kh).mul_(scale)
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.bmm(scores.sub_(lse.unsqueeze(-1)).exp_(), vh)
    out = out.reshape(num_kv_heads, num_queries, group, head_dim).permute(1, 0, 2, 3)
    lse = lse.reshape(num_kv_heads, num_queries, group).permute(1, 0, 2)
    return (
        out.reshape(num_queries, num_qo_heads, head_dim),
        lse.reshape(num_queries, num_qo_heads),
    )


def ragged_attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indptr: torch.Tensor,
    sm_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query ``i`` attends to its own key rows ``indptr[i]:indptr[i + 1]``.

    Args:
        q: ``[N, num_qo_heads, head_dim]``.
        k, v: ``[total_keys, num_kv_heads, head_dim]``.
        indptr: ``[N + 1]`` integer offsets, ``indptr[0] = 0``, non-decreasing,
            ``indptr[N] = total_keys`` (not checked here).
        sm_scale: softmax scale, default ``1 / sqrt(head_dim)``.

    Returns:
        ``out [N, num_qo_heads, head_dim]``, ``lse [N, num_qo_heads]`` (natural log),
        float32 (float64 for float64 inputs); a query with no rows gets ``0`` / ``-inf``.

    Example:
        >>> import torch
        >>> q, k = torch.randn(2, 4, 64), torch.randn(5, 4, 64)
        >>> out, lse = ragged_attention_with_lse(q, k, k, torch.tensor([0, 3, 5]))
        >>> out.shape, lse.shape
        (torch.Size([2, 4, 64]), torch.Size([2, 4]))
    """
    import torch

    num_qo_heads, num_kv_heads, head_dim = _check_heads(q, k, v)
    scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale)
    acc = _acc_dtype(q.dtype)
    num_queries = q.shape[0]
    group = num_qo_heads // num_kv_heads
    starts = indptr[:-1].to(device=q.device, dtype=torch.long)
    lengths = indptr[1:].to(device=q.device, dtype=torch.long) - starts
    max_len = int(lengths.max()) if num_queries else 0
    if max_len == 0:
        return attention_with_lse(q, k[:0], v[:0], scale)
    offs = torch.arange(max_len, device=q.device)
    valid = offs[None, :] < lengths[:, None]  # [N, max_len]
    rows = (starts[:, None] + offs[None, :]).clamp_(max=k.shape[0] - 1)
    kp = k[rows].to(acc)  # [N, max_len, Hkv, D]
    vp = v[rows].to(acc)
    qg = q.to(acc).reshape(num_queries, num_kv_heads, group, head_dim)
    scores = torch.einsum("nhgd,nshd->nhgs", qg, kp).mul_(scale)
    scores.masked_fill_(~valid[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # -inf where a query has no rows
    lse_safe = torch.where(torch.isneginf(lse), 0.0, lse)
    probs = scores.sub_(lse_safe.unsqueeze(-1)).exp_()
    out = torch.einsum("nhgs,nshd->nhgd", probs, vp)
    return (
        out.reshape(num_queries, num_qo_heads, head_dim),
        lse.reshape(num_queries, num_qo_heads),
    )


def merge_attention_states(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial attentions of the same queries over disjoint key sets.

    Args:
        out_a, out_b: ``[..., head_dim]`` normalised partial outputs, e.g.
            ``[N, num_qo_heads, head_dim]``.
        lse_a, lse_b: ``[...]`` their natural-log LSEs, e.g. ``[N, num_qo_heads]``;
            ``-inf`` marks an empty key set (its ``out`` is ignored).

    Returns:
        ``(out, lse)``: attention over the union of the key sets, with
        ``lse = logaddexp(lse_a, lse_b)``; float32 or wider. Both empty: ``0`` and ``-inf``.

    Example:
        >>> import torch
        >>> q, k = torch.randn(1, 2, 64), torch.randn(10, 2, 64)
        >>> a, b = attention_with_lse(q, k[:4], k[:4]), attention_with_lse(q, k[4:], k[4:])
        >>> out, lse = merge_attention_states(*a, *b)
        >>> torch.allclose(out, attention_with_lse(q, k, k)[0], atol=1e-5)
        True
    """
    import torch

    if out_a.shape != out_b.shape or lse_a.shape != lse_b.shape or out_a.shape[:-1] != lse_a.shape:
        raise ValueError(
            f"expected out_a, out_b [..., D] and lse_a, lse_b [...] of matching shapes; got "
            f"{tuple(out_a.shape)}, {tuple(lse_a.shape)}, {tuple(out_b.shape)}, "
            f"{tuple(lse_b.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(out_a.dtype, out_b.dtype), torch.float32)
    lse_a, lse_b = lse_a.to(dtype), lse_b.to(dtype)
    lse = torch.logaddexp(lse_a, lse_b)
    lse_safe = torch.where(torch.isneginf(lse), 0.0, lse)
    weight_a = torch.exp(lse_a - lse_safe).unsqueeze(-1)
    weight_b = torch.exp(lse_b - lse_safe).unsqueeze(-1)
    # An empty side has weight 0; where() keeps a NaN/garbage out of that side harmless.
    out = torch.where(weight_a > 0, weight_a * out_a.to(dtype), 0.0)
    out = out + torch.where(weight_b > 0, weight_b * out_b.to(dtype), 0.0)
    return out, lse


def shared_prefix_decode_torch(
    q: torch.Tensor,
    k_prefix: torch.Tensor,
    v_prefix: torch.Tensor,
    k_suffix: torch.Tensor,
    v_suffix: torch.Tensor,
    suffix_indptr: torch.Tensor,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """Torch path of :func:`ted_sglang.kernels.shared_prefix_decode` (inputs unchecked).

    Shapes as there: ``q [N, Hq, D]``, ``k_prefix/v_prefix [P, Hkv, D]``,
    ``k_suffix/v_suffix [total_S, Hkv, D]``, ``suffix_indptr [N + 1]``; returns
    ``out [N, Hq, D]`` in ``q``'s dtype (zeros for a fork with no keys at all).
    """
    out_prefix, lse_prefix = attention_with_lse(q, k_prefix, v_prefix, sm_scale)
    out_suffix, lse_suffix = ragged_attention_with_lse(
        q, k_suffix, v_suffix, suffix_indptr, sm_scale
    )
    out, _ = merge_attention_states(out_prefix, lse_prefix, out_suffix, lse_suffix)
    return out.to(q.dtype)
