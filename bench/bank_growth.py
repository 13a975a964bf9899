"""Prefix caching of the student phase while the bank grows.

Question: as distillation grows the bank from 0 to K entries (adds, updates,
merges, deletes, and compression when it passes its budget), how much of the
student's prompt does the server's radix cache serve, against the ideal that an
unbounded radix tree reaches on the same requests, and what does the bank's
cache-friendly layout buy over a naive one, and ``fork`` over N independent
requests?

* Bank versions are simulated (seeded, from a pool of experience texts built from
  templates; :mod:`_bank_versions`) or replayed from a bank file's history (``--bank``).
* At every version the student phase runs ``student_rollouts`` (fork N) on
  ``--questions`` questions of the bundled sample set (text only, images described),
  one question after another.  ``--quick`` (or ``--windows W``) measures only W runs of
  ``--window`` consecutive versions; before each run the version just before it is
  served once (one rollout of one token, not recorded), so the cache holds what the
  real loop would have left in it.
* Passes, each from an empty cache (``/flush_cache``) over the same versions and
  questions: the cache-friendly layout (``bank.render()`` order) with fork; a naive
  layout (best utility first, or newest first) with fork; the cache-friendly layout
  with the fork's branch requests sent as N independent concurrent requests.
* Every request the server sees is logged with its ``meta_info`` (the fork's
  ``max_new_tokens: 0`` precache included); hit rate = cached / prompt tokens over
  all of them.  The ideal replays the same requests' token ids (the prompt texts,
  tokenized as the server does) through an unbounded radix tree with the engine's
  per-request rule (at most prompt - 1 tokens cached).
* Prefix retention (:func:`ted_sglang.bank.prefix_retention`): the leading tokens a
  version's rendering shares with the previous version's, over its own tokens; the
  summary's median is over every version of the history, measured or not.

Writes ``bank_growth[_quick].json`` and ``.png`` to ``--out`` and prints a table.
Run from the repository root: ``python bench/bank_growth.py --quick [--endpoint URL]``.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bank_versions import (
    BankHistory,
    load_history,
    render,
    simulate_history,
)
from _report import machine, save_json
from _request_stream import (
    IdealPrefixCache,
    Request,
    RequestLog,
    independent_requests,
    recording_endpoint,
)

QUICK = {"entries": 120, "questions": 2, "rollouts": 3, "max_tokens": 8, "windows": 3, "window": 3}
FULL = {
    "entries": 200,
    "questions": 4,
    "rollouts": 5,
    "max_tokens": 64,
    "windows": None,
    "window": 3,
}
FORK, INDEPENDENT = "fork", "independent"
CACHE_FRIENDLY = "cache_friendly"


@dataclass
class Context:
    """What every pass shares: the server, the questions and how to tokenize."""

    url: str
    backend: Any
    log: RequestLog
    tokenize: Callable[[str], Sequence[int]]  # memoized
    questions: list[tuple[str, str | None]]  # (question text, image description)
    args: argparse.Namespace
    timeout: float = 600.0

    def question(self, index: int, slot: int) -> tuple[str, str | None]:
        """The ``slot``-th question asked at version index ``index`` (same in every pass)."""
        return self.questions[(index * self.args.questions + slot) % len(self.questions)]


# ---- inputs ---------------------------------------------------------------------------


def load_questions(seed: int) -> list[tuple[str, str | None]]:
    """The bundled sample set's questions as the student sees them, images described."""
    from ted_sglang.data import Sample, format_question, generate_rows

    out = []
    for row in generate_rows(seed=seed):
        sample = Sample(
            id=row["id"], question=row["question"], answer=row["answer"],
            options=row.get("options"), answer_type=row["answer_type"],
            category=row["category"], image_description=row["image_description"],
        )  # fmt: skip
        out.append((format_question(sample), sample.image_description))
    return out


def load_tokenizer(model_path: str, override: str | None) -> tuple[Callable, str]:
    """``encode`` of the server's tokenizer (``--tokenizer``, else the model path when it
    is readable here), else the approximate tokenizer; and a name for the report."""
    from ted_sglang.bank import approx_tokenize

    path = override or model_path
    try:
        from transformers import AutoTokenizer

        local = not Path(path).is_dir()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
    except (OSError, ValueError) as exc:
        if override:
            raise ValueError(f"cannot load the tokenizer {override!r}: {exc}") from None
        print(
            f"note: cannot load the tokenizer of {model_path!r} here ({type(exc).__name__}); "
            "using approx_tokenize, so the ideal is an estimate: pass --tokenizer PATH",
            file=sys.stderr,
        )
        return approx_tokenize, "approx"
    return tokenizer.encode, path


