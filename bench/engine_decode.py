"""Decode steps/s of forks over a long shared prefix: shared-prefix vs per-request attention.

Question: when B requests decode together over one ~1.2k-token cached prefix, how
many engine steps per second does the reference engine make with
``--attention-backend shared-prefix`` (the prefix KV stored once, in the radix
cache, and attended once per step for all B queries) than with ``per-request``
(each request its own copy, attended alone)?

* In process, through the engine's own parts (model runner, radix cache,
  scheduler, sampler), no HTTP: a step is schedule + forward + sample + postprocess.
* Per batch size B: a fresh cache; one request computes the prefix; B requests of
  ``prefix + "Trajectory i:"`` are submitted together and run until all decode;
  then ``--steps`` decode steps are timed (temperature 0.8, no stop tokens).
* Also per B: per-request decode over a 16-token context, the ceiling the
  shared-prefix path tries to reach; and plain ``transformers`` decode of the same
  B prompts (the model's own forward with SDPA and a ``DynamicCache`` holding a copy
  of the prefix KV per sequence, batch B, greedy): the baseline outside this engine.
* Backends alternate over ``--rounds`` rounds; the fastest round of each is kept
  (robust to bursts of other work on a shared machine).

Figures are printed with units and saved as JSON in ``--out``. Run from the
repository root: ``python bench/engine_decode.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from _report import machine, save_json

BACKENDS = ("per-request", "shared-prefix")
_VOCABULARY = (
    "the student reads each question carefully and writes down what is given before "
    "solving it step by step checking units counting items twice and comparing the result"
)


def make_prompt(tokenizer, num_tokens: int, seed: int) -> list[int]:
    """``num_tokens`` token ids of deterministic English-like text."""
    import random

    words = _VOCABULARY.split()
    rng = random.Random(seed)
    ids: list[int] = []
    while len(ids) < num_tokens:
        ids = tokenizer.encode(" ".join(rng.choice(words) for _ in range(num_tokens)))
    return ids[:num_tokens]


def decode_steps_per_s(loaded, backend: str, prompts: list[list[int]], steps: int) -> float:
    """Engine steps/s while ``len(prompts)`` requests decode together (prefix cached first)."""
    from ted_sglang.engine.attention import AttentionBackend, SharedPrefixBackend
    from ted_sglang.engine.model_runner import ModelRunner
    from ted_sglang.engine.output import OutputBuilder
    from ted_sglang.engine.radix_cache import RadixCache, common_prefix_len
    from ted_sglang.engine.sampler import Sampler
    from ted_sglang.engine.sampling_params import SamplingParams
    from ted_sglang.engine.scheduler import Scheduler
    from ted_sglang.engine.sequence import Sequence

    cls = SharedPrefixBackend if backend == "shared-prefix" else AttentionBackend
    runner = ModelRunner(loaded, cls)
    scheduler = Scheduler(runner, RadixCache(65536), OutputBuilder(loaded.tokenizer), 64, 4096)
    sampler = Sampler(seed=0)

    def run(seqs: list[Sequence], num_steps: int | None) -> None:
        for seq in seqs:
            scheduler.add(seq)
        done = 0
        while scheduler.has_work and (num_steps is None or done < num_steps):
            plan = scheduler.schedule()
            assert plan is not None
            logits = runner.forward(plan.forward)
            sampled = sampler.sample(logits[plan.sample_rows], plan.sample_seqs)
            scheduler.postprocess(plan, sampled)
            done += 1

    def seq(rid: str, ids: list[int], new_tokens: int) -> Sequence:
        sp = SamplingParams(temperature=0.8)
        return Sequence(rid, ids, list(ids), sp, new_tokens, frozenset())

    shared = min(common_prefix_len(prompts[0], p) for p in prompts[1:]) if len(prompts) > 1 else 0
    if shared:
        run([seq("prefix", prompts[0][:shared], 0)], None)  # the prefix lands in the cache
    forks = [seq(f"fork{i}", p, steps + 8) for i, p in enumerate(prompts)]
    for s in forks:
        scheduler.add(s)
    while len(scheduler.running) < len(forks):  # prefill every fork's own tokens
        run([], 1)
    assert all(s.num_output_tokens >= 1 for s in forks)
    start = time.perf_counter()
    run([], steps)
    elapsed = time.perf_counter() - start
    assert all(not s.is_finished for s in forks)
    for s in forks:
        scheduler.abort(s, "benchmark over")
    return steps / elapsed


def transformers_steps_per_s(loaded, prompts: list[list[int]], steps: int) -> float:
    """Decode steps/s of the model's own forward for the batch of ``prompts``: their
    common prefix is computed once and copied into every row of a ``DynamicCache``,
    then each row's tail (cut to the shortest tail) is fed, then greedy decoding."""
    import torch

    from ted_sglang.engine.radix_cache import common_prefix_len

    shared = min(common_prefix_len(prompts[0], p) for p in prompts)
    tail_len = min(len(p) - shared for p in prompts)
    assert shared > 0 and tail_len > 0
    tails = torch.tensor([p[shared : shared + tail_len] for p in prompts])
    model = loaded.model
    config = model.config.get_text_config()
    engine_attention, config._attn_implementation = config._attn_implementation, "sdpa"
    try:
        return _plain_decode(model, prompts[0][:shared], tails, steps)
    finally:
        config._attn_implementation = engine_attention


