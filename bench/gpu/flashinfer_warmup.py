"""Compile FlashInfer's cascade kernels once, so that ``bench/kernels.py`` times them warm.

FlashInfer compiles its kernels on first use (JIT, with the machine's nvcc) and keeps
them in its cache folder. On CUDA this runs ``bench/kernels.py``'s FlashInfer cascade
once on a small problem of the head shape and dtype that the benchmark uses (so the
same kernels), checks it against the torch reference, and prints how long it took.
Without CUDA (a dry run) it checks instead that the installed FlashInfer still holds
the sources its JIT needs for those kernels (both prefill backends, and the merge).
Exit status 0 when the cascade ran (or its sources are all there), else 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]


def bench_kernels():
    """``bench/kernels.py`` as a module (its name would clash with the ``kernels`` package)."""
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_kernels", BENCH / "kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def missing_jit_sources(head_dim: int) -> list[str]:
    """Sources of the cascade's JIT modules (bf16, ``head_dim``) that are not on disk."""
    import torch
    from flashinfer.jit.attention.modules import gen_batch_prefill_module
    from flashinfer.jit.cascade import gen_cascade_module

    bf16 = torch.bfloat16
    specs = [gen_cascade_module()]
    for backend in ("fa2", "fa3"):
        specs.append(
            gen_batch_prefill_module(
                backend, bf16, bf16, bf16, torch.int32, head_dim, head_dim, 0, False, False, False
            )
        )
    return [str(src) for spec in specs for src in spec.sources if not Path(src).is_file()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-qo-heads", type=int, default=32)
    parser.add_argument("--num-kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():  # name the GPU machine's chip (H200: sm_90a)
        os.environ.setdefault("FLASHINFER_CUDA_ARCH_LIST", "9.0a")
    import flashinfer

    print(f"flashinfer {flashinfer.__version__} from {Path(flashinfer.__file__).parent}")
    if not torch.cuda.is_available():
        missing = missing_jit_sources(args.head_dim)
        print(f"no CUDA: JIT not run; sources of the cascade's modules missing: {missing or 0}")
        return 1 if missing else 0
    kernels_bench = bench_kernels()
    kernels = kernels_bench.load_kernels()
    args.suffix_len, args.runs, args.seed, args.no_flashinfer = 16, 3, 0, False
    flush = torch.empty(1024 * 1024, dtype=torch.uint8, device="cuda")
    start = time.perf_counter()
    row = kernels_bench.bench_one(kernels, 4, 256, args, flush)
    print(f"cascade compiled, checked and run in {time.perf_counter() - start:.1f} s")
    if "fi-casc_us" not in row:
        print(f"FlashInfer cascade failed: {row.get('fi-casc_error')}")
        return 1
    err = row["fi-casc_max_abs_err"]
    print(f"max abs error vs torch {err:.2e}, {row['fi-casc_us']:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
