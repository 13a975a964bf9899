"""``ted-sglang demo``: sample data, distillation and evaluation on the embedded default.

Sized to finish in a few minutes on two CPU cores with SmolLM2-135M: a handful of
training and test questions, short trajectories, small edit documents.  Everything
lands in ``--workdir``: the data, the bank, its log, the evaluation report and the
HTML report of the run (``report.html``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DEMO_TRAIN = 6
DEMO_TEST = 10
DEMO_ROLLOUTS = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="sample data + distill + eval on the embedded default model",
        description="Write the sample set, distill a bank from its training split and "
        "evaluate the student on its test split with and without the bank, on a server "
        "launched for the purpose (the reference engine on the CPU).",
    )
    parser.add_argument("--workdir", type=Path, default=Path("ted-demo"), help="(./ted-demo)")
    parser.add_argument("--model", default=None, help="model to launch (smollm2-135m)")
    parser.add_argument("--student", metavar="URL", help="use this server instead of launching")
    parser.add_argument("--train", type=int, default=DEMO_TRAIN, help="training samples")
    parser.add_argument("--test", type=int, default=DEMO_TEST, help="test samples")
    parser.add_argument("--rollouts", type=int, default=DEMO_ROLLOUTS, help="per sample")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_demo)


def demo_config(rollouts: int) -> Any:
    """Settings that fit a two-core CPU: short answers, small edit documents."""
    from ted_sglang.bank import OperationLimits
    from ted_sglang.loop.config import DistillConfig, GenerationConfig

    return DistillConfig(
        rollouts=rollouts,
        skip_uniform=rollouts > 1,
        concurrency=3,
        max_entries=12,
        max_bank_tokens=600,
        limits=OperationLimits(max_operations=1, max_text_chars=140, min_text_chars=12),
        generation=GenerationConfig(
            student_max_tokens=96,
            solution_max_tokens=128,
            critique_max_tokens=64,
            max_trajectory_chars=500,
        ),
    )


def run_demo(args: argparse.Namespace) -> int:
    from ted_sglang.data import load_dataset, write_sample_set
    from ted_sglang.loop.cli import describe_distill
    from ted_sglang.loop.distill import distill
    from ted_sglang.loop.evaluate import evaluate, format_table
    from ted_sglang.runtime import open_runtime, server_cache_stats

    if args.train < 1 or args.test < 1 or args.rollouts < 1:
        raise ValueError("--train, --test and --rollouts must be at least 1")
    started = time.perf_counter()
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    count = 2 * max(args.train, args.test) + 4
    data = write_sample_set(work / "data", count=count, seed=0)
    train = load_dataset(data, split="train").samples[: args.train]
    test = load_dataset(data, split="test").samples[: args.test]
    print(f"sample set: {data} ({len(train)} train, {len(test)} test)")
    config = demo_config(args.rollouts)
    progress = not args.no_progress
    try:
        with open_runtime(args.student, None, model=args.model, log_dir=work) as rt:
            print(f"student and teacher: {rt.student.model_path} at {rt.student.url}")
            summary = distill(
                train, work / "bank.json", rt.student, rt.teacher, config, force=True,
                dataset={"path": str(data), "split": "train", "limit": args.train},
                progress=progress,
            )  # fmt: skip
            from ted_sglang.bank import ExperienceBank

            bank = ExperienceBank.load(work / "bank.json")
            report = evaluate(
                test, rt.student, bank, rollouts_per_sample=args.rollouts,
                gen=config.generation, concurrency=4, progress=progress,
                dataset={"path": str(data), "split": "test", "limit": args.test},
            )  # fmt: skip
            cache = server_cache_stats(rt.student.url)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.stderr.flush()
        os._exit(130)
    (work / "eval.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    from ted_sglang.report import write_report

    page = write_report(
        work / "report.html", summary.log_path, work / "bank.json", [work / "eval.json"]
    )
    total = time.perf_counter() - started
    print()
    print(describe_distill(summary.to_dict()))
    print()
    print(format_table(report))
    print()
    print(summarize(summary.to_dict(), report, bank, total, cache))
    print(f"report: {page}")
    return 0


def summarize(
    distilled: dict[str, Any],
    report: dict[str, Any],
    bank: Any,
    seconds: float,
    cache: dict[str, Any] | None = None,
) -> str:
    """The demo's closing lines (``cache``: the server's own prefix cache figures)."""
    without = report["conditions"]["no_bank"]
    with_bank = report["conditions"]["bank"]
    prompt = sum(c["tokens"]["prompt"] for c in report["conditions"].values())
    prompt += distilled["tokens"]["prompt"]
    cached = sum(c["tokens"]["cached"] for c in report["conditions"].values())
    cached += distilled["tokens"]["cached"]
    return "\n".join(
        [
            f"bank: {len(bank)} experiences (version {bank.version}), "
            f"{distilled['applied_operations']} operations applied, "
            f"{distilled['rejected_operations']} rejected",
            f"accuracy without bank: pass@1 {without['pass_at_1']:.1%}, "
            f"mean@{report['rollouts']} {without['mean_at_n']:.1%}",
            f"accuracy with bank:    pass@1 {with_bank['pass_at_1']:.1%}, "
            f"mean@{report['rollouts']} {with_bank['mean_at_n']:.1%}",
            f"tokens: {prompt} prompt tokens in generating requests, "
            f"{cached / prompt if prompt else 0:.0%} of them from the prefix cache",
        ]
        + (
            [
                f"server prefix cache, all requests (incl. prefix warm-ups): "
                f"{cache['cached_tokens']} of {cache['prompt_tokens']} prompt tokens cached "
                f"({cache['hit_rate']:.0%}), {cache['computed_prompt_tokens']} computed"
            ]
            if cache
            else []
        )
        + [f"demo finished in {seconds:.0f} s"]
    )
