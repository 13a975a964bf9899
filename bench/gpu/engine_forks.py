"""N forks over a long shared prefix on the reference engine: shared-prefix vs per-request.

Question: with a real model's shape on a GPU, how many tokens/s and decode steps/s does
the reference engine make when N forks each generate T tokens over one cached P-token
prefix, with ``--attention-backend shared-prefix`` (the prefix KV stored once, attended
once per step for all N) and with ``per-request`` (a copy per fork, attended per fork)?

* The model: random weights (seeded) of a real model's shape (``--shape``; default the
  shape of SmolLM2-1.7B: a Llama of 24 layers, hidden 2,048, 32 query and 32 KV heads,
  MLP 8,192) and the tokenizer of ``--tokenizer`` (the GPU kit's: SmolLM2's), written to
  a work folder and loaded by the engine's own loader (bf16 on CUDA, float32 on the CPU).
  ``small`` (4 layers, hidden 512, 8 query and 8 KV heads of 64: multi-head like
  SmolLM2-1.7B, so that attention weighs as there) fits a CPU run over a 4k prefix;
  ``tiny`` (2 layers, hidden 64) is for a dry run.
* In process, through the engine's parts (model runner, radix cache, scheduler,
  sampler), no HTTP. Per N and backend: a fresh cache; one request computes the prefix;
  N requests of ``prefix + "\\nTrajectory i:"`` are submitted together and run until each
  has T new tokens (temperature 0.8, no stop tokens). A 2-token run of the same shape
  goes first (kernel compilation, allocator warm-up) and is not counted.
* ``tokens_per_s``: N·T / wall time from submission to the last token (prefill of the
  forks' own tokens and the per-request prefix copies included); ``decode_steps_per_s``:
  over the steps that only decode.
* The engine prefills a prompt in chunks of ``--max-prefill-tokens`` (its default: 2,048)
  and caches each chunk as a node; shared-prefix decode reads the forks' whole chain of
  shared nodes once per step (a chain of several nodes as one copy, made once while the
  forks decode: ``prefix_copies``). Shared-prefix runs once per value given (e.g.
  ``2048,8192``: the 4k prefix as several nodes, then as one); per-request, whose forks
  copy the whole prefix anyway, once. Each row reports ``prefix_nodes``.

Run from the repository root: ``python bench/gpu/engine_forks.py --tokenizer .gpu-kit/tokenizer``.
The JSON is rewritten after every run, so a time limit keeps the rows already measured.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: shared helpers

from _report import machine, save_json
from engine_decode import make_prompt

CACHE_TOKENS = 65536  # the engine's default radix cache budget
SHAPES = {  # Llama configurations; the vocabulary is the tokenizer's
    "smollm2-1.7b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "rope_theta": 130000.0,
    },
    "small": {
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}


def write_random_model(out: Path, shape: str, tokenizer_dir: Path, device: str, seed: int) -> Path:
    """A Llama model of ``shape`` with seeded random bf16 weights and the given tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **SHAPES[shape],
    )
    torch.manual_seed(seed)
    with torch.device(device):  # random init where it is fast
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def run_forks(
    loaded, backend: str, prompts: list[list[int]], new_tokens: int, max_prefill_tokens: int
) -> dict:
    """Run ``prompts`` (a cached common prefix, then their own tails) together to
    ``new_tokens`` each; returns tokens/s, decode steps/s and times."""
    import torch

    from ted_sglang.engine.attention import AttentionBackend, SharedPrefixBackend
    from ted_sglang.engine.kv import path_values
    from ted_sglang.engine.model_runner import ModelRunner
    from ted_sglang.engine.output import OutputBuilder
    from ted_sglang.engine.radix_cache import RadixCache, common_prefix_len
    from ted_sglang.engine.sampler import Sampler
    from ted_sglang.engine.sampling_params import SamplingParams
    from ted_sglang.engine.scheduler import Scheduler
    from ted_sglang.engine.sequence import Sequence

    cuda = loaded.device.startswith("cuda")
    cls = SharedPrefixBackend if backend == "shared-prefix" else AttentionBackend
    runner = ModelRunner(loaded, cls)
    cache = RadixCache(CACHE_TOKENS)
    outputs = OutputBuilder(loaded.tokenizer)
    scheduler = Scheduler(runner, cache, outputs, len(prompts), max_prefill_tokens)
    sampler = Sampler(seed=0)

    def seq(rid: str, ids: list[int], num_new: int) -> Sequence:
        return Sequence(rid, ids, list(ids), SamplingParams(temperature=0.8), num_new, frozenset())

    def step() -> bool:
        """One engine step; whether it only decoded."""
        plan = scheduler.schedule()
        assert plan is not None
        logits = runner.forward(plan.forward)
        sampled = sampler.sample(logits[plan.sample_rows], plan.sample_seqs)
        scheduler.postprocess(plan, sampled)
        return not plan.chunks

    shared = min(common_prefix_len(prompts[0], p) for p in prompts)
    scheduler.add(seq("prefix", prompts[0][:shared], 0))
    while scheduler.has_work:
        step()
    prefix_nodes = len(path_values(cache.match_prefix(prompts[0][:shared]).node))
    copies_before = runner.joined_chains.joins
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    forks = [seq(f"fork{i}", p, new_tokens) for i, p in enumerate(prompts)]
    start = time.perf_counter()
    for s in forks:
        scheduler.add(s)
    decode_steps, decode_s, first_decode = 0, 0.0, None
    while scheduler.has_work:
        t0 = time.perf_counter()
        if step():  # the sampler's .tolist() waits for the GPU: step times are complete
            decode_steps, decode_s = decode_steps + 1, decode_s + time.perf_counter() - t0
            first_decode = first_decode or t0
    wall = time.perf_counter() - start
    assert all(s.finish_reason == {"type": "length", "length": new_tokens} for s in forks)
    row = {
        "forks": len(prompts),
        "backend": backend,
        "max_prefill_tokens": max_prefill_tokens,
        "prefix_nodes": prefix_nodes,
        "tokens_per_s": len(forks) * new_tokens / wall,
        "decode_steps_per_s": decode_steps / decode_s if decode_s else None,
        "wall_s": wall,
        "until_first_decode_step_s": (first_decode or start) - start,
        "decode_steps": decode_steps,
        "cached_tokens_per_fork": min(s.num_cached_tokens for s in forks),
        "prefix_copies": runner.joined_chains.joins - copies_before,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }
    return row


