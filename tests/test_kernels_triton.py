"""Triton kernels of shared-prefix decode attention against a float64 reference.

Runs on a CUDA GPU, or on the CPU under ``TRITON_INTERPRET=1``. The variable must be
set before Triton compiles the kernels' module, so on a CPU-only machine this module
skips itself and ``test_kernels_interpreter.py`` runs it in a subprocess with the
variable set.

Every output and every partial-state buffer is filled with NaN before a run, so an
element a kernel forgets to write fails the comparison.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip(
        "needs CUDA or TRITON_INTERPRET=1 (test_kernels_interpreter.py runs it that way)",
        allow_module_level=True,
    )

from ted_sglang.kernels import decode, plan_shared_prefix_decode, shared_prefix_decode  # noqa: E402

DEVICE = "cpu" if INTERPRET else "cuda"
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _load_helpers():
    path = Path(__file__).with_name("test_kernels_reference.py")
    spec = importlib.util.spec_from_file_location("_kernels_reference_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_helpers = _load_helpers()
random_inputs = _helpers.random_inputs
full_attention_f64 = _helpers.full_attention_f64
relative_error = _helpers.relative_error


@pytest.fixture(autouse=True)
def poisoned_workspace(monkeypatch):
    def nan_workspace(shape, device):
        return torch.full(shape, float("nan"), dtype=torch.float32, device=device)

    monkeypatch.setattr(decode, "_new_workspace", nan_workspace)


def run_and_check(inputs, dtype, sm_scale=None, **kwargs):
    q = inputs[0]
    out = torch.full_like(q, float("nan"))
    result = shared_prefix_decode(*inputs, sm_scale, out=out, backend="triton", **kwargs)
    assert result is out
    ref = full_attention_f64(*inputs, sm_scale=sm_scale)
    if ref.abs().max() == 0:
        assert (out == 0).all()
    else:
        assert relative_error(out, ref) < TOLERANCE[dtype]
    return out


DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 2, 8])
def test_matches_reference_over_dtypes_head_dims_and_gqa(dtype, head_dim, group):
    inputs = random_inputs(
        3,
        54,
        [17, 0, 5],
        2 * group,
        2,
        head_dim,
        dtype,
        device=DEVICE,
        seed=group * head_dim,
        q_scale=2.0,
    )
    run_and_check(inputs, dtype)


CASES = {
    # name: (N, P, suffix lengths, Hq, Hkv, D, dtype)
    "ragged-suffixes": (3, 97, [17, 0, 54], 4, 2, 64, torch.float16),
    "single-fork": (1, 17, [97], 8, 8, 128, torch.bfloat16),
    "empty-prefix": (4, 0, [17, 1, 0, 54], 4, 2, 64, torch.bfloat16),
    "empty-suffixes": (3, 97, [0, 0, 0], 8, 2, 64, torch.float16),
    "no-keys-at-all": (3, 0, [0, 0, 0], 4, 1, 64, torch.float32),
    "two-row-tiles": (33, 40, [i % 5 for i in range(33)], 8, 2, 64, torch.float16),
    "64-forks-gqa8": (64, 33, [i % 4 for i in range(64)], 16, 2, 64, torch.bfloat16),
    "fp32-row-tiles": (17, 33, [i % 3 for i in range(17)], 8, 2, 64, torch.float32),
    "head-dim-80": (2, 33, [5, 17], 6, 3, 80, torch.float32),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference_on_awkward_shapes(name):
    num_forks, prefix_len, suffix_lens, hq, hkv, head_dim, dtype = CASES[name]
    inputs = random_inputs(
        num_forks,
        prefix_len,
        suffix_lens,
        hq,
        hkv,
        head_dim,
        dtype,
        device=DEVICE,
        seed=len(name),
        q_scale=2.0,
    )
    out = run_and_check(inputs, dtype)
    for i, n in enumerate(suffix_lens):
        if prefix_len == 0 and n == 0:
            assert (out[i] == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize(("prefix_chunk", "suffix_chunk"), [(16, 8), (7, 5), (200, 200)])
def test_split_k_partials_merge_exactly(dtype, prefix_chunk, suffix_chunk):
    inputs = random_inputs(
        4, 97, [54, 17, 0, 33], 4, 2, 64, dtype, device=DEVICE, seed=7, q_scale=4.0
    )
    plan = plan_shared_prefix_decode(
        inputs[5], 97, 4, 2, 64, prefix_chunk_size=prefix_chunk, suffix_chunk_size=suffix_chunk
    )
    assert plan.num_prefix_splits == -(-97 // prefix_chunk)
    run_and_check(inputs, dtype, plan=plan)


def test_strided_views_int32_indptr_and_custom_scale():
    num_forks, prefix_len, hkv, head_dim = 3, 54, 2, 64
    gen = torch.Generator().manual_seed(11)
    q_wide = torch.randn(num_forks, 8, 2 * head_dim, generator=gen).half().to(DEVICE)
    prefix_cache = torch.randn(prefix_len, 2, hkv, head_dim, generator=gen).half().to(DEVICE)
    suffix_cache = torch.randn(2, 26, hkv, 2 * head_dim, generator=gen).half().to(DEVICE)
    inputs = (
        q_wide[:, :, head_dim:],
        prefix_cache[:, 0],
        prefix_cache[:, 1],
        suffix_cache[0, :, :, :head_dim],
        suffix_cache[1, :, :, head_dim:],
        torch.tensor([0, 9, 9, 26], dtype=torch.int32, device=DEVICE),
    )
    assert not any(t.is_contiguous() for t in inputs[:5])
    run_and_check(inputs, torch.float16, sm_scale=0.3)


def test_agrees_with_torch_path_without_out_argument():
    inputs = random_inputs(
        5, 97, [3, 54, 0, 17, 1], 8, 2, 128, torch.bfloat16, device=DEVICE, seed=5
    )
    out = shared_prefix_decode(*inputs, backend="triton")
    expected = shared_prefix_decode(*inputs, backend="torch")
    assert out.dtype == torch.bfloat16 and out.shape == (5, 8, 128)
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
