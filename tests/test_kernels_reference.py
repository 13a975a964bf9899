"""Torch path of shared-prefix decode attention, its building blocks, and input checks.

Everything is compared with a float64 full-attention reference: each fork attends
to the concatenation of the prefix and its own suffix with a plain softmax.
"""

from __future__ import annotations

import doctest
import math
import os
import subprocess
import sys

import pytest
import torch
from ted_sglang.kernels import (
    attention_with_lse,
    merge_attention_states,
    plan_shared_prefix_decode,
    ragged_attention_with_lse,
    shared_prefix_decode,
)

# Largest |out - ref| allowed, relative to max |ref|.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def random_inputs(
    num_forks,
    prefix_len,
    suffix_lens,
    num_qo_heads,
    num_kv_heads,
    head_dim,
    dtype,
    device="cpu",
    seed=0,
    q_scale=1.0,
):
    """Fresh random ``(q, k_prefix, v_prefix, k_suffix, v_suffix, suffix_indptr)``."""
    assert len(suffix_lens) == num_forks
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype=dtype, device=device)

    total = sum(suffix_lens)
    indptr = torch.tensor([0, *suffix_lens]).cumsum(0).to(device)
    return (
        rand(num_forks, num_qo_heads, head_dim, scale=q_scale),
        rand(prefix_len, num_kv_heads, head_dim),
        rand(prefix_len, num_kv_heads, head_dim),
        rand(total, num_kv_heads, head_dim),
        rand(total, num_kv_heads, head_dim),
        indptr,
    )


def full_attention_f64(q, k_prefix, v_prefix, k_suffix, v_suffix, suffix_indptr, sm_scale=None):
    """Float64 attention of each fork over ``prefix + its suffix``; zeros with no keys."""
    num_forks, num_qo_heads, head_dim = q.shape
    group = num_qo_heads // k_prefix.shape[1]
    scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale
    bounds = suffix_indptr.tolist()
    out = torch.zeros(num_forks, num_qo_heads, head_dim, dtype=torch.float64)
    for i in range(num_forks):
        k = torch.cat([k_prefix, k_suffix[bounds[i] : bounds[i + 1]]]).cpu().double()
        v = torch.cat([v_prefix, v_suffix[bounds[i] : bounds[i + 1]]]).cpu().double()
        if k.shape[0] == 0:
            continue
        k = k.repeat_interleave(group, dim=1)  # [L, Hq, D]
        v = v.repeat_interleave(group, dim=1)
        probs = torch.softmax(torch.einsum("hd,lhd->hl", q[i].cpu().double(), k) * scale, -1)
        out[i] = torch.einsum("hl,lhd->hd", probs, v)
    return out