def free_memory() -> None:
    """Give back what the last run held (its KV), so runs do not add up."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer folder")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-1.7b")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--forks", default="8,32,64", help="N values, comma-separated")
    parser.add_argument("--prefix-tokens", type=int, default=4096)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument(
        "--max-prefill-tokens",
        default="2048",
        help="the engine's prefill chunk; comma-separated values each get a shared-prefix run",
    )
    parser.add_argument("--work", type=Path, help="folder for the model (default: a temp one)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/engine_forks.json"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.new_tokens < 2:  # the first comes from prefill: no decode step to time
        parser.error("--new-tokens must be at least 2")

    import torch
    import transformers

    from ted_sglang.engine.model_loader import load_model

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda asked for, but torch sees no CUDA device", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        t0 = time.perf_counter()
        model_dir = write_random_model(
            Path(work) / args.shape, args.shape, args.tokenizer, args.device, args.seed
        )
        loaded = load_model(model_dir, device=args.device)
        print(f"model {args.shape} written and loaded in {time.perf_counter() - t0:.1f} s")
    config = loaded.model.config
    tokenizer = loaded.tokenizer
    prefix = make_prompt(tokenizer, args.prefix_tokens, args.seed)
    on_cuda = args.device.startswith("cuda")
    result = {
        "question": "tokens/s and decode steps/s of N forks over a shared prefix on the "
        "reference engine: shared-prefix vs per-request attention",
        "device": torch.cuda.get_device_name(args.device) if on_cuda else "cpu",
        "model": {
            "shape": args.shape,
            "parameters": sum(p.numel() for p in loaded.model.parameters()),
            "dtype": str(next(loaded.model.parameters()).dtype),
            "layers": config.num_hidden_layers,
            "query_heads": config.num_attention_heads,
            "kv_heads": config.num_key_value_heads,
            "vocab": config.vocab_size,
            "weights": "random (seeded)",
        },
        "prefix_tokens": len(prefix),
        "new_tokens": args.new_tokens,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "rows": [],
        "speedups": [],
        "seed": args.seed,
    }
    chunks = [int(x) for x in args.max_prefill_tokens.split(",")]
    runs = [("per-request", chunks[0])] + [("shared-prefix", c) for c in chunks]
    for n in [int(x) for x in args.forks.split(",")]:
        prompts = [prefix + tokenizer.encode(f"\nTrajectory {i + 1}:") for i in range(n)]
        per_request = None
        for backend, chunk in runs:
            run_forks(loaded, backend, prompts, 2, chunk)  # warm-up, not counted
            free_memory()
            row = run_forks(loaded, backend, prompts, args.new_tokens, chunk)
            free_memory()
            result["rows"].append(row)
            print(
                f"N={n:3d} {backend:13s} prefix in {row['prefix_nodes']} node(s): "
                f"{row['tokens_per_s']:9.1f} tokens/s {row['decode_steps_per_s']:8.2f} "
                f"decode steps/s  wall {row['wall_s']:.2f} s  prefix copies {row['prefix_copies']}"
            )
            if backend == "per-request":
                per_request = row
            else:
                assert per_request is not None
                speedup = {
                    "forks": n,
                    "max_prefill_tokens": chunk,
                    "prefix_nodes": row["prefix_nodes"],
                    "decode_steps_per_s": row["decode_steps_per_s"]
                    / per_request["decode_steps_per_s"],
                    "tokens_per_s": row["tokens_per_s"] / per_request["tokens_per_s"],
                }
                result["speedups"].append(speedup)
                print(
                    f"      shared-prefix / per-request: {speedup['decode_steps_per_s']:.2f}x "
                    f"decode steps/s, {speedup['tokens_per_s']:.2f}x tokens/s"
                )
            result["machine"] = machine(load_before)
            save_json(result, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
