"""Distillation throughput: samples per minute of the TED loop, and the demo's wall time.

Question: how many training samples per minute does ``distill`` process on this
machine, with the demo's settings, on a given model (the tiny random test model
or SmolLM2-135M), with 1 or more reference engines (workers), and how much of the
prompt comes from the prefix cache?

* ``--model tiny``: a tiny random model written to a temporary directory;
  any other value is passed to the reference engine (``smollm2-135m``, a path).
* ``--engines 1,2``: run the same samples once per engine count (each run launches
  that many engines, which share the machine's CPU threads, as ``distill --workers K``
  does) and print the throughput of each count relative to the first.
* ``--demo``: time ``ted-sglang demo`` end to end instead (a fresh process, engine
  start included).

Every sample asks the teacher (``skip_uniform`` off), so each run does the same kind
of work whatever the rollouts' outcomes; generated tokens per second are reported
beside samples per minute, since sampled answers differ in length between runs.
Figures are printed with units and saved as JSON in ``--out``. Run from the
repository root: ``python bench/distill_speed.py --model smollm2-135m --samples 6
--engines 1,2``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from _report import machine, save_json


def distill_speed(model: str, samples: int, concurrency: int, rollouts: int, engines: int) -> dict:
    """One distillation run over ``samples`` training samples on ``engines`` launched
    reference engines (``concurrency`` samples in flight per engine)."""
    from ted_sglang.data import load_dataset, write_sample_set
    from ted_sglang.loop.demo import demo_config
    from ted_sglang.loop.distill import distill
    from ted_sglang.runtime import connect, launch

    work = Path(tempfile.mkdtemp(prefix="ted-bench-"))
    label = model
    if model == "tiny":
        from ted_sglang.engine.tiny_model import write_tiny_model

        model = str(write_tiny_model(work / "tiny", seed=0))
    data = write_sample_set(work / "data", count=2 * samples + 4, seed=0)
    train = load_dataset(data, split="train").samples[:samples]
    config = replace(demo_config(rollouts), concurrency=concurrency, skip_uniform=False)
    load_before = os.getloadavg()
    started = time.perf_counter()
    servers = []
    try:
        for n in range(engines):
            servers.append(launch("engine", model, work, n, engines))
        startup = time.perf_counter() - started
        students = [connect(server.url) for server in servers]
        summary = distill(train, work / "bank.json", students, None, config, progress=False)
    finally:
        for server in servers:
            server.close()
    result = summary.to_dict()
    tokens = result["tokens"]
    return {
        "model": label,
        "engines": engines,
        "threads_per_engine": max(1, (os.cpu_count() or 1) // engines) if engines > 1 else None,
        "samples": samples,
        "rollouts": rollouts,
        "concurrency_per_engine": concurrency,
        "engine_start_s": round(startup, 2),
        "distill_s": result["seconds"],
        "samples_per_minute": result["samples_per_minute"],
        "generated_tokens_per_s": round(tokens["completion"] / result["seconds"], 2),
        "cache_hit_rate": result["cache_hit_rate"],
        "tokens": tokens,
        "bank_version": result["bank_version"],
        "bank_size": result["bank_size"],
        "reconcile_merged": result["reconcile_merged"],
        "reconcile_dropped": result["reconcile_dropped"],
        "applied_operations": result["applied_operations"],
        "rejected_operations": result["rejected_operations"],
        "failed": len(result["failed"]),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def demo_time(model: str | None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="ted-bench-demo-"))
    cmd = [sys.executable, "-m", "ted_sglang.cli", "demo", "--workdir", str(work), "--no-progress"]
    if model:
        cmd += ["--model", model]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"demo failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(done.stdout)
    return {"model": model or "smollm2-135m", "demo_wall_s": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny, smollm2-135m or a model path")
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=2, help="samples in flight per engine")
    parser.add_argument("--rollouts", type=int, default=3)
    parser.add_argument("--engines", default="1", help="engine counts to compare, e.g. 1,2")
    parser.add_argument("--demo", action="store_true", help="time `ted-sglang demo` instead")
    parser.add_argument("--out", type=Path, default=Path("bench/results/distill_speed.json"))
    args = parser.parse_args()
    if args.demo:
        result = demo_time(None if args.model == "tiny" else args.model)
        print(f"demo wall time: {result['demo_wall_s']} s")
    else:
        counts = [int(n) for n in args.engines.split(",")]
        if not counts or min(counts) < 1:
            raise SystemExit("--engines takes positive counts, e.g. 1,2")
        runs = []
        for n in counts:
            run = distill_speed(args.model, args.samples, args.concurrency, args.rollouts, n)
            runs.append(run)
            print(
                f"{run['model']}, {n} engine(s): {run['samples_per_minute']:.2f} samples/min "
                f"({run['samples']} samples in {run['distill_s']} s, {args.rollouts} rollouts, "
                f"{args.concurrency} in flight per engine), "
                f"{run['generated_tokens_per_s']:.1f} generated tokens/s; prompt tokens "
                f"{run['tokens']['prompt']}, {run['cache_hit_rate']:.0%} cached; engine start "
                f"{run['engine_start_s']} s; load average before {run['load_average_before'][0]}"
            )
        base = runs[0]
        ratios = {
            str(r["engines"]): {
                "samples_per_minute": round(r["samples_per_minute"] / base["samples_per_minute"], 3)
                if base["samples_per_minute"]
                else None,
                "generated_tokens_per_s": round(
                    r["generated_tokens_per_s"] / base["generated_tokens_per_s"], 3
                )
                if base["generated_tokens_per_s"]
                else None,
            }
            for r in runs
        }
        for r in runs[1:]:
            ratio = ratios[str(r["engines"])]
            print(
                f"{r['engines']} vs {base['engines']} engine(s): x{ratio['samples_per_minute']} "
                f"samples/min, x{ratio['generated_tokens_per_s']} generated tokens/s"
            )
        result = {"runs": runs, "ratio_to_first": ratios}
    result["machine"] = machine()
    print(f"saved {save_json(result, args.out)}")


if __name__ == "__main__":
    main()
