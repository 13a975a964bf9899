"""The engine's in-process path on CUDA, and without the packages a bare GPU machine lacks.

The ``gpu`` tests run where CUDA is (``bench/gpu/run.sh`` runs every one of them on
the GPU machine) and compare with the same work on the CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from engine_runs import run_forks

from ted_sglang.engine.attention import AttentionBackend, SharedPrefixBackend
from ted_sglang.engine.model_loader import load_model
from ted_sglang.engine.model_runner import ModelRunner
from ted_sglang.engine.sampler import Sampler
from ted_sglang.engine.sampling_params import SamplingParams
from ted_sglang.engine.sequence import Sequence


def generate(
    runner: ModelRunner,
    prompts: list[list[int]],
    steps: int,
    sampling: SamplingParams | None = None,
) -> list[list[int]]:
    """Output ids of ``prompts`` submitted together (greedy unless ``sampling``)."""
    return run_forks(runner, prompts, steps, lambda *_: None, sampling=sampling)[0]


def fork_prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(3)
    prefix = torch.randint(3, 1000, (57,), generator=gen).tolist()
    return [prefix + torch.randint(3, 1000, (n,), generator=gen).tolist() for n in (1, 7, 4)]


def test_unconstrained_decoding_needs_no_xgrammar(tiny_model_dir: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "xgrammar", None)  # import xgrammar now fails
    loaded = load_model(tiny_model_dir)
    out = generate(ModelRunner(loaded, SharedPrefixBackend), fork_prompts(), 4, SamplingParams())
    assert [len(o) for o in out] == [4, 4, 4]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", [AttentionBackend, SharedPrefixBackend])
def test_forks_decode_on_cuda_as_on_the_cpu(tiny_model_dir: Path, backend) -> None:
    prompts = fork_prompts()
    on_cpu = generate(ModelRunner(load_model(tiny_model_dir)), prompts, 8)
    cuda = load_model(tiny_model_dir, device="cuda", dtype="float32")
    assert generate(ModelRunner(cuda, backend), prompts, 8) == on_cpu


@pytest.mark.gpu
def test_sampler_on_cuda_logits_draws_as_on_the_cpu() -> None:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 300, generator=gen) * 3
    params = [
        SamplingParams(top_k=1),
        SamplingParams(temperature=0.7, top_k=20),
        SamplingParams(top_p=0.8, min_p=0.05),
        SamplingParams(frequency_penalty=0.5, presence_penalty=0.3, repetition_penalty=1.2),
        SamplingParams(logit_bias={7: 5.0}, min_new_tokens=4, sampling_seed=11),
        SamplingParams(temperature=1.3),
    ]
    seqs = []
    for i, sp in enumerate(params):
        seq = Sequence(f"r{i}", [1], [1], sp, 10, frozenset({2}))
        seq.output_ids = [3, 4, 3]
        seq.return_logprob, seq.top_logprobs_num = True, 3
        seqs.append(seq)
    on_cpu = Sampler(seed=0).sample(logits.clone(), seqs)
    on_cuda = Sampler(seed=0).sample(logits.cuda(), seqs)
    assert on_cuda.token_ids == on_cpu.token_ids
    assert on_cuda.logprobs == pytest.approx(on_cpu.logprobs, abs=1e-4)
    assert on_cuda.failed == on_cpu.failed == []
