"""Triton jit code for shared-prefix (cascade) decode attention.

N forks decode one token each. They share a prefix KV of P tokens and each owns a
suffix KV (ragged, ``suffix_indptr``). Three kernels:

* ``_prefix_attention_kernel``: for one KV head, the N * group query rows are stacked
  into one ``[BLOCK_M, HEAD_DIM]`` tile, so each prefix K/V block is loaded once and
  serves every fork through ``tl.dot``. The prefix is split into chunks (split-K,
  flash-decoding style); each chunk writes a partial state.
* ``_suffix_attention_kernel``: one fork's ``group`` query rows against its own
  suffix rows, also split into chunks.
* ``_merge_partials_kernel``: combines all partial states of a query row by their
  log-sum-exp and writes the output in the output's dtype.

Partial state of a query row over a key range: ``out`` (already normalised, fp32)
and ``lse = log2(sum_j 2^(s_j))`` with ``s_j = q . k_j * sm_scale * log2(e)``
(base 2, as in FlashInfer). An empty key range has ``out = 0`` and ``lse = -inf``.
Partials are laid out per KV head, ``out [num_splits, Hkv * N * group, D]`` and
``lse [num_splits, Hkv * N * group]``, row ``kv_head * N * group + fork * group + g``
holding query head ``kv_head * group + g``: a tile's rows are contiguous, so its
store addresses are affine and need no registers across the key loop.

``IS_INTERPRETED`` records whether ``TRITON_INTERPRET=1`` was set when this module
was imported (Triton decides then). The interpreter has no bf16 matmul, so the
launcher sets ``UPCAST_DOT`` there to cast dot operands to fp32; on a GPU the dots
stay 16-bit with fp32 accumulation. fp32 inputs use IEEE fp32 dots (exact, not fast).
"""

import triton
import triton.language as tl

IS_INTERPRETED = bool(triton.knobs.runtime.interpret)

if IS_INTERPRETED:
    _ATTENTION_CONFIGS = [triton.Config({"BLOCK_N": 32}, num_warps=4, num_stages=1)]
else:
    _ATTENTION_CONFIGS = [
        triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_N": 64}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_N": 32}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_N": 128}, num_warps=8, num_stages=2),
    ]


@triton.jit
def _load_query_tile(
    q_ptr, fork, q_head, mask_m, offs_d, mask_d, stride_qn, stride_qh, UPCAST_DOT: tl.constexpr
):
    q_ptrs = q_ptr + fork[:, None] * stride_qn + q_head[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)
    return q


