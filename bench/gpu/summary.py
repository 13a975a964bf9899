"""The last step of ``bench/gpu/run.sh``: one table of every step's outcome and the goals.

Reads the results folder (``kernel_tests.xml``, ``kernels.json``, ``engine.json``) and
the steps' exit statuses, writes ``summary.json`` and ``summary.txt`` there and prints
the table. Goals (issue "GPU figures in one call"): the shared-prefix kernel at N=16,
P=8192, S=256 reaches >= 0.7 of the memory-traffic bound N(P+S)/(P+N·S) over
per-request decode (the faster of ``req-tri`` and ``req-sdpa``) and is no slower than
FlashInfer's cascade; the engine's shared-prefix backend makes >= 3x the decode steps/s
of per-request at N=64 over a 4k-token prefix.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

KERNEL_GOAL = {"N": 16, "P": 8192, "S": 256, "fraction_of_bound": 0.7, "vs_flashinfer": 1.0}
ENGINE_GOAL = {"forks": 64, "min_prefix_tokens": 4096, "speedup": 3.0}
TIMED_OUT = (124, 137)  # timeout's status, and SIGKILL after its grace period


def load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def environment(kernels: dict | None, engine: dict | None) -> dict[str, Any]:
    """Versions and device as the benchmarks recorded them (steps.log has setup's own)."""
    now = datetime.datetime.now(datetime.UTC)
    env: dict[str, Any] = {"date": now.isoformat(timespec="seconds")}
    for source, keys in ((kernels, ("device", "torch", "triton", "flashinfer")),
                         (engine, ("device", "torch", "transformers"))):  # fmt: skip
        for key in keys:
            if source and source.get(key) is not None:
                env.setdefault(key, source[key])
    if shutil.which("nvcc"):
        out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
        env["nvcc"] = out.strip().splitlines()[-1] if out.strip() else "?"
    return env


def steps(status_file: Path) -> list[dict[str, Any]]:
    rows = []
    for line in status_file.read_text().splitlines() if status_file.is_file() else []:
        name, rc, seconds, budget = line.split("\t")
        rc_i = int(rc)
        state = "ok" if rc_i == 0 else "timed out" if rc_i in TIMED_OUT else "failed"
        rows.append(
            {"step": name, "exit": rc_i, "state": state, "seconds": int(seconds),
             "budget_s": int(budget)}
        )  # fmt: skip
    return rows


def kernel_tests(path: Path) -> dict[str, int] | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def kernel_goal(kernels: dict | None) -> dict[str, Any]:
    goal = dict(KERNEL_GOAL)
    rows = (kernels or {}).get("rows", [])
    row = next(
        (r for r in rows if (r["N"], r["P"], r["S"]) == (goal["N"], goal["P"], goal["S"])), None
    )
    if row is None or "shared_us" not in row:
        return {**goal, "status": "not measured"}
    per_request = [row[k] for k in ("req-tri_us", "req-sdpa_us") if k in row]
    speedup = min(per_request) / row["shared_us"] if per_request else None
    fraction = speedup / row["bound"] if speedup else None
    vs_fi = row.get("speedup_vs_fi-casc")
    met_bound = fraction is not None and fraction >= goal["fraction_of_bound"]
    met_fi = vs_fi is not None and vs_fi >= goal["vs_flashinfer"]
    return {
        **goal,
        "speedup_vs_per_request": speedup,
        "bound": row["bound"],
        "achieved_fraction_of_bound": fraction,
        "speedup_vs_flashinfer": vs_fi,
        "status": "met" if met_bound and met_fi else "missed",
        "bound_status": "met" if met_bound else "missed",
        "flashinfer_status": "met" if met_fi else "missed" if vs_fi else "not measured",
    }


def engine_goal(engine: dict | None) -> list[dict[str, Any]]:
    goal = dict(ENGINE_GOAL)
    if not engine or engine.get("prefix_tokens", 0) < goal["min_prefix_tokens"]:
        return [{**goal, "status": "not measured"}]
    found = [s for s in engine.get("speedups", []) if s["forks"] == goal["forks"]]
    if not found:
        return [{**goal, "status": "not measured"}]
    return [
        {
            **goal,
            "prefix_nodes": s["prefix_nodes"],
            "max_prefill_tokens": s["max_prefill_tokens"],
            "decode_speedup": s["decode_steps_per_s"],
            "status": "met" if s["decode_steps_per_s"] >= goal["speedup"] else "missed",
        }
        for s in found
    ]


def fmt(value: Any, spec: str) -> str:
    """``value`` as ``spec`` says (``"8.1f"``); a missing one as ``-`` in the same width."""
    return format("-", ">" + spec.split(".")[0]) if value is None else format(value, spec)


def render(summary: dict[str, Any]) -> str:
    env = summary["environment"]
    lines = [
        f"GPU kit {'DRY RUN (CPU, tiny shapes)' if summary['dry_run'] else 'run'}: "
        f"{env.get('device')}, torch {env.get('torch')}, triton {env.get('triton')}, "
        f"flashinfer {env.get('flashinfer')}, {env.get('nvcc', 'no nvcc')}, {env['date']}",
        "",
        f"{'step':16} {'state':10} {'seconds':>7} {'budget':>7}",
    ]
    for s in summary["steps"]:
        lines.append(f"{s['step']:16} {s['state']:10} {s['seconds']:>7} {s['budget_s']:>7}")
    tests = summary["kernel_tests"]
    if tests:
        lines.append(
            f"kernel tests: {tests['passed']} passed, {tests['failures']} failed, "
            f"{tests['errors']} errors, {tests['skipped']} skipped"
        )
    kernels = summary.get("kernels") or {}
    if kernels.get("rows"):
        lines += ["", f"kernels ({kernels.get('device')}): median µs; x = speedup of shared"]
        lines.append(
            f"{'N':>3} {'P':>6} {'S':>4} {'shared':>8} {'req-tri':>8} {'req-sdpa':>8} "
            f"{'fi-casc':>8} {'x tri':>6} {'x sdpa':>6} {'x fi':>6} {'bound':>6}"
        )
        for r in kernels["rows"]:
            lines.append(
                f"{r['N']:>3} {r['P']:>6} {r['S']:>4} {fmt(r.get('shared_us'), '8.1f')} "
                f"{fmt(r.get('req-tri_us'), '8.1f')} {fmt(r.get('req-sdpa_us'), '8.1f')} "
                f"{fmt(r.get('fi-casc_us'), '8.1f')} "
                f"{fmt(r.get('speedup_vs_req-tri'), '6.2f')} "
                f"{fmt(r.get('speedup_vs_req-sdpa'), '6.2f')} "
                f"{fmt(r.get('speedup_vs_fi-casc'), '6.2f')} {r['bound']:6.2f}"
            )
    engine = summary.get("engine") or {}
    if engine.get("rows"):
        model = engine.get("model", {})
        lines += [
            "",
            f"engine ({engine.get('device')}, {model.get('shape')} {model.get('dtype')}, "
            f"prefix {engine.get('prefix_tokens')} tokens, {engine.get('new_tokens')} new each)",
            f"{'N':>3} {'backend':13} {'nodes':>5} {'tokens/s':>9} {'steps/s':>8} {'wall s':>7}",
        ]
        for r in engine["rows"]:
            lines.append(
                f"{r['forks']:>3} {r['backend']:13} {r['prefix_nodes']:>5} "
                f"{r['tokens_per_s']:9.1f} {fmt(r['decode_steps_per_s'], '8.2f')} "
                f"{r['wall_s']:7.2f}"
            )
    g = summary["goals"]["kernel"]
    label = f"kernel N={g['N']} P={g['P'] // 1024}k S={g['S']}"
    lines += ["", "goals:"]
    if g["status"] == "not measured":
        lines.append(f"  {label}: not measured")
    else:
        lines.append(
            f"  {label}: {fmt(g['speedup_vs_per_request'], '.2f')}x per-request "
            f"= {fmt(g['achieved_fraction_of_bound'], '.2f')} of bound {g['bound']:.2f} "
            f"(goal {g['fraction_of_bound']:.2f}: {g['bound_status']}); "
            f"{fmt(g['speedup_vs_flashinfer'], '.2f')}x FlashInfer cascade "
            f"(goal {g['vs_flashinfer']:.2f}: {g['flashinfer_status']})"
        )
    for e in summary["goals"]["engine"]:
        label = f"engine N={e['forks']} over {e['min_prefix_tokens'] // 1024}k"
        if e["status"] == "not measured":
            lines.append(f"  {label}: not measured")
        else:
            lines.append(
                f"  {label}, prefix in {e['prefix_nodes']} node(s): {e['decode_speedup']:.2f}x "
                f"decode steps/s (goal {e['speedup']:.2f}: {e['status']})"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("status", type=Path, help="run.sh's step statuses (name, exit, s, budget)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    kernels = load_json(args.results / "kernels.json")
    engine = load_json(args.results / "engine.json")
    summary = {
        "dry_run": args.dry_run,
        "environment": environment(kernels, engine),
        "steps": steps(args.status),
        "kernel_tests": kernel_tests(args.results / "kernel_tests.xml"),
        "goals": {"kernel": kernel_goal(kernels), "engine": engine_goal(engine)},
        "kernels": kernels,
        "engine": engine,
    }
    text = render(summary)
    saved = {k: v for k, v in summary.items() if k not in ("kernels", "engine")}  # own files
    (args.results / "summary.json").write_text(json.dumps(saved, indent=1) + "\n")
    (args.results / "summary.txt").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
