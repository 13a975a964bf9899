"""Per-token text work of the engine: ``stop_regex`` checks and streamed text.

Question: after each token of a request, the scheduler checks its ``stop_regex``
patterns, and a streamed request's text is brought up to date. The engine matches
the patterns with the ``regex`` module under a time budget, over the output's last
tokens only (``ted_sglang.engine.stop_match``), and decodes a stream's newest tokens
only (``ted_sglang.engine.output.StreamText``); before, both decoded the whole
output each time (and ran ``re.search`` on it). What does each cost, each way, as
the output grows?

* In process, no model: the tokenizer of the tiny test model (byte-level BPE) or
  ``--model``'s, and deterministic English-like output text that never matches.
* A check is what the scheduler does after a token: decode the window (old: all
  outputs) and search every pattern. Patterns: one of bounded width
  (``Answer: [0-9]{1,6}``, a 16-token window) and one unbounded (``Answer:.*[.]``,
  the widest window, ``MAX_WINDOW_TOKENS``).
* A stream's update: the text of the outputs so far, without an unfinished
  character at its end (old: decode them all; new: ``StreamText.update``).
* For outputs of ``--lengths`` tokens, the mean time over all positions, the
  fastest of ``--rounds`` rounds.

Figures are printed in microseconds per token and saved as JSON in ``--out``.
Run from the repository root: ``python bench/detokenize_cost.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

from _report import machine, save_json

PATTERNS = {"bounded": r"Answer: [0-9]{1,6}", "unbounded": r"Answer:.*[.]"}
_TEXT = (
    "the student reads each question carefully and writes down what is given before "
    "solving it step by step checking units counting items twice and comparing the result"
)


def output_ids(tokenizer, num_tokens: int) -> list[int]:
    import random

    rng = random.Random(0)
    words = _TEXT.split()
    ids: list[int] = []
    while len(ids) < num_tokens:
        ids = tokenizer.encode(" ".join(rng.choice(words) for _ in range(num_tokens)))
    return ids[:num_tokens]


def old_check_us(tokenizer, ids: list[int], pattern: str) -> float:
    """Mean µs per token: decode all outputs so far, ``re.search`` (the engine before)."""
    start = time.perf_counter()
    for k in range(1, len(ids) + 1):
        re.search(pattern, tokenizer.decode(ids[:k]))
    return (time.perf_counter() - start) / len(ids) * 1e6


def new_check_us(tokenizer, ids: list[int], pattern: str) -> tuple[float, int]:
    """Mean µs per token and the window: decode the window, ``StopRegex.search``."""
    from ted_sglang.engine.stop_match import StopRegex

    stop = StopRegex.compile([pattern])
    start = time.perf_counter()
    for k in range(1, len(ids) + 1):
        stop.search(tokenizer.decode(ids[max(0, k - stop.window_tokens) : k]))
        stop.spent_s = 0.0  # measure the work, not the budget
    return (time.perf_counter() - start) / len(ids) * 1e6, stop.window_tokens


def old_stream_us(tokenizer, ids: list[int]) -> float:
    """Mean µs per token: decode all outputs so far (the engine before)."""
    start = time.perf_counter()
    for k in range(1, len(ids) + 1):
        tokenizer.decode(ids[:k]).rstrip("\ufffd")
    return (time.perf_counter() - start) / len(ids) * 1e6


def new_stream_us(tokenizer, ids: list[int]) -> float:
    """Mean µs per token: ``StreamText.update`` (the engine now)."""
    from ted_sglang.engine.output import StreamText

    text = StreamText(tokenizer.decode)
    start = time.perf_counter()
    for k in range(1, len(ids) + 1):
        text.update(ids[:k])
    return (time.perf_counter() - start) / len(ids) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: tiny model)")
    parser.add_argument("--lengths", default="256,1024,4096")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench/results/detokenize_cost.json")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    from transformers import AutoTokenizer

    if args.model is None:
        from ted_sglang.engine.tiny_model import write_tiny_model

        model_dir = write_tiny_model(Path(tempfile.mkdtemp(prefix="detokenize-bench-")))
    else:
        model_dir = Path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        ids = output_ids(tokenizer, length)
        for name, pattern in PATTERNS.items():
            old = min(old_check_us(tokenizer, ids, pattern) for _ in range(args.rounds))
            new, window = min(new_check_us(tokenizer, ids, pattern) for _ in range(args.rounds))
            rows.append(_row(length, f"stop_regex {name}", old, new, window))
        old = min(old_stream_us(tokenizer, ids) for _ in range(args.rounds))
        new = min(new_stream_us(tokenizer, ids) for _ in range(args.rounds))
        rows.append(_row(length, "stream text", old, new))
    result = {
        "question": "per-token text work: stop_regex checks and streamed text, old vs new",
        "tokenizer": str(args.model or "tiny test model"),
        "rows": rows,
        "machine": machine(load_before),
    }
    print("saved", save_json(result, Path(args.out)))


def _row(length: int, check: str, old: float, new: float, window: int | None = None) -> dict:
    print(
        f"{length:5d} tokens  {check:20s}: old {old:8.1f} µs/token   new {new:8.1f} µs/token"
        f"   old/new {old / new:6.1f}x" + (f"   (window {window} tokens)" if window else "")
    )
    return {
        "output_tokens": length,
        "check": check,
        "window_tokens": window,
        "old_us_per_token": round(old, 1),
        "new_us_per_token": round(new, 1),
        "old_over_new": round(old / new, 2),
    }


if __name__ == "__main__":
    main()
