"""Forked rollouts on the reference engine vs plain ``transformers`` generate.

Question: how much faster are N sampled trajectories over one shared prompt
when the engine computes the prompt once (radix cache) and decodes the N
branches as one batch, than when a user calls ``model.generate`` once per
trajectory (no prefix reuse, batch 1)?

* engine: an SGLang frontend program, ``s += prefix; s.text(); s.fork(N)`` and
  ``sgl.gen(max_tokens=T, ignore_eos=True)`` in each branch, timed end to end
  over HTTP, starting from an empty cache (``/flush_cache``).
* baseline: ``model.generate(prefix + branch suffix, max_new_tokens=T,
  min_new_tokens=T, do_sample=True)`` for each branch in turn, same model,
  same dtype, same machine.
* rounds: engine and baseline alternate ``--rounds`` times; the fastest of each
  is compared (robust to bursts of other work on a shared machine).
* prefill: one ~2k-token prompt with ``max_new_tokens: 1``, right after
  ``/flush_cache`` and again with its prefix cached (median of a few runs).

Figures are printed with units and saved as JSON in ``--out``. Run from the
repository root: ``python bench/engine_fork.py [--quick] [--endpoint URL]``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

from _report import machine, save_json

_VOCABULARY = (
    "the student reads each question carefully and writes down what is given before "
    "solving it step by step checking units counting items twice and comparing the "
    "result with the question a short general lesson helps many later problems when "
    "the answer does not make sense go back to the previous step and look for the "
    "mistake triangles have three sides squares four and circles none the sum of the "
    "angles of a triangle is one hundred eighty degrees"
)
WORDS = _VOCABULARY.split()


def make_text(tokenizer, num_tokens: int, seed: int) -> str:
    """Deterministic English-like text of about ``num_tokens`` tokens."""
    rng = random.Random(seed)
    words: list[str] = []
    while True:
        words.extend(rng.choice(WORDS) for _ in range(64))
        text = " ".join(words)
        if len(tokenizer.encode(text)) >= num_tokens:
            ids = tokenizer.encode(text)[:num_tokens]
            return tokenizer.decode(ids)


def process_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system, all threads) a local process has used, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_engine(
    url: str, prefix: str, suffixes: list[str], new_tokens: int, pid: int | None = None
) -> dict:
    import httpx
    import sglang as sgl

    # No chat roles here; "default" adds no stop string, so every branch makes exactly
    # new_tokens tokens (chatml would stop a branch at "<|im_end|>" despite ignore_eos).
    backend = sgl.RuntimeEndpoint(url, chat_template_name="default")

    @sgl.function
    def rollouts(s, prefix, suffixes):
        s += prefix
        s.text()  # sync before fork, so the prefix is cached once (frontend race)
        forks = s.fork(len(suffixes))
        for fork, suffix in zip(forks, suffixes, strict=True):
            fork += suffix + sgl.gen("out", max_tokens=new_tokens, ignore_eos=True, temperature=0.8)
        s["metas"] = [fork.get_meta_info("out") for fork in forks]

    httpx.post(url + "/flush_cache", timeout=60).raise_for_status()
    cpu_start = process_cpu_s(pid)
    start = time.perf_counter()
    state = rollouts.run(prefix=prefix, suffixes=suffixes, backend=backend)
    wall = time.perf_counter() - start
    cpu_end = process_cpu_s(pid)
    metas = state["metas"]
    tokens = sum(m["completion_tokens"] for m in metas)
    assert tokens == new_tokens * len(suffixes), [m["finish_reason"] for m in metas]
    cpu = None if cpu_start is None or cpu_end is None else cpu_end - cpu_start
    return {
        "wall_s": wall,
        "engine_cpu_s": cpu,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / wall,
        "prompt_tokens": [m["prompt_tokens"] for m in metas],
        "cached_tokens": [m["cached_tokens"] for m in metas],
    }


def run_baseline(loaded, prompts: list[str], new_tokens: int, seed: int) -> dict:
    import torch

    model, tokenizer = loaded.model, loaded.tokenizer
    torch.manual_seed(seed)
    walls, cpus = [], []
    tokens = 0
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([tokenizer.encode(prompt)])
            cpu_start = time.process_time()
            start = time.perf_counter()
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=True,
                temperature=0.8,
                top_p=1.0,
                top_k=0,
                pad_token_id=tokenizer.pad_token_id or 0,
            )
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu_start)
            tokens += out.shape[1] - ids.shape[1]
    wall = sum(walls)
    return {
        "wall_s": wall,
        "cpu_s": sum(cpus),
        "generated_tokens": tokens,
        "tokens_per_s": tokens / wall,
        "per_trajectory_s": walls,
    }


def run_prefill(url: str, prompt: str, repeats: int) -> dict:
    import httpx

    client = httpx.Client(base_url=url, timeout=600)
    body = {"text": prompt, "sampling_params": {"max_new_tokens": 1, "temperature": 0}}
    flushed, cached, metas = [], [], []
    for _ in range(repeats):
        client.post("/flush_cache").raise_for_status()
        for bucket in (flushed, cached):
            start = time.perf_counter()
            response = client.post("/generate", json=body)
            bucket.append(time.perf_counter() - start)
            response.raise_for_status()
            metas.append(response.json()["meta_info"])
    flushed_s, cached_s = statistics.median(flushed), statistics.median(cached)
    return {
        "prompt_tokens": metas[0]["prompt_tokens"],
        "cached_tokens_when_cached": metas[1]["cached_tokens"],
        "flushed_s": flushed_s,
        "cached_s": cached_s,
        "speedup": flushed_s / cached_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", default=None, help="a running engine (else one is launched)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--forks", type=int, default=8)
    parser.add_argument("--prefix-tokens", type=int, default=1000)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prefill-tokens", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating engine/baseline rounds; best kept"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.forks, args.prefix_tokens, args.new_tokens, args.prefill_tokens = 4, 256, 16, 512
        args.rounds = 1

    from ted_sglang.engine.launcher import launch_engine
    from ted_sglang.engine.model_loader import load_model

    loaded = load_model(args.model)
    tokenizer = loaded.tokenizer
    prefix = make_text(tokenizer, args.prefix_tokens, args.seed)
    suffixes = [f"\nTrajectory {i + 1}:" for i in range(args.forks)]
    long_prompt = make_text(tokenizer, args.prefill_tokens, args.seed + 1)

    load_before = os.getloadavg()
    engine = None
    url = args.endpoint
    if url is None:
        engine = launch_engine(args.model)
        url = engine.url
    prompts = [prefix + s for s in suffixes]
    engine_runs, baseline_runs = [], []
    try:
        run_engine(url, prefix[:200], suffixes[:2], 2)  # warm-up
        pid = engine.process.pid if engine is not None else None
        # Alternate, and keep each side's fastest round: on a shared machine a burst of
        # other work then slows one round of one side, not the comparison.
        for round_index in range(args.rounds):
            engine_runs.append(run_engine(url, prefix, suffixes, args.new_tokens, pid))
            baseline_runs.append(
                run_baseline(loaded, prompts, args.new_tokens, args.seed + round_index)
            )
        prefill = run_prefill(url, long_prompt, repeats=1 if args.quick else 3)
    finally:
        if engine is not None:
            engine.close()
    engine_result = min(engine_runs, key=lambda r: r["wall_s"])
    baseline = min(baseline_runs, key=lambda r: r["wall_s"])
    engine_result["all_rounds_wall_s"] = [r["wall_s"] for r in engine_runs]
    baseline["all_rounds_wall_s"] = [r["wall_s"] for r in baseline_runs]

    speedup = engine_result["tokens_per_s"] / baseline["tokens_per_s"]
    # CPU time is less disturbed than wall time by other work on a shared machine.
    cpu_speedup = None
    if engine_result["engine_cpu_s"]:
        cpu_speedup = baseline["cpu_s"] / engine_result["engine_cpu_s"]
    result = {
        "question": "N forked trajectories: engine (radix cache + batched decode) vs "
        "transformers generate per trajectory",
        "model": args.model,
        "forks": args.forks,
        "prefix_tokens": engine_result["prompt_tokens"][0],
        "new_tokens": args.new_tokens,
        "engine": engine_result,
        "baseline": baseline,
        "speedup": speedup,
        "cpu_time_speedup": cpu_speedup,
        "prefill_2k": prefill,
        "machine": machine(load_before[0]),
        "seed": args.seed,
        "rounds": args.rounds,
    }
    print(
        f"model {args.model}: {args.forks} forks x {args.new_tokens} new tokens over a "
        f"{result['prefix_tokens']}-token shared prefix"
    )
    print(
        f"  engine    {engine_result['tokens_per_s']:8.1f} tokens/s "
        f"({engine_result['wall_s']:.2f} s; cached_tokens per fork "
        f"{engine_result['cached_tokens']})"
    )
    print(f"  baseline  {baseline['tokens_per_s']:8.1f} tokens/s ({baseline['wall_s']:.2f} s)")
    print(f"  speedup   {speedup:8.2f} x (target >= 4 x)")
    if cpu_speedup is not None:
        print(
            f"  CPU time  engine {engine_result['engine_cpu_s']:.1f} s, baseline "
            f"{baseline['cpu_s']:.1f} s: {cpu_speedup:.2f} x"
        )
    print(
        f"prefill of a {prefill['prompt_tokens']}-token prompt, max_new_tokens 1: "
        f"{prefill['flushed_s'] * 1000:.0f} ms after /flush_cache, "
        f"{prefill['cached_s'] * 1000:.0f} ms cached ({prefill['speedup']:.1f} x)"
    )
    print(
        f"load average (1 min) {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after, "
        f"on {os.cpu_count()} CPUs"
    )
    path = Path(args.out) / f"engine_fork{'_quick' if args.quick else ''}.json"
    print(f"saved {save_json(result, path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