def relative_error(out, ref):
    assert torch.isfinite(out).all(), "output has NaN/inf (unwritten or bad merge)"
    return ((out.cpu().double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


TORCH_CASES = [
    # N, P, suffix lengths, Hq, Hkv, D, dtype
    (1, 97, [17], 8, 8, 64, torch.float32),
    (4, 2048, [256, 0, 97, 300], 32, 8, 128, torch.bfloat16),
    (17, 54, [(7 * i) % 23 for i in range(17)], 16, 2, 64, torch.float16),
    (64, 300, [i % 5 for i in range(64)], 8, 1, 128, torch.float32),
    (5, 0, [17, 0, 54, 1, 3], 4, 2, 64, torch.float16),
    (3, 97, [0, 0, 0], 4, 4, 128, torch.bfloat16),
    (2, 0, [0, 0], 4, 2, 64, torch.float32),
    (3, 33, [5, 0, 9], 6, 3, 80, torch.float32),
]


@pytest.mark.parametrize(
    "case", TORCH_CASES, ids=lambda c: f"N{c[0]}-P{c[1]}-Hq{c[3]}-Hkv{c[4]}-D{c[5]}-{str(c[6])[6:]}"
)
def test_torch_path_matches_float64_reference(case):
    num_forks, prefix_len, suffix_lens, hq, hkv, head_dim, dtype = case
    inputs = random_inputs(
        num_forks,
        prefix_len,
        suffix_lens,
        hq,
        hkv,
        head_dim,
        dtype,
        seed=num_forks + prefix_len,
        q_scale=3.0,
    )
    out = shared_prefix_decode(*inputs, backend="torch")
    ref = full_attention_f64(*inputs)
    assert out.dtype == dtype and out.shape == (num_forks, hq, head_dim)
    assert relative_error(out, ref) < TOLERANCE[dtype] or ref.abs().max() == 0
    for i, n in enumerate(suffix_lens):
        if prefix_len == 0 and n == 0:
            assert (out[i] == 0).all()


CPU_CASES = [
    # N, P, suffix lengths, Hq, Hkv, D
    (1, 97, [17], 8, 8, 64),
    (8, 1200, [3, 70, 1, 9, 70, 2, 5, 33], 9, 3, 64),
    (17, 54, [1 + (7 * i) % 23 for i in range(17)], 16, 2, 128),
    (3, 1, [1, 1, 1], 4, 1, 80),
]


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: f"N{c[0]}-P{c[1]}-Hq{c[3]}-Hkv{c[4]}")
def test_fused_cpu_path_matches_float64_reference(case):
    from ted_sglang.kernels.cpu import fast_path_applies, shared_prefix_decode_cpu

    num_forks, prefix_len, suffix_lens, hq, hkv, head_dim = case
    inputs = random_inputs(
        num_forks, prefix_len, suffix_lens, hq, hkv, head_dim, torch.float32, seed=7, q_scale=3.0
    )
    bounds = tuple(inputs[-1].tolist())
    assert fast_path_applies(inputs[0], prefix_len, bounds)  # so "auto" takes it
    out = shared_prefix_decode_cpu(*inputs[:-1], bounds, 0.3)
    assert relative_error(out, full_attention_f64(*inputs, sm_scale=0.3)) < 2e-5
    torch.testing.assert_close(shared_prefix_decode(*inputs, 0.3), out, atol=0, rtol=0)


def test_fused_cpu_path_leaves_empty_parts_and_other_dtypes_to_the_reference():
    from ted_sglang.kernels.cpu import fast_path_applies

    q = torch.zeros(2, 4, 64)
    assert not fast_path_applies(q, 10, (0, 3, 3))  # a fork without suffix
    assert not fast_path_applies(q, 0, (0, 3, 4))  # no prefix
    assert not fast_path_applies(q.bfloat16(), 10, (0, 3, 4))
    inputs = random_inputs(3, 20, [4, 0, 2], 4, 2, 64, torch.float32, seed=8)
    assert relative_error(shared_prefix_decode(*inputs), full_attention_f64(*inputs)) < 2e-5


def test_sm_scale_and_out_argument():
    inputs = random_inputs(3, 40, [5, 0, 9], 4, 2, 64, torch.float32, seed=3)
    out = torch.full((3, 4, 64), float("nan"))
    result = shared_prefix_decode(*inputs, 0.37, out=out, backend="torch")
    assert result is out
    assert relative_error(out, full_attention_f64(*inputs, sm_scale=0.37)) < 2e-5


def test_attention_with_lse_matches_float64_logsumexp():
    q, k, v = (torch.randn(5, 8, 64), torch.randn(33, 2, 64), torch.randn(33, 2, 64))
    out, lse = attention_with_lse(q, k, v, 0.2)
    kk, vv = k.double().repeat_interleave(4, 1), v.double().repeat_interleave(4, 1)
    scores = torch.einsum("nhd,lhd->nhl", q.double(), kk) * 0.2
    torch.testing.assert_close(lse.double(), torch.logsumexp(scores, -1), rtol=1e-5, atol=1e-5)
    ref = torch.einsum("nhl,lhd->nhd", torch.softmax(scores, -1), vv)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_empty_key_set_convention():
    q = torch.randn(3, 4, 64, dtype=torch.bfloat16)
    out, lse = attention_with_lse(q, torch.empty(0, 2, 64), torch.empty(0, 2, 64))
    assert (out == 0).all() and torch.isneginf(lse).all() and out.dtype == torch.float32


@pytest.mark.parametrize("split", [0, 1, 20, 52, 53])
def test_merge_of_a_split_equals_attention_over_the_concatenation(split):
    q, k, v = torch.randn(4, 8, 64) * 3, torch.randn(53, 4, 64), torch.randn(53, 4, 64)
    part_a = attention_with_lse(q, k[:split], v[:split])
    part_b = attention_with_lse(q, k[split:], v[split:])
    out, lse = merge_attention_states(*part_a, *part_b)
    full_out, full_lse = attention_with_lse(q, k, v)
    torch.testing.assert_close(out, full_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, full_lse, rtol=1e-5, atol=1e-5)


def test_merge_of_two_empty_states_is_zero_and_ignores_garbage():
    out_a = torch.full((2, 3, 8), float("nan"))
    lse_a = torch.full((2, 3), float("-inf"))
    out, lse = merge_attention_states(out_a, lse_a, out_a.clone(), lse_a.clone())
    assert (out == 0).all() and torch.isneginf(lse).all()
    out_b, lse_b = torch.randn(2, 3, 8), torch.randn(2, 3)
    out, lse = merge_attention_states(out_a, lse_a, out_b, lse_b)
    assert torch.equal(out, out_b) and torch.equal(lse, lse_b)


def test_ragged_attention_equals_per_fork_attention():
    q, k, v = torch.randn(4, 6, 32), torch.randn(30, 3, 32), torch.randn(30, 3, 32)
    bounds = [0, 7, 7, 29, 30]
    out, lse = ragged_attention_with_lse(q, k, v, torch.tensor(bounds))
    for i in range(4):
        ref_out, ref_lse = attention_with_lse(
            q[i : i + 1], k[bounds[i] : bounds[i + 1]], v[bounds[i] : bounds[i + 1]]
        )
        torch.testing.assert_close(out[i : i + 1], ref_out, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lse[i : i + 1], ref_lse, rtol=1e-5, atol=1e-6)


def _good():
    return list(random_inputs(3, 10, [2, 0, 3], 4, 2, 64, torch.float16))


def _with(index, value):
    args = _good()
    args[index] = value
    return args


BAD_INPUTS = {
    "q not 3-D": (_with(0, torch.randn(3, 256, dtype=torch.float16)), "3-D"),
    "dtype mismatch": (_with(1, torch.randn(10, 2, 64)), "dtype"),
    "float64": ([t.double() if t.is_floating_point() else t for t in _good()], "float16"),
    "k/v shape mismatch": (_with(2, torch.randn(9, 2, 64, dtype=torch.float16)), "same shape"),
    "head_dim mismatch": (_with(0, torch.randn(3, 4, 32, dtype=torch.float16)), "D=32"),
    "Hq % Hkv": (_with(0, torch.randn(3, 3, 64, dtype=torch.float16)), "multiple of Hkv"),
    "indptr length": (_with(5, torch.tensor([0, 2, 5])), r"\[N \+ 1\]"),
    "indptr float": (_with(5, torch.tensor([0.0, 2, 2, 5])), "int32 or int64"),
    "indptr start": (_with(5, torch.tensor([1, 2, 2, 5])), "start with 0"),
    "indptr decreasing": (_with(5, torch.tensor([0, 3, 2, 5])), "non-decreasing"),
    "indptr total": (_with(5, torch.tensor([0, 2, 2, 4])), "total_S"),
    "stride": (_with(0, torch.randn(3, 64, 4, dtype=torch.float16).transpose(1, 2)), "contiguous"),
    "device": (_with(0, torch.empty(3, 4, 64, dtype=torch.float16, device="meta")), "on meta"),
    "not a tensor": (_with(1, [[0.0]]), "torch.Tensor"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bad_inputs_raise_value_error(name, backend):
    args, message = BAD_INPUTS[name]
    with pytest.raises(ValueError, match=message):
        shared_prefix_decode(*args, backend=backend)


def test_bad_scale_backend_plan_and_out():
    args = _good()
    with pytest.raises(ValueError, match="sm_scale"):
        shared_prefix_decode(*args, sm_scale=float("nan"))
    with pytest.raises(ValueError, match="backend"):
        shared_prefix_decode(*args, backend="cuda")
    with pytest.raises(ValueError, match="out must be"):
        shared_prefix_decode(*args, out=torch.empty(3, 4, 64))
    other_plan = plan_shared_prefix_decode([0, 2, 2, 5], 11, 4, 2, 64)
    with pytest.raises(ValueError, match="plan does not match"):
        shared_prefix_decode(*args, plan=other_plan)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="interpreter is on")
def test_triton_on_cpu_without_interpreter_is_refused():
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        shared_prefix_decode(*_good(), backend="triton")


@pytest.mark.parametrize("num_forks", [1, 4, 16, 64])
@pytest.mark.parametrize("prefix_len", [0, 1, 97, 2048, 32768])
def test_plan_splits_cover_the_keys_without_empty_splits(num_forks, prefix_len):
    indptr = [0, *range(256, 256 * num_forks + 1, 256)]
    plan = plan_shared_prefix_decode(indptr, prefix_len, 32, 8, 128, num_sms=132)
    for length, chunk, splits in (
        (prefix_len, plan.prefix_chunk_size, plan.num_prefix_splits),
        (plan.max_suffix_len, plan.suffix_chunk_size, plan.num_suffix_splits),
    ):
        assert chunk >= 1 and splits * chunk >= length
        assert length == 0 or (splits - 1) * chunk < length  # the last split is not empty
    if prefix_len == 32768:  # enough splits to give 132 SMs work
        assert plan.num_prefix_splits * 8 * -(-num_forks * 4 // 128) >= 132


def test_plan_accepts_forced_chunk_sizes():
    plan = plan_shared_prefix_decode(
        torch.tensor([0, 54, 54, 71]), 97, 4, 2, 64, prefix_chunk_size=16, suffix_chunk_size=7
    )
    assert (plan.num_prefix_splits, plan.num_suffix_splits) == (7, 8)
    with pytest.raises(ValueError, match="prefix_chunk_size"):
        plan_shared_prefix_decode([0, 1], 4, 4, 2, 64, prefix_chunk_size=0)


def test_package_import_does_not_import_torch():
    code = (
        "import sys, ted_sglang; before = set(sys.modules); import ted_sglang.kernels; "
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
        "('torch', 'triton')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
    import ted_sglang.kernels as kernels

    assert set(kernels.__all__) <= set(dir(kernels))


def test_docstring_examples_run():
    from ted_sglang.kernels import decode, plan, reference

    for module in (decode, plan, reference):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0
