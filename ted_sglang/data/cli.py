"""``ted-sglang sample-data`` and ``ted-sglang check-data``."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    sample = subparsers.add_parser(
        "sample-data",
        help="write the bundled multimodal sample set (JSONL + PNG images)",
        description="Generate the sample set into OUTDIR: samples.jsonl and images/*.png. "
        "Rows carry split 'train' or 'test'; the same seed gives the same bytes.",
    )
    sample.add_argument("outdir", type=Path, help="folder to write into")
    sample.add_argument("--count", type=int, default=None, help="number of samples (default 32)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.set_defaults(func=_sample_data)

    check = subparsers.add_parser(
        "check-data",
        help="load a dataset and report its samples and any bad rows",
        description="Load a JSONL file, a MathVision copy or a VisualPuzzles copy; print a "
        "summary and every skipped row with its file and line. Exits 1 if rows were skipped.",
    )
    check.add_argument("path", type=Path, help="dataset file or folder")
    check.add_argument("--format", choices=("jsonl", "mathvision", "visualpuzzles"))
    check.add_argument("--split", help="train/test for JSONL; test/testmini for MathVision")
    check.add_argument(
        "--skip-missing-images",
        action="store_true",
        help="skip rows whose image is missing instead of stopping",
    )
    check.add_argument("--image-cache-dir", type=Path, help="where embedded images are written")
    check.set_defaults(func=_check_data)


def _sample_data(args: argparse.Namespace) -> int:
    from ted_sglang.data.loading import load_dataset
    from ted_sglang.data.sample_files import write_sample_set
    from ted_sglang.data.sample_set import DEFAULT_COUNT

    count = DEFAULT_COUNT if args.count is None else args.count
    path = write_sample_set(args.outdir, count=count, seed=args.seed)
    dataset = load_dataset(path)
    splits = Counter(str(s.meta.get("split")) for s in dataset)
    print(f"wrote {len(dataset)} samples to {path}")
    print("  splits: " + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())))
    print("  categories: " + _counts(s.category for s in dataset))
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from ted_sglang.data.loading import load_dataset

    dataset = load_dataset(
        args.path,
        format=args.format,
        split=args.split,
        skip_missing_images=args.skip_missing_images,
        image_cache_dir=args.image_cache_dir,
    )
    for problem in dataset.problems:
        print(f"skipped: {problem}", file=sys.stderr)
    split = f" (split {dataset.split})" if dataset.split else ""
    print(f"{dataset.source}: {dataset.format}{split}, {len(dataset)} samples")
    print("  answer types: " + _counts(s.answer_type for s in dataset))
    print("  categories: " + _counts(s.category for s in dataset))
    print(f"  with image: {sum(s.image is not None for s in dataset)}")
    if dataset.problems:
        print(f"  skipped rows: {len(dataset.problems)}")
        return 1
    return 0


def _counts(values) -> str:
    counts = Counter(str(v) for v in values)
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
