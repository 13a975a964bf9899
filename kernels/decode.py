"""Entry point of shared-prefix decode attention: input checks and launch.

``shared_prefix_decode`` runs the Triton kernels of ``shared_prefix_attention.py`` on
CUDA tensors and elsewhere the fused CPU path of ``cpu.py`` where it applies, else the
torch path of ``reference.py``; split sizes come from
a :class:`~.plan.SharedPrefixDecodePlan` (``plan.py``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .plan import (
    SharedPrefixDecodePlan,
    _cdiv,
    _next_power_of_2,
    _prefix_block_m,
    plan_shared_prefix_decode,
)

if TYPE_CHECKING:
    import torch

BACKENDS = ("auto", "triton", "torch")
MAX_TRITON_HEAD_DIM = 256
_MERGE_BLOCK_R = 16


def _check_tensors(q, k_prefix, v_prefix, k_suffix, v_suffix, suffix_indptr) -> None:
    import torch

    named = {
        "q": q,
        "k_prefix": k_prefix,
        "v_prefix": v_prefix,
        "k_suffix": k_suffix,
        "v_suffix": v_suffix,
        "suffix_indptr": suffix_indptr,
    }
    for name, tensor in named.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
    for name in ("q", "k_prefix", "v_prefix", "k_suffix", "v_suffix"):
        tensor = named[name]
        if tensor.dim() != 3:
            raise ValueError(
                f"{name} must be 3-D [rows, heads, head_dim]; got shape {tuple(tensor.shape)}"
            )
        if tensor.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"{name} must be float16, bfloat16 or float32; got {tensor.dtype}")
        if tensor.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {tensor.dtype} but q has {q.dtype}; use one dtype")
        if tensor.device != q.device:
            raise ValueError(f"{name} is on {tensor.device} but q is on {q.device}")
        if tensor.shape[2] > 1 and tensor.stride(2) != 1:
            raise ValueError(
                f"{name} must be contiguous in head_dim (stride(2) == 1); got "
                f"strides {tensor.stride()}: call .contiguous()"
            )
        if tensor.numel() >= 2**31:
            raise ValueError(f"{name} has {tensor.numel()} elements; at most 2**31 - 1 supported")
    num_forks, num_qo_heads, head_dim = q.shape
    if k_prefix.shape != v_prefix.shape or k_suffix.shape != v_suffix.shape:
        raise ValueError(
            f"k and v must have the same shape; got k_prefix {tuple(k_prefix.shape)}, v_prefix "
            f"{tuple(v_prefix.shape)}, k_suffix {tuple(k_suffix.shape)}, v_suffix "
            f"{tuple(v_suffix.shape)}"
        )
    if k_prefix.shape[1:] != k_suffix.shape[1:] or k_prefix.shape[2] != head_dim:
        raise ValueError(
            f"prefix and suffix KV must be [*, Hkv, D] with q's D={head_dim}; got k_prefix "
            f"{tuple(k_prefix.shape)}, k_suffix {tuple(k_suffix.shape)}"
        )
    num_kv_heads = k_prefix.shape[1]
    if num_kv_heads == 0 or num_qo_heads == 0 or num_qo_heads % num_kv_heads:
        raise ValueError(f"Hq={num_qo_heads} must be a positive multiple of Hkv={num_kv_heads}")
    if head_dim == 0:
        raise ValueError("head_dim D must be >= 1")
    if suffix_indptr.dim() != 1 or suffix_indptr.shape[0] != num_forks + 1:
        raise ValueError(
            f"suffix_indptr must have shape [N + 1] = [{num_forks + 1}]; got "
            f"{tuple(suffix_indptr.shape)}"
        )
    if suffix_indptr.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"suffix_indptr must be int32 or int64; got {suffix_indptr.dtype}")
    if suffix_indptr.device != q.device and suffix_indptr.device.type != "cpu":
        raise ValueError(f"suffix_indptr is on {suffix_indptr.device} but q is on {q.device}")


def _check_plan(plan: SharedPrefixDecodePlan, q, k_prefix, k_suffix) -> None:
    shapes = (
        q.shape[0],
        q.shape[1],
        k_prefix.shape[1],
        q.shape[2],
        k_prefix.shape[0],
        k_suffix.shape[0],
    )
    planned = (
        plan.num_forks,
        plan.num_qo_heads,
        plan.num_kv_heads,
        plan.head_dim,
        plan.prefix_len,
        plan.total_suffix_len,
    )
    if shapes != planned:
        raise ValueError(
            "plan does not match the inputs: (N, Hq, Hkv, D, P, total_S) = "
            f"{shapes} but the plan was made for {planned}"
        )


def shared_prefix_decode(
    q: torch.Tensor,
    k_prefix: torch.Tensor,
    v_prefix: torch.Tensor,
    k_suffix: torch.Tensor,
    v_suffix: torch.Tensor,
    suffix_indptr: torch.Tensor,
    sm_scale: float | None = None,
    *,
    plan: SharedPrefixDecodePlan | None = None,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Decode attention of N forks that share a prefix, reading the prefix KV once.

    Fork ``i`` attends to all ``P`` prefix rows followed by its own suffix rows
    ``suffix_indptr[i]:suffix_indptr[i + 1]`` (no causal mask: one query per fork).
    A fork with no keys at all (``P = 0`` and an empty suffix) gets a zero output.

    Args:
        q: ``[N, Hq, D]``, one decode query per fork; float16, bfloat16 or float32.
        k_prefix, v_prefix: ``[P, Hkv, D]``, the shared prefix; ``Hq % Hkv == 0``.
        k_suffix, v_suffix: ``[total_S, Hkv, D]``, all forks' suffixes, concatenated.
        suffix_indptr: ``[N + 1]`` int32/int64, ``0 = indptr[0] <= ... <= indptr[N] =
            total_S``; on ``q``'s device or the CPU.
        sm_scale: softmax scale, default ``1 / sqrt(D)``.
        plan: from :func:`plan_shared_prefix_decode` for the same ``suffix_indptr``
            values; skips re-reading ``suffix_indptr`` on the host (Triton path).
        out: optional ``[N, Hq, D]`` contiguous tensor of ``q``'s dtype to write into.
        backend: ``"auto"`` (Triton on CUDA tensors; elsewhere the fused CPU path of
            ``cpu.py`` where it applies, else torch), ``"triton"``
            (also on CPU tensors when ``TRITON_INTERPRET=1`` was set before the first
            Triton call) or ``"torch"``.

    Returns:
        ``out [N, Hq, D]`` in ``q``'s dtype (fp32 accumulation).

    Example:
        >>> import torch
        >>> q = torch.randn(4, 8, 64)
        >>> k_prefix, v_prefix = torch.randn(100, 2, 64), torch.randn(100, 2, 64)
        >>> k_suffix, v_suffix = torch.randn(10, 2, 64), torch.randn(10, 2, 64)
        >>> indptr = torch.tensor([0, 3, 3, 7, 10])
        >>> shared_prefix_decode(q, k_prefix, v_prefix, k_suffix, v_suffix, indptr).shape
        torch.Size([4, 8, 64])
    """
    import torch

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    _check_tensors(q, k_prefix, v_prefix, k_suffix, v_suffix, suffix_indptr)
    head_dim = q.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"sm_scale must be a positive finite number; got {sm_scale}")
    if out is not None and (
        out.shape != q.shape
        or out.dtype != q.dtype
        or out.device != q.device
        or not out.is_contiguous()
    ):
        raise ValueError(
            f"out must be a contiguous {q.dtype} tensor of shape {tuple(q.shape)} on {q.device}"
        )
    if plan is None:
        plan = plan_shared_prefix_decode(
            suffix_indptr,
            k_prefix.shape[0],
            q.shape[1],
            k_prefix.shape[1],
            head_dim,
            num_sms=None if q.is_cuda else 1,
        )
        if plan.total_suffix_len != k_suffix.shape[0]:
            raise ValueError(
                f"suffix_indptr[-1] = {plan.total_suffix_len} must equal total_S = "
                f"k_suffix.shape[0] = {k_suffix.shape[0]}"
            )
    _check_plan(plan, q, k_prefix, k_suffix)
    use_triton = backend == "triton" or (backend == "auto" and q.is_cuda)
    if not use_triton:
        from .cpu import fast_path_applies, shared_prefix_decode_cpu
        from .reference import shared_prefix_decode_torch

        bounds = tuple(suffix_indptr.tolist()) if backend == "auto" else ()
        if bounds and fast_path_applies(q, k_prefix.shape[0], bounds):
            result = shared_prefix_decode_cpu(
                q, k_prefix, v_prefix, k_suffix, v_suffix, bounds, scale
            )
        else:
            result = shared_prefix_decode_torch(
                q, k_prefix, v_prefix, k_suffix, v_suffix, suffix_indptr.to(q.device), scale
            )
        if out is None:
            return result
        return out.copy_(result)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if head_dim > MAX_TRITON_HEAD_DIM:
        raise ValueError(
            f"the Triton path supports head_dim <= {MAX_TRITON_HEAD_DIM}; got "
            f"{head_dim} (use backend='torch')"
        )
    from .shared_prefix_attention import IS_INTERPRETED

    if not q.is_cuda and not IS_INTERPRETED:
        raise ValueError(
            "the Triton path needs CUDA tensors, or TRITON_INTERPRET=1 set in the environment "
            "before the first Triton call of this process (CPU interpreter)"
        )
    if q.shape[0] == 0:
        return out
    if q.is_cuda:
        with torch.cuda.device(q.device):
            _launch(
                q,
                k_prefix,
                v_prefix,
                k_suffix,
                v_suffix,
                suffix_indptr.to(q.device, non_blocking=True),
                scale,
                plan,
                out,
            )
    else:
        _launch(q, k_prefix, v_prefix, k_suffix, v_suffix, suffix_indptr, scale, plan, out)
    return out