def measured_indices(history: BankHistory, windows: int | None, window: int) -> list[int]:
    """Every version (``windows=None``), or ``windows`` runs of ``window`` consecutive
    versions: their ends evenly spaced up to the last version, one of them moved to
    just after the first compression so that the run holds it."""
    n = len(history.versions)
    if windows is None or windows * window >= n:
        return list(range(n))
    ends = {max(window - 1, round(n * (j + 1) / windows) - 1) for j in range(windows)}
    compressed = [i for i, v in enumerate(history.versions) if v.compressed]
    if compressed:
        after = min(compressed[0] + 1, n - 1)
        ends.discard(min(ends - {n - 1} or ends, key=lambda e: abs(e - after)))
        ends.add(after)
    return sorted({i for end in ends for i in range(end - window + 1, end + 1)})


# ---- one pass ---------------------------------------------------------------------------


def run_pass(
    ctx: Context,
    history: BankHistory,
    indices: Sequence[int],
    layout: str,
    mode: str,
    payloads: dict[tuple[int, int], Request],
    retentions: list[float],
    progress: Any,
) -> list[dict[str, Any]]:
    """One layout and mode over the measured versions, from an empty cache;
    ``retentions``: every version's prefix retention in ``layout``."""
    from ted_sglang.runtime import server_cache_stats

    flush_cache(ctx.url)
    ideal = IdealPrefixCache()
    records: list[dict[str, Any]] = []
    previous = -1
    for index in indices:
        version = history.versions[index]
        text = render(version, layout)
        if index and index - 1 != previous:
            # The real loop served the version before just now: so does the benchmark,
            # with one rollout of one token, replayed into the ideal but not recorded.
            prime = render(history.versions[index - 1], layout)
            rollouts(ctx, prime, *ctx.question(index - 1, 0), num_rollouts=1, max_tokens=1)
            for r in ctx.log.take():
                ideal.request(ctx.tokenize(r.text))
        before = server_cache_stats(ctx.url)
        start = time.perf_counter()
        requests = []
        for slot in range(ctx.args.questions):
            if mode == FORK:
                rollouts(ctx, text, *ctx.question(index, slot))
                sent = ctx.log.take()
                if layout == CACHE_FRIENDLY:
                    payloads[(index, slot)] = next(r for r in sent if not r.is_precache)
            else:
                branch = payloads[(index, slot)]
                independent_requests(
                    ctx.url, branch.text, branch.sampling_params, ctx.args.rollouts, ctx.log,
                    ctx.timeout,
                )  # fmt: skip
                sent = ctx.log.take()
            requests += sent
        wall = time.perf_counter() - start
        after = server_cache_stats(ctx.url)
        ids = [ctx.tokenize(r.text) for r in requests]
        record = {
            "layout": layout,
            "mode": mode,
            "bank_version": version.version,
            "bank_entries": len(version.entries),
            "bank_tokens": len(ctx.tokenize(text)) if text else 0,
            "compressed": version.compressed,
            "requests": len(requests),
            "prompt_tokens": sum(r.meta["prompt_tokens"] for r in requests),
            "cached_tokens": sum(r.meta.get("cached_tokens") or 0 for r in requests),
            "completion_tokens": sum(r.meta.get("completion_tokens") or 0 for r in requests),
            "wall_s": wall,
            "ideal_prompt_tokens": sum(len(i) for i in ids),
            "ideal_cached_tokens": sum(ideal.request(i) for i in ids),
            "tokenizer_mismatches": sum(
                len(i) != r.meta["prompt_tokens"] for i, r in zip(ids, requests, strict=True)
            ),
            "prefix_retention": retentions[index - 1] if index else 1.0,
        }
        record.update(derived(record))
        record.update(server_delta(before, after))
        records.append(record)
        previous = index
        progress.set_postfix_str(f"{layout}/{mode} v{version.version} hit {record['hit_rate']:.2f}")
        progress.update()
    return records


def rollouts(
    ctx: Context, bank_text: str, question: str, description: str | None,
    num_rollouts: int | None = None, max_tokens: int | None = None,
) -> None:  # fmt: skip
    """The student phase on one question: ``student_rollouts`` (fork N), logged."""
    from ted_sglang import programs
    from ted_sglang.loop import calls
    from ted_sglang.loop.config import GenerationConfig

    gen = GenerationConfig()
    calls.run(
        programs.student_rollouts, ctx.backend, bank_text=bank_text, question=question,
        image=None, image_description=description,
        num_rollouts=num_rollouts or ctx.args.rollouts,
        max_tokens=max_tokens or ctx.args.max_tokens,
        rollout_temperature=gen.student_temperature, rollout_top_p=gen.student_top_p,
    )  # fmt: skip


