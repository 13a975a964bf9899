"""Shared-prefix decode attention vs per-request decode over the same KV (GPU only).

N forks decode one token each over a shared prefix of P tokens plus S tokens of
their own. Per-request decode reads the prefix N times; the shared-prefix kernel
reads it once, so the memory-traffic bound on the speedup is
N(P+S) / (P+N·S). Methods, each timed as a CUDA graph (eager if capture fails),
with CUDA events around every replay, L2 flushed before each, median of --runs:

* shared   ted_sglang.kernels.shared_prefix_decode (Triton)
* req-tri  the same Triton kernels with P=0 and per-fork prefix+suffix copies
* req-sdpa torch scaled_dot_product_attention over per-fork [N, Hkv, P+S, D] KV
* fi-casc  FlashInfer MultiLevelCascadeAttentionWrapper (2 levels, page size 16),
           when flashinfer imports and runs

Every method is first checked against the torch path (fp32 accumulation).
Run from the repository root: ``python bench/kernels.py [--quick]``; the package
need not be installed. Writes JSON (and a PNG plot when matplotlib is present).
``--device cpu`` with ``TRITON_INTERPRET=1`` runs the same on the CPU (tiny shapes
via ``--forks``/``--prefixes``; wall-clock times, no FlashInfer): a dry run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

from _report import save_json

ROOT = Path(__file__).resolve().parent.parent
PAGE_SIZE = 16
TOLERANCE = 2e-2  # bf16 output rounding plus bf16 probabilities in P·V


def load_kernels():
    """``ted_sglang.kernels`` if installed, else the ``kernels/`` folder of this checkout."""
    try:
        return importlib.import_module("ted_sglang.kernels")
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            "ted_sglang_kernels",
            ROOT / "kernels" / "__init__.py",
            submodule_search_locations=[str(ROOT / "kernels")],
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module


def time_us(fn, runs: int, flush) -> tuple[float, str]:
    """Median µs of ``fn`` (CUDA graph replay when capturable), L2 flushed before each run.

    With a CPU ``flush`` buffer (``--device cpu``, a dry run) it is wall-clock time instead."""
    import torch

    fn()
    if flush.device.type != "cuda":
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e6, "cpu"
    torch.cuda.synchronize()
    call, mode = fn, "eager"
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        call, mode = graph.replay, "graph"
    except Exception:  # some methods cannot be captured: time them eagerly
        torch.cuda.synchronize()
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(runs)
    ]
    for start, end in events:
        flush.zero_()
        start.record()
        call()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events) * 1000.0, mode


def flashinfer_cascade(q, k_prefix, v_prefix, k_suffix, v_suffix, suffix_lens):
    """A ``run()`` closure of FlashInfer's two-level cascade over one paged KV cache."""
    import flashinfer
    import torch

    device, (num_forks, num_qo_heads, head_dim) = q.device, q.shape
    prefix_len, num_kv_heads = k_prefix.shape[0], k_prefix.shape[1]
    if prefix_len % PAGE_SIZE or any(n % PAGE_SIZE or n == 0 for n in suffix_lens):
        raise ValueError(f"lengths must be non-zero multiples of page size {PAGE_SIZE}")
    pages = [
        torch.cat([k, k2]).view(-1, PAGE_SIZE, num_kv_heads, head_dim)
        for k, k2 in ((k_prefix, k_suffix), (v_prefix, v_suffix))
    ]
    prefix_pages, total_pages = prefix_len // PAGE_SIZE, pages[0].shape[0]

    def i32(values):
        return torch.tensor(values, dtype=torch.int32, device=device)

    suffix_page_indptr = [0]
    for n in suffix_lens:
        suffix_page_indptr.append(suffix_page_indptr[-1] + n // PAGE_SIZE)
    workspace = torch.empty(128 * 1024 * 1024, dtype=torch.uint8, device=device)
    wrapper = flashinfer.MultiLevelCascadeAttentionWrapper(2, workspace, "NHD")
    wrapper.plan(
        [i32([0, num_forks]), torch.arange(num_forks + 1, dtype=torch.int32, device=device)],
        [i32([0, prefix_pages]), i32(suffix_page_indptr)],
        [
            torch.arange(prefix_pages, dtype=torch.int32, device=device),
            torch.arange(prefix_pages, total_pages, dtype=torch.int32, device=device),
        ],
        [i32([PAGE_SIZE]), i32([PAGE_SIZE] * num_forks)],
        num_qo_heads,
        num_kv_heads,
        head_dim,
        PAGE_SIZE,
        q_data_type=q.dtype,
        kv_data_type=q.dtype,
    )
    return lambda: wrapper.run(q, tuple(pages))


def bench_one(kernels, num_forks, prefix_len, args, flush, device="cuda") -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(args.seed)
    device, dtype = torch.device(device), torch.bfloat16
    hq, hkv, head_dim = args.num_qo_heads, args.num_kv_heads, args.head_dim
    suffix_len = args.suffix_len
    seq_len = prefix_len + suffix_len

    def rand(*shape):
        return torch.randn(*shape, dtype=dtype, device=device)

    q = rand(num_forks, hq, head_dim)
    k_prefix, v_prefix = rand(prefix_len, hkv, head_dim), rand(prefix_len, hkv, head_dim)
    k_suffix = rand(num_forks * suffix_len, hkv, head_dim)
    v_suffix = rand(num_forks * suffix_len, hkv, head_dim)
    indptr = torch.arange(num_forks + 1, dtype=torch.int32, device=device) * suffix_len
    reference = kernels.shared_prefix_decode(
        q, k_prefix, v_prefix, k_suffix, v_suffix, indptr, backend="torch"
    )

    # Per-request KV: each fork holds its own copy of the prefix followed by its suffix.
    def per_fork(prefix, suffix):
        return torch.cat(
            [
                prefix.expand(num_forks, -1, -1, -1),
                suffix.view(num_forks, suffix_len, hkv, head_dim),
            ],
            dim=1,
        )

    k_req, v_req = per_fork(k_prefix, k_suffix), per_fork(v_prefix, v_suffix)  # [N, L, Hkv, D]
    k_sdpa, v_sdpa = k_req.transpose(1, 2).contiguous(), v_req.transpose(1, 2).contiguous()
    k_req, v_req = k_req.view(-1, hkv, head_dim), v_req.view(-1, hkv, head_dim)
    empty = k_prefix[:0]
    req_indptr = torch.arange(num_forks + 1, dtype=torch.int32, device=device) * seq_len

    num_sms = None if device.type == "cuda" else 1
    plan = kernels.plan_shared_prefix_decode(indptr, prefix_len, hq, hkv, head_dim, num_sms=num_sms)
    req_plan = kernels.plan_shared_prefix_decode(req_indptr, 0, hq, hkv, head_dim, num_sms=num_sms)
    out = torch.empty_like(q)
    methods = {
        "shared": lambda: kernels.shared_prefix_decode(
            q, k_prefix, v_prefix, k_suffix, v_suffix, indptr, plan=plan, out=out, backend="triton"
        ),
        "req-tri": lambda: kernels.shared_prefix_decode(
            q, empty, empty, k_req, v_req, req_indptr, plan=req_plan, out=out, backend="triton"
        ),
        "req-sdpa": lambda: F.scaled_dot_product_attention(
            q.unsqueeze(2), k_sdpa, v_sdpa, enable_gqa=True
        ).squeeze(2),
    }
    row = {
        "N": num_forks,
        "P": prefix_len,
        "S": suffix_len,
        "prefix_splits": plan.num_prefix_splits,
        "suffix_splits": plan.num_suffix_splits,
        "bound": num_forks * seq_len / (prefix_len + num_forks * suffix_len),
    }
    if not args.no_flashinfer:
        try:
            methods["fi-casc"] = flashinfer_cascade(
                q, k_prefix, v_prefix, k_suffix, v_suffix, [suffix_len] * num_forks
            )
        except Exception as exc:  # optional baseline
            row["fi-casc_error"] = f"{type(exc).__name__}: {exc}"[:300]
    for name, fn in methods.items():
        try:
            err = (fn().float() - reference.float()).abs().max().item()
            row[f"{name}_max_abs_err"] = err
            if not err <= TOLERANCE * max(1.0, reference.abs().max().item()):
                raise AssertionError(f"{name} differs from the torch reference by {err:.3g}")
            row[f"{name}_us"], row[f"{name}_mode"] = time_us(fn, args.runs, flush)
        except Exception as exc:  # report the method, keep the others
            if name == "shared":
                raise
            row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
    elem = torch.finfo(dtype).bits // 8
    row["bytes"] = (
        2 * (prefix_len + num_forks * suffix_len) * hkv * head_dim + 2 * num_forks * hq * head_dim
    ) * elem
    row["shared_GBps"] = row["bytes"] / (row["shared_us"] * 1e-6) / 1e9
    for name in ("req-tri", "req-sdpa", "fi-casc"):
        if f"{name}_us" in row:
            row[f"speedup_vs_{name}"] = row[f"{name}_us"] / row["shared_us"]
    return row


def print_table(rows: list[dict]) -> None:
    print(
        "times: median µs per call; speedup = baseline time / shared time; bound = N(P+S)/(P+N·S)"
    )
    print("GB/s = [2·(P+N·S)·Hkv·D + 2·N·Hq·D]·2 B / t_shared  (K,V read once; q in, out)")
    head = (
        f"{'N':>3} {'P':>6} {'S':>4} | {'shared':>8} {'req-tri':>8} {'req-sdpa':>8} "
        f"{'fi-casc':>8} | {'x tri':>6} {'x sdpa':>6} {'x fi':>6} {'bound':>6} | {'GB/s':>6}"
    )
    print(head)
    print("-" * len(head))

    def cell(row, key, fmt):
        return format(row[key], fmt) if key in row else "-"

    for r in rows:
        print(
            f"{r['N']:>3} {r['P']:>6} {r['S']:>4} | {cell(r, 'shared_us', '8.1f'):>8} "
            f"{cell(r, 'req-tri_us', '8.1f'):>8} {cell(r, 'req-sdpa_us', '8.1f'):>8} "
            f"{cell(r, 'fi-casc_us', '8.1f'):>8} | {cell(r, 'speedup_vs_req-tri', '6.2f'):>6} "
            f"{cell(r, 'speedup_vs_req-sdpa', '6.2f'):>6} "
            f"{cell(r, 'speedup_vs_fi-casc', '6.2f'):>6} {r['bound']:>6.2f} | "
            f"{r['shared_GBps']:>6.0f}"
        )
    for r in rows:
        for key in sorted(k for k in r if k.endswith("_error")):
            print(f"N={r['N']} P={r['P']}: {key[:-6]} skipped: {r[key]}")


def save_plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = [
        f"N={r['N']}\nP={r['P'] // 1024}k" if r["P"] >= 1024 else f"N={r['N']}\nP={r['P']}"
        for r in rows
    ]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    width = 0.27
    for i, name in enumerate(("req-tri", "req-sdpa", "fi-casc")):
        ys = [r.get(f"speedup_vs_{name}", 0.0) for r in rows]
        ax.bar([x + (i - 1) * width for x in xs], ys, width, label=f"vs {name}")
    ax.scatter(
        list(xs),
        [r["bound"] for r in rows],
        color="black",
        marker="_",
        s=400,
        label="traffic bound N(P+S)/(P+N·S)",
        zorder=3,
    )
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("speedup of shared-prefix kernel")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and runs")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per method")
    parser.add_argument("--suffix-len", type=int, default=256)
    parser.add_argument("--num-qo-heads", type=int, default=32)
    parser.add_argument("--num-kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--no-flashinfer", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--forks", help="N values, comma-separated (default 4,16,64)")
    parser.add_argument("--prefixes", help="P values, comma-separated (default 2048,8192,32768)")
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cpu: the Triton interpreter (TRITON_INTERPRET=1), for a dry run with tiny shapes",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kernels.json")
    args = parser.parse_args(argv)

    import torch

    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("--device cpu runs the Triton kernels in the interpreter: set TRITON_INTERPRET=1")
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "bench/kernels.py times GPU kernels and needs a CUDA device; none found, "
            "nothing measured.",
            file=sys.stderr,
        )
        return 0
    import triton

    kernels = load_kernels()
    forks, prefixes = ([4, 64], [2048, 32768]) if args.quick else ([4, 16, 64], [2048, 8192, 32768])
    if args.forks:
        forks = [int(n) for n in args.forks.split(",")]
    if args.prefixes:
        prefixes = [int(p) for p in args.prefixes.split(",")]
    args.runs = args.runs or (20 if args.quick else 100)
    on_cuda = args.device == "cuda"
    flush_mib = 256 if on_cuda else 1  # more than the L2 cache of any GPU
    flush = torch.empty(flush_mib * 1024 * 1024, dtype=torch.uint8, device=args.device)
    device_name = torch.cuda.get_device_name() if on_cuda else "CPU (Triton interpreter)"
    try:
        flashinfer_version = importlib.import_module("flashinfer").__version__
    except Exception:  # optional
        flashinfer_version = None
    rows: list[dict] = []
    result = {
        "device": device_name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "flashinfer": flashinfer_version,
        "dtype": "bfloat16",
        "num_qo_heads": args.num_qo_heads,
        "num_kv_heads": args.num_kv_heads,
        "head_dim": args.head_dim,
        "runs": args.runs,
        "seed": args.seed,
        "time_unit": "us (median, CUDA events, L2 flushed)" if on_cuda else "us (median, wall)",
        "rows": rows,
    }
    for num_forks in forks:
        for prefix_len in prefixes:
            rows.append(bench_one(kernels, num_forks, prefix_len, args, flush, args.device))
            save_json(result, args.out)  # after every shape: a time limit keeps what was done
            if on_cuda:
                torch.cuda.empty_cache()
    print(
        f"{device_name}, bf16, Hq={args.num_qo_heads}, "
        f"Hkv={args.num_kv_heads}, D={args.head_dim}, {args.runs} runs"
    )
    print_table(rows)
    print(f"wrote {save_json(result, args.out)}")
    if save_plot(rows, args.out.with_suffix(".png")):
        print(f"wrote {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # this file is named kernels.py: keep it from shadowing a package
    sys.exit(main())