def _new_workspace(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """fp32 scratch for partial states; every element is written before it is read."""
    import torch

    return torch.empty(shape, dtype=torch.float32, device=device)


def _launch(
    q,
    k_prefix,
    v_prefix,
    k_suffix,
    v_suffix,
    suffix_indptr,
    sm_scale: float,
    plan: SharedPrefixDecodePlan,
    out,
) -> None:
    import torch

    from . import shared_prefix_attention as jit

    num_forks, num_qo_heads, head_dim = q.shape
    num_kv_heads, group = plan.num_kv_heads, plan.group
    num_prefix_splits, num_suffix_splits = plan.num_prefix_splits, plan.num_suffix_splits
    num_splits = num_prefix_splits + num_suffix_splits
    num_rows = num_forks * group  # query rows per KV head
    partial_out = _new_workspace((num_splits, num_kv_heads * num_rows, head_dim), q.device)
    partial_lse = _new_workspace((num_splits, num_kv_heads * num_rows), q.device)
    qk_scale = sm_scale * 1.4426950408889634  # log2(e): the kernels use exp2
    common = {
        "HEAD_DIM": max(16, _next_power_of_2(head_dim)),
        "UPCAST_DOT": jit.IS_INTERPRETED,
        "DOT_PRECISION": "ieee" if q.dtype == torch.float32 else "tf32",
    }
    if num_prefix_splits:
        block_m = _prefix_block_m(num_rows, head_dim, q.dtype == torch.float32)
        grid = (num_prefix_splits, num_kv_heads, _cdiv(num_rows, block_m))
        jit._prefix_attention_kernel[grid](
            q,
            k_prefix,
            v_prefix,
            partial_out,
            partial_lse,
            q.stride(0),
            q.stride(1),
            k_prefix.stride(0),
            k_prefix.stride(1),
            v_prefix.stride(0),
            v_prefix.stride(1),
            *partial_out.stride()[:2],
            *partial_lse.stride(),
            num_rows,
            group,
            plan.prefix_len,
            plan.prefix_chunk_size,
            qk_scale,
            head_dim,
            BLOCK_M=block_m,
            **common,
        )
    suffix_out = partial_out[num_prefix_splits:]
    suffix_lse = partial_lse[num_prefix_splits:]
    grid = (num_forks, num_kv_heads, num_suffix_splits)
    jit._suffix_attention_kernel[grid](
        q,
        k_suffix,
        v_suffix,
        suffix_indptr,
        suffix_out,
        suffix_lse,
        q.stride(0),
        q.stride(1),
        k_suffix.stride(0),
        k_suffix.stride(1),
        v_suffix.stride(0),
        v_suffix.stride(1),
        *suffix_out.stride()[:2],
        *suffix_lse.stride(),
        num_rows,
        group,
        plan.suffix_chunk_size,
        qk_scale,
        head_dim,
        BLOCK_M=max(16, _next_power_of_2(group)),
        **common,
    )
    num_out_rows = num_forks * num_qo_heads
    jit._merge_partials_kernel[(_cdiv(num_out_rows, _MERGE_BLOCK_R),)](
        partial_out,
        partial_lse,
        out,
        *partial_out.stride()[:2],
        *partial_lse.stride(),
        out.stride(0),
        out.stride(1),
        num_out_rows,
        num_qo_heads,
        group,
        num_splits,
        head_dim,
        BLOCK_R=_MERGE_BLOCK_R,
        HEAD_DIM=common["HEAD_DIM"],
    )
