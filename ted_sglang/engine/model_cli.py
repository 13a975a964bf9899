"""``ted-sglang tiny-model OUTDIR``: write a tiny random model to try a pipeline without weights."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``tiny-model`` command."""
    parser = subparsers.add_parser(
        "tiny-model",
        help="write a tiny random model with a real tokenizer",
        description=(
            "Write a tiny random model (2-layer Llama, byte-level BPE tokenizer, ChatML "
            "template) to OUTDIR; with --vision, a LLaVA-style model taking one image "
            "per request. Nothing is downloaded; the same seed writes identical files."
        ),
    )
    parser.add_argument("outdir", help="directory to write (created if missing)")
    parser.add_argument("--vision", action="store_true", help="a vision-language model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (0)")
    parser.set_defaults(func=_tiny_model)


def _tiny_model(args: argparse.Namespace) -> int:
    from ted_sglang.engine.tiny_model import write_tiny_model

    path = write_tiny_model(args.outdir, vision=args.vision, seed=args.seed)
    print(path)
    return 0