def _plain_decode(model, prefix: list[int], tails, steps: int) -> float:
    import torch
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = DynamicCache()
        model(input_ids=torch.tensor([prefix]), past_key_values=cache)
        cache.batch_repeat_interleave(len(tails))  # one copy of the prefix per sequence
        out = model(input_ids=tails, past_key_values=cache)
        start = time.perf_counter()
        for _ in range(steps):
            next_ids = out.logits[:, -1].argmax(-1, keepdim=True)
            out = model(input_ids=next_ids, past_key_values=cache)
        return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--batch-sizes", default="8,16")
    parser.add_argument("--prefix-tokens", type=int, default=1200)
    parser.add_argument("--steps", type=int, default=24, help="timed decode steps per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.prefix_tokens, args.steps, args.rounds = "4", 256, 4, 1

    import torch

    from ted_sglang.engine.model_loader import load_model

    torch.manual_seed(args.seed)
    loaded = load_model(args.model)
    tokenizer = loaded.tokenizer
    prefix = make_prompt(tokenizer, args.prefix_tokens, args.seed)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    load_before = os.getloadavg()
    rows = []
    for batch in batch_sizes:
        tails = [tokenizer.encode(f"\nTrajectory {i + 1}:") for i in range(batch)]
        long_prompts = [prefix + t for t in tails]
        short_prompts = [make_prompt(tokenizer, 16, args.seed + 1 + i) for i in range(batch)]
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for backend in BACKENDS:
                rate = decode_steps_per_s(loaded, backend, long_prompts, args.steps)
                best[backend] = max(best.get(backend, 0.0), rate)
        short = max(
            decode_steps_per_s(loaded, "per-request", short_prompts, args.steps)
            for _ in range(args.rounds)
        )
        plain = max(
            transformers_steps_per_s(loaded, long_prompts, args.steps) for _ in range(args.rounds)
        )
        row = {
            "batch": batch,
            "prefix_tokens": len(long_prompts[0]) - len(tails[0]),
            "per_request_steps_per_s": best["per-request"],
            "shared_prefix_steps_per_s": best["shared-prefix"],
            "speedup": best["shared-prefix"] / best["per-request"],
            "short_context_steps_per_s": short,
            "transformers_steps_per_s": plain,
            "speedup_vs_transformers": best["shared-prefix"] / plain,
        }
        rows.append(row)
        print(
            f"batch {batch:3d} over a {row['prefix_tokens']}-token shared prefix: "
            f"per-request {row['per_request_steps_per_s']:6.2f} steps/s, shared-prefix "
            f"{row['shared_prefix_steps_per_s']:6.2f} steps/s ({row['speedup']:.2f} x); "
            f"16-token context {short:6.2f} steps/s; transformers (a prefix copy per "
            f"sequence) {plain:6.2f} steps/s ({row['speedup_vs_transformers']:.2f} x)"
        )
    load_after = os.getloadavg()
    print(f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    result = {
        "question": "decode steps/s of B forks over a shared prefix: shared-prefix vs "
        "per-request attention",
        "model": args.model,
        "dtype": str(next(loaded.model.parameters()).dtype),
        "steps": args.steps,
        "rounds": args.rounds,
        "results": rows,
        "machine": {**machine(load_before[0]), "torch_threads": torch.get_num_threads()},
        "seed": args.seed,
    }
    path = Path(args.out) / f"engine_decode{'_quick' if args.quick else ''}.json"
    print(f"saved {save_json(result, path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