def retention(ctx: Context, history: BankHistory, old: int, new: int, layout: str) -> float:
    """Prefix retention (:func:`ted_sglang.bank.prefix_retention`) from version index
    ``old`` to ``new`` in ``layout``."""
    from ted_sglang.bank import prefix_retention

    old_text = render(history.versions[old], layout) if old >= 0 else ""
    return prefix_retention(old_text, render(history.versions[new], layout), ctx.tokenize)


def history_retention(ctx: Context, history: BankHistory, layout: str) -> list[float]:
    """Prefix retention of every version from the one before, version 1 onwards."""
    return [retention(ctx, history, i - 1, i, layout) for i in range(1, len(history.versions))]


def derived(r: dict[str, Any]) -> dict[str, float]:
    wall = max(r["wall_s"], 1e-9)
    return {
        "hit_rate": r["cached_tokens"] / r["prompt_tokens"] if r["prompt_tokens"] else 0.0,
        "ideal_hit_rate": (
            r["ideal_cached_tokens"] / r["ideal_prompt_tokens"] if r["ideal_prompt_tokens"] else 0.0
        ),
        "tokens_per_s": (r["prompt_tokens"] + r["completion_tokens"]) / wall,
        "decode_tokens_per_s": r["completion_tokens"] / wall,
    }


def server_delta(before: dict | None, after: dict | None) -> dict[str, Any]:
    """What ``/server_info`` counted meanwhile (the reference engine reports it)."""
    if before is None or after is None:
        return {"server_prompt_tokens": None, "server_cached_tokens": None, "evicted_tokens": None}
    return {
        f"server_{name}": after[name] - before[name] for name in ("prompt_tokens", "cached_tokens")
    } | {"evicted_tokens": after.get("evicted_tokens", 0) - before.get("evicted_tokens", 0)}


def flush_cache(url: str) -> None:
    import httpx

    response = httpx.post(url + "/flush_cache", timeout=60)
    if response.status_code != 200:
        raise RuntimeError(f"{url}/flush_cache answered {response.status_code}: {response.text}")


# ---- results ------------------------------------------------------------------------------


