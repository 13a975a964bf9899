"""Runs of the reference engine's parts in process (no HTTP), shared by the engine tests."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Seq

import torch

from ted_sglang.engine.model_runner import ModelRunner
from ted_sglang.engine.output import OutputBuilder
from ted_sglang.engine.radix_cache import RadixCache
from ted_sglang.engine.sampler import Sampler
from ted_sglang.engine.sampling_params import SamplingParams
from ted_sglang.engine.scheduler import Scheduler
from ted_sglang.engine.sequence import Sequence


def reference_logits(loaded, ids: list[int]) -> torch.Tensor:
    """The model's own forward (SDPA, no engine) over the whole sequence."""
    config = loaded.model.config.get_text_config()
    saved, config._attn_implementation = config._attn_implementation, "sdpa"
    try:
        with torch.inference_mode():
            return loaded.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
    finally:
        config._attn_implementation = saved


def run_forks(
    runner: ModelRunner,
    prompts: list[list[int]],
    new_tokens: int,
    on_step: Callable[[Scheduler, RadixCache], None],
    chunk: int = 2048,
    cached: Seq[list[int]] = (),
    sampling: SamplingParams | None = None,
) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Generations of ``prompts`` submitted together (greedy unless ``sampling``), through
    the real scheduler; returns each one's output ids and the logits it sampled from
    ``[new_tokens, vocab]``.

    ``cached``: prompts run first, one after another and without output, so that the
    cache holds their KV as the nodes those requests leave (``on_step`` is not called).
    """
    cache = RadixCache(10_000)
    scheduler = Scheduler(runner, cache, OutputBuilder(None), 16, chunk)
    sampler = Sampler(seed=0)

    def step() -> tuple:
        plan = scheduler.schedule()
        assert plan is not None
        logits = runner.forward(plan.forward)
        scheduler.postprocess(plan, sampler.sample(logits[plan.sample_rows], plan.sample_seqs))
        return plan, logits

    for i, prompt in enumerate(cached):
        scheduler.add(Sequence(f"c{i}", prompt, list(prompt), SamplingParams(), 0, frozenset()))
        while scheduler.has_work:
            step()
    seqs = [
        Sequence(f"r{i}", p, list(p), sampling or SamplingParams(top_k=1), new_tokens, frozenset())
        for i, p in enumerate(prompts)
    ]
    for seq in seqs:
        scheduler.add(seq)
    rows: dict[str, list[torch.Tensor]] = {s.rid: [] for s in seqs}
    while scheduler.has_work:
        plan, logits = step()
        for seq, row in zip(plan.sample_seqs, plan.sample_rows, strict=True):
            rows[seq.rid].append(logits[row].clone())
        on_step(scheduler, cache)
    assert all(s.finish_reason == {"type": "length", "length": new_tokens} for s in seqs)
    return [s.output_ids for s in seqs], [torch.stack(rows[s.rid]) for s in seqs]
