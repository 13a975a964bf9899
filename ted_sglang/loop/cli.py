"""``ted-sglang distill`` and ``ted-sglang eval``: the TED loop from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    distill = subparsers.add_parser(
        "distill",
        help="distill an experience bank from a dataset (student rollouts + teacher)",
        description="Run the TED loop over a dataset's training split: the student samples "
        "N trajectories per question under the bank, the teacher compares them with its own "
        "solution and the ground truth and edits the bank (--batch-size samples' proposals "
        "reconciled into one version). Checkpoints after every batch; "
        "--resume continues an interrupted run.",
    )
    _data_arguments(distill, split="train")
    distill.add_argument("--bank", required=True, type=Path, help="bank file to write (JSON)")
    distill.add_argument("--log", type=Path, help="step log (JSONL; default: BANK.log.jsonl)")
    distill.add_argument("--resume", action="store_true", help="continue the run in --bank")
    distill.add_argument("--force", action="store_true", help="overwrite an existing --bank")
    distill.add_argument(
        "--max-connection-failures",
        type=int,
        default=3,
        metavar="N",
        help="stop (exit 3, checkpoint saved) after N requests in a row cannot reach a "
        "server (3; 0: never)",
    )
    _server_arguments(distill, teacher=True)
    distill.add_argument("--rollouts", type=int, default=5, help="trajectories per sample (5)")
    distill.add_argument("--seed", type=int, default=0, help="seed of the training order (0)")
    distill.add_argument(
        "--concurrency", type=int, default=2, help="samples in flight per student endpoint (2)"
    )
    distill.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="samples whose proposals are reconciled into one bank version (1)",
    )
    distill.add_argument(
        "--workers",
        type=int,
        default=None,
        help="launch K reference engines and share the samples among them (default: one, or "
        "one per --student URL)",
    )
    distill.add_argument("--max-entries", type=int, default=64, help="bank budget: entries (64)")
    distill.add_argument(
        "--max-tokens", type=int, default=2048, help="bank budget: rendered tokens (2048)"
    )
    distill.add_argument("--max-ops", type=int, default=8, help="operations per document (8)")
    distill.add_argument(
        "--max-text-chars", type=int, default=400, help="characters per experience (400)"
    )
    distill.add_argument(
        "--structured-chains",
        action="store_true",
        help="condense trajectories into premises -> steps -> conclusion before the teacher "
        "compares them",
    )
    distill.add_argument(
        "--skip-uniform",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="do not ask the teacher about samples whose rollouts are all right or all wrong "
        "(they teach nothing; usage statistics are still counted)",
    )
    distill.add_argument(
        "--similarity",
        choices=("embedding", "text"),
        default="embedding",
        help="how near-duplicate experiences are found: a sentence-embedding model "
        "(all-MiniLM-L6-v2; text similarity if it is not installed) or text (embedding)",
    )
    distill.add_argument(
        "--dup-threshold",
        type=float,
        default=0.9,
        help="similarity at which a new experience repeats another and is dropped (0.9)",
    )
    distill.add_argument(
        "--merge-threshold",
        type=float,
        default=0.7,
        help="similarity at which compression proposes merging entries (0.7)",
    )
    _generation_arguments(distill, teacher=True)
    distill.set_defaults(func=run_distill)

    evaluate = subparsers.add_parser(
        "eval",
        help="accuracy of the student with and without a bank",
        description="Score the student on a split: without a bank and, given --bank FILE, "
        "with it too. Reports pass@1 and the mean over N rollouts, per category.",
    )
    _data_arguments(evaluate, split="test")
    evaluate.add_argument("--bank", default="none", help="bank file, or 'none' (default)")
    evaluate.add_argument("--out", type=Path, help="write the report here (JSON)")
    _server_arguments(evaluate, teacher=False)
    evaluate.add_argument("--rollouts", type=int, default=5, help="trajectories per sample (5)")
    evaluate.add_argument(
        "--greedy", action="store_true", help="pass@1 from a greedy answer, not the first rollout"
    )
    evaluate.add_argument("--concurrency", type=int, default=4, help="samples in flight (4)")
    evaluate.add_argument(
        "--exclude-trained",
        action="store_true",
        help="leave out samples the bank was distilled from, by id or identical question "
        "(default: refuse to run)",
    )
    evaluate.add_argument(
        "--allow-overlap",
        action="store_true",
        help="score samples the bank was distilled from anyway (e.g. to measure training "
        "accuracy); the report says so",
    )
    _generation_arguments(evaluate, teacher=False)
    evaluate.set_defaults(func=run_eval)


def _data_arguments(parser: argparse.ArgumentParser, split: str) -> None:
    parser.add_argument("--data", required=True, type=Path, help="dataset file or folder")
    parser.add_argument(
        "--split", default=split, help=f"split to use ({split}; 'all' for every row)"
    )
    parser.add_argument("--limit", type=int, help="use the first K samples of the split")


def _server_arguments(parser: argparse.ArgumentParser, teacher: bool) -> None:
    parser.add_argument(
        "--student",
        metavar="URL",
        action="append",
        help="SGLang-API server (or router) of the student; default: launch one"
        + ("; repeat it or give a comma-separated list for several workers" if teacher else ""),
    )
    if teacher:
        parser.add_argument(
            "--teacher", metavar="URL", help="server of the teacher (default: the student)"
        )
    parser.add_argument(
        "--model", help="model of the launched server (default smollm2-135m); needs no --student"
    )
    parser.add_argument("--chat-template", help="SGLang chat template name (default: detected)")
    parser.add_argument(
        "--request-timeout", type=float, default=600.0, help="seconds per request (600)"
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="retries of a sample whose requests fail (2)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _generation_arguments(parser: argparse.ArgumentParser, teacher: bool) -> None:
    parser.add_argument(
        "--student-max-tokens", type=int, default=256, help="tokens per trajectory (256)"
    )
    parser.add_argument("--temperature", type=float, default=0.8, help="student temperature")
    if teacher:
        parser.add_argument(
            "--solution-max-tokens", type=int, default=384, help="teacher solution tokens (384)"
        )
        parser.add_argument(
            "--critique-max-tokens", type=int, default=192, help="teacher critique tokens (192)"
        )
        parser.add_argument(
            "--ops-max-tokens", type=int, help="cap on an operations document (default: schema)"
        )
        parser.add_argument(
            "--teacher-temperature", type=float, default=0.3, help="teacher temperature (0.3)"
        )


def load_samples(data: Path, split: str, limit: int | None) -> tuple[list, dict[str, Any]]:
    """The samples of ``split`` (first ``limit``), and a description for reports."""
    from ted_sglang.data import load_dataset

    if limit is not None and limit < 1:
        raise ValueError("--limit must be at least 1")
    chosen = None if split == "all" else split
    dataset = load_dataset(data, split=chosen)
    for problem in dataset.problems:
        print(f"skipped: {problem}", file=sys.stderr)
    samples = dataset.samples[:limit] if limit is not None else dataset.samples
    info = {"path": str(dataset.source), "split": split, "limit": limit}
    return samples, info


def generation_config(args: argparse.Namespace) -> Any:
    from ted_sglang.loop.config import GenerationConfig

    values = {
        "student_max_tokens": args.student_max_tokens,
        "student_temperature": args.temperature,
    }
    if hasattr(args, "solution_max_tokens"):
        values.update(
            solution_max_tokens=args.solution_max_tokens,
            critique_max_tokens=args.critique_max_tokens,
            ops_max_tokens=args.ops_max_tokens,
            teacher_temperature=args.teacher_temperature,
        )
    return GenerationConfig(**values)


def distill_config(args: argparse.Namespace) -> Any:
    from ted_sglang.bank import OperationLimits
    from ted_sglang.loop.config import DistillConfig

    return DistillConfig(
        rollouts=args.rollouts,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        seed=args.seed,
        structured_chains=args.structured_chains,
        skip_uniform=args.skip_uniform,
        similarity=args.similarity,
        dup_threshold=args.dup_threshold,
        merge_threshold=args.merge_threshold,
        retries=args.retries,
        max_entries=args.max_entries,
        max_bank_tokens=args.max_tokens,
        limits=OperationLimits(max_operations=args.max_ops, max_text_chars=args.max_text_chars),
        generation=generation_config(args),
    )


def run_distill(args: argparse.Namespace) -> int:
    from ted_sglang.loop.distill import DistillStopped, distill
    from ted_sglang.runtime import open_runtime

    config = distill_config(args)
    samples, info = load_samples(args.data, args.split, args.limit)
    # Requests still in flight when a run stops may fail after distill() returns: their
    # failures were counted already, so SGLang's per-request tracebacks are only noise.
    warnings.filterwarnings("ignore", message="Error in stream_executor")
    if args.resume and args.force:
        raise ValueError("--resume and --force contradict each other: pick one")
    if args.bank.exists() and not (args.resume or args.force):
        raise ValueError(f"{args.bank} already exists: pass --resume or --force")
    try:
        with open_runtime(
            args.student, args.teacher, model=args.model, chat_template=args.chat_template,
            request_timeout=args.request_timeout, workers=args.workers or 1,
        ) as rt:  # fmt: skip
            summary = distill(
                samples, args.bank, rt.students, rt.teacher if args.teacher else None, config,
                dataset=info, log_path=args.log, resume=args.resume, force=args.force,
                progress=not args.no_progress, max_connection_failures=args.max_connection_failures,
            )  # fmt: skip
    except KeyboardInterrupt:
        _interrupted(f"every finished step is in {args.bank}: continue with --resume")
    except DistillStopped as exc:
        print(f"distill stopped: {exc}", file=sys.stderr)
        return 3
    print(describe_distill(summary.to_dict()))
    if summary.failed:
        print(
            f"{len(summary.failed)} sample(s) failed: "
            + ", ".join(i for i, _ in summary.failed)
            + "; run again with --resume to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def describe_distill(s: dict[str, Any]) -> str:
    t = s["tokens"]
    skipped = s.get("skipped_uniform") or {}
    lines = [
        f"bank {s['bank']}: version {s['bank_version']}, {s['bank_size']} entries",
        f"samples: {s['done_now']} processed now, {s['done_before']} before, "
        f"{s['total_samples']} in all ({len(s['failed'])} failed)",
    ]
    if skipped:
        lines.append(
            f"skipped (uniform rollouts, teacher not asked): {skipped['total']} "
            f"({skipped['all_correct']} all correct, {skipped['all_wrong']} all wrong)"
        )
    if "batches" in s:
        lines.append(
            f"batches: {s['batches']}; proposals reconciled: {s['reconcile_merged']} operations "
            f"merged, {s['reconcile_dropped']} dropped (see the log's batch lines)"
        )
    lines += [
        f"operations: {s['applied_operations']} applied, {s['rejected_operations']} rejected",
        f"student accuracy during training: {s['student_accuracy']:.1%}",
        f"tokens: {t['prompt']} prompt ({s['cache_hit_rate']:.0%} cached), "
        f"{t['completion']} generated",
        f"time: {s['seconds']:.0f} s ({s['samples_per_minute']:.2f} samples/min"
        + (f" on {len(s['workers'])} workers" if len(s.get("workers", [])) > 1 else "")
        + f"); log {s['log']}",
    ]
    return "\n".join(lines)


def run_eval(args: argparse.Namespace) -> int:
    from ted_sglang.loop.evaluate import check_no_training_overlap, evaluate, format_table
    from ted_sglang.runtime import open_runtime, split_urls

    gen = generation_config(args)
    if len(split_urls(args.student)) > 1:
        raise ValueError("eval takes one --student URL (an SGLang router balances several)")
    samples, info = load_samples(args.data, args.split, args.limit)
    bank = None
    if args.bank.lower() != "none":
        from ted_sglang.bank import ExperienceBank
        from ted_sglang.loop.leakage import find_overlap

        bank = ExperienceBank.load(args.bank)
        overlap = find_overlap(samples, bank.meta)
        samples = check_no_training_overlap(samples, bank, args.exclude_trained, args.allow_overlap)
        info["bank"] = str(args.bank)
        info["training_overlap"] = {
            "by_id": list(overlap.by_id),
            "by_question": list(overlap.by_question),
            "handling": "none" if not overlap else "scored" if args.allow_overlap else "excluded",
        }
    try:
        with open_runtime(
            args.student, None, model=args.model, chat_template=args.chat_template,
            request_timeout=args.request_timeout,
        ) as rt:  # fmt: skip
            if bank is not None:
                from ted_sglang.loop.leakage import model_mismatch

                warning = model_mismatch(bank.meta.student_model, rt.student.model_path)
                if warning:
                    print(warning, file=sys.stderr)
            report = evaluate(
                samples, rt.student, bank, rollouts_per_sample=args.rollouts, gen=gen,
                greedy=args.greedy, concurrency=args.concurrency, retries=args.retries,
                progress=not args.no_progress, dataset=info,
            )  # fmt: skip
    except KeyboardInterrupt:
        _interrupted("evaluation interrupted")
    print(format_table(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        print(f"report written to {args.out}")
    return 0


def _interrupted(message: str) -> None:
    """Leave at once: the work on disk is consistent, and waiting for requests still
    in flight (up to the request timeout) would only delay the exit."""
    print(f"\ninterrupted: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)