def summarize(records: list[dict[str, Any]], retentions: dict[str, list[float]]) -> dict[str, Any]:
    """Per pass (``layout/mode``) totals, and fork against independent requests;
    ``retentions`` holds every version's prefix retention per layout."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(f"{r['layout']}/{r['mode']}" for r in records):
        rs = [r for r in records if f"{r['layout']}/{r['mode']}" == key]
        total = {n: sum(r[n] for r in rs) for n in (
            "prompt_tokens", "cached_tokens", "completion_tokens", "wall_s",
            "ideal_prompt_tokens", "ideal_cached_tokens", "tokenizer_mismatches",
        )}  # fmt: skip
        hit = total["cached_tokens"] / max(total["prompt_tokens"], 1)
        ideal = total["ideal_cached_tokens"] / max(total["ideal_prompt_tokens"], 1)
        out[key] = {
            "versions": len(rs),
            "hit_rate": hit,
            "ideal_hit_rate": ideal,
            "hit_rate_over_ideal": hit / ideal if ideal else None,
            "median_prefix_retention": statistics.median(retentions[rs[0]["layout"]] or [1.0]),
            "median_prefix_retention_records": statistics.median(r["prefix_retention"] for r in rs),
            "mean_tokens_per_s": statistics.fmean(r["tokens_per_s"] for r in rs),
            "mean_decode_tokens_per_s": statistics.fmean(r["decode_tokens_per_s"] for r in rs),
            **total,
        }
    fork, indep = out.get(f"{CACHE_FRIENDLY}/{FORK}"), out.get(f"{CACHE_FRIENDLY}/{INDEPENDENT}")
    if fork and indep:
        out["fork_vs_independent"] = {
            "hit_rate_fork": fork["hit_rate"],
            "hit_rate_independent": indep["hit_rate"],
            "wall_s_fork": fork["wall_s"],
            "wall_s_independent": indep["wall_s"],
            "speedup": indep["wall_s"] / fork["wall_s"],
            "decode_tokens_per_s_ratio": (
                fork["mean_decode_tokens_per_s"] / indep["mean_decode_tokens_per_s"]
            ),
        }
    return out


def print_table(summary: dict[str, Any]) -> None:
    head = (
        f"{'pass':<28} {'hit rate':>8} {'ideal':>6} {'hit/ideal':>9} {'retention':>9} "
        f"{'tok/s':>7} {'decode tok/s':>12} {'wall s':>7}"
    )
    print(head)
    for key, s in summary.items():
        if key == "fork_vs_independent":
            continue
        ratio = s["hit_rate_over_ideal"]
        print(
            f"{key:<28} {s['hit_rate']:>8.3f} {s['ideal_hit_rate']:>6.3f} "
            f"{ratio if ratio is not None else float('nan'):>9.3f} "
            f"{s['median_prefix_retention']:>9.3f} {s['mean_tokens_per_s']:>7.1f} "
            f"{s['mean_decode_tokens_per_s']:>12.2f} {s['wall_s']:>7.1f}"
        )
    fvi = summary.get("fork_vs_independent")
    if fvi:
        print(
            f"fork vs independent: {fvi['wall_s_fork']:.1f} s vs {fvi['wall_s_independent']:.1f} s "
            f"(speedup x{fvi['speedup']:.2f}), decode tokens/s "
            f"x{fvi['decode_tokens_per_s_ratio']:.2f}, hit rate {fvi['hit_rate_fork']:.3f} "
            f"vs {fvi['hit_rate_independent']:.3f}"
        )
    print("(hit rate, ideal: cached / prompt tokens; retention: median prefix retention; "
          "tok/s: (prompt + completion tokens) / s)")  # fmt: skip


def _line(rs: list[dict[str, Any]], name: str) -> tuple[list[float], list[float]]:
    """Bank tokens and ``name`` of ``rs``, with a NaN point (a break in the line)
    wherever versions were skipped."""
    xs: list[float] = []
    ys: list[float] = []
    for i, r in enumerate(rs):
        if i and r["bank_version"] != rs[i - 1]["bank_version"] + 1:
            xs.append(math.nan)
            ys.append(math.nan)
        xs.append(float(r["bank_tokens"]))
        ys.append(float(r[name]))
    return xs, ys


def plot(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Hit rate (ideal dashed) and tokens/s against bank size, one line per pass
    (broken where versions were skipped); versions made by compression are marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    keys = list(dict.fromkeys((r["layout"], r["mode"]) for r in records))
    for n, (layout, mode) in enumerate(keys):
        rs = [r for r in records if (r["layout"], r["mode"]) == (layout, mode)]
        colour = f"C{n}"
        label = f"{layout} / {mode}"
        top.plot(*_line(rs, "hit_rate"), "-o", ms=3, lw=1, color=colour, label=label)
        top.plot(*_line(rs, "ideal_hit_rate"), "--", lw=1, color=colour, label=f"{label}: ideal")
        bottom.plot(*_line(rs, "tokens_per_s"), "-o", ms=3, lw=1, color=colour, label=label)
        marked = [r for r in rs if r["compressed"]]
        for axis, name in ((top, "hit_rate"), (bottom, "tokens_per_s")):
            xs, ys = [r["bank_tokens"] for r in marked], [r[name] for r in marked]
            label = None if n else "made by compression"
            axis.plot(xs, ys, "v", ms=8, mfc="none", mec="black", label=label)
    top.set_ylabel("prefix cache hit rate (cached / prompt tokens)")
    top.set_ylim(0, 1.02)
    top.legend(fontsize=7, loc="lower left")
    bottom.set_ylabel("tokens/s ((prompt + completion) / wall)")
    bottom.set_xlabel("bank size (tokens of the rendered bank; lines join consecutive versions)")
    bottom.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- main -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", default=None, help="a running server (else one is launched)")
    parser.add_argument("--model", default=None, help="model to launch (default smollm2-135m)")
    parser.add_argument(
        "--quick", action="store_true",
        help=f"smaller sizes, and only some versions: {QUICK} (else {FULL})",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--rollouts", type=int, default=None, help="forks per question (N)")
    parser.add_argument("--entries", type=int, default=None, help="bank budget K (entries)")
    parser.add_argument("--questions", type=int, default=None, help="questions per version")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per rollout")
    parser.add_argument(
        "--windows",
        type=int,
        default=None,
        help="measure only W runs of --window consecutive versions (else all)",
    )
    parser.add_argument("--window", type=int, default=None, help="versions per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bank", type=Path, default=None, help="replay this bank file's history")
    parser.add_argument("--tokenizer", default=None, help="the server's tokenizer (path)")
    parser.add_argument("--naive", choices=("utility", "newest"), default=None,
                        help="naive layout: best utility first, or newest first")  # fmt: skip
    parser.add_argument("--chat-template", default=None, help="frontend chat template name")
    parser.add_argument("--no-independent", action="store_true", help="skip that pass")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for name in ("entries", "questions", "rollouts", "max_tokens", "windows", "window"):
        if getattr(args, name) is None:
            setattr(args, name, sizes[name])
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.endpoint and args.model:
        parser.error("--model picks the model to launch; drop it with --endpoint")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from tqdm import tqdm

    from ted_sglang.runtime import open_runtime

    args = parse_args(argv)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    history = load_history(args.bank) if args.bank else simulate_history(args.entries, args.seed)
    naive = args.naive or ("utility" if history.has_usage else "newest")
    notes = []
    if naive == "utility" and not history.has_usage:
        naive = "newest"
        notes.append("the bank file has no per-version usage: naive layout is newest first")
    indices = measured_indices(history, args.windows, args.window)
    passes = [(CACHE_FRIENDLY, FORK), (f"naive_{naive}", FORK)]
    if not args.no_independent:
        passes.append((CACHE_FRIENDLY, INDEPENDENT))
    with open_runtime(args.endpoint, model=None if args.endpoint else args.model or
                      "smollm2-135m", chat_template=args.chat_template) as rt:  # fmt: skip
        endpoint = rt.student
        encode, tokenizer_name = load_tokenizer(endpoint.model_path, args.tokenizer)
        tokenize = functools.lru_cache(maxsize=8192)(lambda text: tuple(encode(text)))
        log = RequestLog()
        backend = recording_endpoint(endpoint.url, endpoint.chat_template, log)
        ctx = Context(endpoint.url, backend, log, tokenize, load_questions(args.seed), args)
        server = server_info(endpoint.url)
        retentions = {layout: history_retention(ctx, history, layout) for layout, _ in passes}
        payloads: dict[tuple[int, int], Request] = {}
        records: list[dict[str, Any]] = []
        with tqdm(total=len(passes) * len(indices), unit="version", file=sys.stderr) as bar:
            for layout, mode in passes:
                records += run_pass(
                    ctx, history, indices, layout, mode, payloads, retentions[layout], bar
                )
    summary = summarize(records, retentions)
    if tokenizer_name == "approx":
        notes.append("approximate tokenizer: ideal_hit_rate is an estimate")
    if any(r["tokenizer_mismatches"] for r in records):
        notes.append("some prompts tokenized here differ in length from the server's count")
    if any(r["server_cached_tokens"] not in (None, r["cached_tokens"]) for r in records):
        notes.append("/server_info counted other requests too (another client?)")
    result = {
        "question": "prefix cache hit rate vs the ideal while the bank grows; layouts; fork",
        "date": time.strftime("%Y-%m-%d"),
        "model": endpoint.model_path,
        "endpoint": args.endpoint or "launched",
        "tokenizer": tokenizer_name,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "bank": {
            "source": history.source,
            "versions": len(history.versions),
            "measured_versions": len(indices),
            "measured": [history.versions[i].version for i in indices],
            "compression_versions": history.compression_versions,
            "max_entries": max(len(v.entries) for v in history.versions),
        },
        "server": server,
        "machine": machine(load_before),
        "seconds": time.perf_counter() - started,
        "notes": notes,
        "summary": summary,
        "records": records,
    }
    stem = args.out / ("bank_growth_quick" if args.quick else "bank_growth")
    save_json(result, stem.with_suffix(".json"))
    plot(records, stem.with_suffix(".png"), f"{Path(endpoint.model_path).name}: "
         f"{args.rollouts} forks x {args.questions} questions per bank version")  # fmt: skip
    print_table(summary)
    for note in notes:
        print(f"note: {note}")
    print(f"{len(indices)} of {len(history.versions)} bank versions measured per pass, "
          f"{result['seconds']:.0f} s; saved {stem}.json and {stem}.png")  # fmt: skip
    return result


def server_info(url: str) -> dict[str, Any]:
    """The server's own description of its cache and batching (what it reports)."""
    import httpx

    try:
        info = httpx.get(url + "/server_info", timeout=30).json()
    except (httpx.HTTPError, ValueError):
        return {}
    keep = ("max_total_num_tokens", "chunked_prefill_size", "max_running_requests",
            "attention_backend", "device", "dtype", "engine", "version")  # fmt: skip
    out = {k: info.get(k) for k in keep if k in info}
    cache = info.get("cache")
    if isinstance(cache, dict):
        out["cache_budget_tokens"] = cache.get("budget_tokens")
    return out


if __name__ == "__main__":
    main()