@triton.jit
def _attend_key_range(
    q,
    k_ptr,
    v_ptr,
    stride_kn,
    stride_vn,
    start,
    end,
    offs_d,
    mask_d,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Online softmax of the query tile over keys ``start:end`` of one KV head.

    ``k_ptr``/``v_ptr`` point at row 0 of that head. Returns ``(acc, m_i, l_i)``: the
    unnormalised output, the running max (base 2) and the running sum.
    """
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    # Every block visited holds at least one key < end, so each row's max is finite.
    for start_n in range(start, end, BLOCK_N):
        offs_kn = start_n + offs_n
        mask_n = offs_kn < end
        kt_ptrs = k_ptr + offs_kn[None, :] * stride_kn + offs_d[:, None]
        kt = tl.load(kt_ptrs, mask=mask_n[None, :] & mask_d[:, None], other=0.0)
        v_ptrs = v_ptr + offs_kn[:, None] * stride_vn + offs_d[None, :]
        v = tl.load(v_ptrs, mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        if UPCAST_DOT:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
        qk = tl.where(mask_n[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _store_partial(
    out_ptr,
    lse_ptr,
    acc,
    m_i,
    l_i,
    rows,
    mask_m,
    offs_d,
    mask_d,
    stride_or,
    stride_lr,
):
    has_keys = l_i > 0.0
    l_safe = tl.where(has_keys, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has_keys, m_i + tl.log2(l_safe), float("-inf"))
    out_ptrs = out_ptr + rows[:, None] * stride_or + offs_d[None, :]
    tl.store(out_ptrs, out, mask=mask_m[:, None] & mask_d[None, :])
    tl.store(lse_ptr + rows * stride_lr, lse, mask=mask_m)


@triton.autotune(configs=_ATTENTION_CONFIGS, key=["BLOCK_M", "HEAD_DIM"])
@triton.jit
def _prefix_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    lse_ptr,
    stride_qn,
    stride_qh,
    stride_kn,
    stride_kh,
    stride_vn,
    stride_vh,
    stride_os,
    stride_or,
    stride_ls,
    stride_lr,
    num_rows,
    group,
    prefix_len,
    chunk_size,
    qk_scale,
    head_dim,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Grid ``(num_splits, num_kv_heads, cdiv(N * group, BLOCK_M))``.

    Row ``r`` of the stacked tile is fork ``r // group``, query head
    ``kv_head * group + r % group``.
    """
    split = tl.program_id(0)
    kv_head = tl.program_id(1)
    pid_m = tl.program_id(2)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < num_rows
    fork = offs_m // group
    q_head = kv_head * group + offs_m % group
    offs_d = tl.arange(0, HEAD_DIM)
    mask_d = offs_d < head_dim

    q = _load_query_tile(
        q_ptr, fork, q_head, mask_m, offs_d, mask_d, stride_qn, stride_qh, UPCAST_DOT
    )
    start = split * chunk_size
    end = tl.minimum(start + chunk_size, prefix_len)
    acc, m_i, l_i = _attend_key_range(
        q,
        k_ptr + kv_head * stride_kh,
        v_ptr + kv_head * stride_vh,
        stride_kn,
        stride_vn,
        start,
        end,
        offs_d,
        mask_d,
        qk_scale,
        BLOCK_M,
        BLOCK_N,
        HEAD_DIM,
        UPCAST_DOT,
        DOT_PRECISION,
    )
    _store_partial(
        out_ptr + split * stride_os,
        lse_ptr + split * stride_ls,
        acc,
        m_i,
        l_i,
        kv_head * num_rows + offs_m,
        mask_m,
        offs_d,
        mask_d,
        stride_or,
        stride_lr,
    )


@triton.autotune(configs=_ATTENTION_CONFIGS, key=["BLOCK_M", "HEAD_DIM"])
@triton.jit
def _suffix_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    indptr_ptr,
    out_ptr,
    lse_ptr,
    stride_qn,
    stride_qh,
    stride_kn,
    stride_kh,
    stride_vn,
    stride_vh,
    stride_os,
    stride_or,
    stride_ls,
    stride_lr,
    num_rows,
    group,
    chunk_size,
    qk_scale,
    head_dim,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Grid ``(N, num_kv_heads, num_splits)``: fork ``i`` owns key rows
    ``indptr[i]:indptr[i + 1]``; its ``group`` query rows share one tile."""
    fork_id = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < group
    fork = tl.zeros([BLOCK_M], dtype=tl.int32) + fork_id
    q_head = kv_head * group + offs_m
    offs_d = tl.arange(0, HEAD_DIM)
    mask_d = offs_d < head_dim

    q = _load_query_tile(
        q_ptr, fork, q_head, mask_m, offs_d, mask_d, stride_qn, stride_qh, UPCAST_DOT
    )
    row_start = tl.load(indptr_ptr + fork_id).to(tl.int32)
    row_end = tl.load(indptr_ptr + fork_id + 1).to(tl.int32)
    start = row_start + split * chunk_size
    end = tl.minimum(start + chunk_size, row_end)
    acc, m_i, l_i = _attend_key_range(
        q,
        k_ptr + kv_head * stride_kh,
        v_ptr + kv_head * stride_vh,
        stride_kn,
        stride_vn,
        start,
        end,
        offs_d,
        mask_d,
        qk_scale,
        BLOCK_M,
        BLOCK_N,
        HEAD_DIM,
        UPCAST_DOT,
        DOT_PRECISION,
    )
    _store_partial(
        out_ptr + split * stride_os,
        lse_ptr + split * stride_ls,
        acc,
        m_i,
        l_i,
        kv_head * num_rows + fork_id * group + offs_m,
        mask_m,
        offs_d,
        mask_d,
        stride_or,
        stride_lr,
    )


@triton.jit
def _merge_partials_kernel(
    partial_out_ptr,
    partial_lse_ptr,
    out_ptr,
    stride_ps,
    stride_pr,
    stride_ls,
    stride_lr,
    stride_on,
    stride_oh,
    num_rows,
    num_qo_heads,
    group,
    num_splits,
    head_dim,
    BLOCK_R: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    """Grid ``(cdiv(N * Hq, BLOCK_R),)`` over output rows ``fork * Hq + q_head``.

    ``out = sum_s 2^(lse_s - m) out_s / sum_s 2^(lse_s - m)`` with ``m = max_s lse_s``;
    a row whose splits are all empty (every ``lse_s = -inf``) gets zeros.
    """
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < num_rows
    fork = offs_r // num_qo_heads
    q_head = offs_r % num_qo_heads
    # Partial row of (fork, q_head): kv_head * N * group + fork * group + g.
    rows = (q_head // group) * (num_rows // num_qo_heads * group) + fork * group + q_head % group
    offs_d = tl.arange(0, HEAD_DIM)
    mask_o = mask_r[:, None] & (offs_d < head_dim)[None, :]
    lse_ptrs = partial_lse_ptr + rows * stride_lr
    part_ptrs = partial_out_ptr + rows[:, None] * stride_pr + offs_d[None, :]

    m = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    for s in range(num_splits):
        lse = tl.load(lse_ptrs + s * stride_ls, mask=mask_r, other=float("-inf"))
        m = tl.maximum(m, lse)
    m = tl.where(m == float("-inf"), 0.0, m)

    acc = tl.zeros([BLOCK_R, HEAD_DIM], dtype=tl.float32)
    weight_sum = tl.zeros([BLOCK_R], dtype=tl.float32)
    for s in range(num_splits):
        lse = tl.load(lse_ptrs + s * stride_ls, mask=mask_r, other=float("-inf"))
        weight = tl.exp2(lse - m)
        part = tl.load(part_ptrs + s * stride_ps, mask=mask_o, other=0.0)
        acc += weight[:, None] * part
        weight_sum += weight
    out = acc / tl.where(weight_sum > 0.0, weight_sum, 1.0)[:, None]
    out_ptrs = out_ptr + fork[:, None] * stride_on + q_head[:, None] * stride_oh + offs_d[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask_o)
