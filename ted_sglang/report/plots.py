"""The report's figures as PNG bytes (matplotlib's object API: no global state, no pyplot).

Each function takes plain figures from :mod:`ted_sglang.report.sources` and returns a
PNG, or ``None`` when there is nothing to draw.  Texts that come from files
(categories, report labels) go through :func:`label`, so matplotlib never reads
them as mathtext.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ted_sglang.report.sources import Batch, EvalReport, Step, VersionPoint, finite, opt_count

WIDTH, HEIGHT, DPI = 10.0, 3.6, 100
MAX_LABEL_CHARS = 28
MAX_CATEGORIES = 24  # categories drawn (the most frequent); the table lists them all
OP_KINDS = ("add", "update", "merge", "delete")
COLORS = {
    "add": "#4c9a5b", "update": "#4a7fb5", "merge": "#8c6bb1", "delete": "#b0804a",
    "compression": "#9a9a9a", "dropped": "#f0a8a0", "rejected": "#d0473d",
    "student": "#4a7fb5", "teacher_solution": "#e0a03a", "extraction": "#8c6bb1",
    "commit": "#9a9a9a",
}  # fmt: skip
REPORT_COLORS = ("#4a7fb5", "#d0473d", "#4c9a5b", "#8c6bb1", "#e0a03a", "#5aa9b5")


def label(text: object, limit: int = MAX_LABEL_CHARS) -> str:
    """``text`` fit for a plot: short, with ``$`` escaped (no mathtext)."""
    value = " ".join(str(text).split())
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return value.replace("\\", "\\\\").replace("$", r"\$")


def accuracy_plot(steps: Sequence[Step], window: int = 10) -> bytes | None:
    """Per-step student accuracy, its running mean and a moving mean; skipped samples
    (rollouts all right or all wrong, the teacher not asked) marked apart."""
    steps = [s for s in steps if s.total > 0]
    if not steps:
        return None
    fig, ax = _figure()
    xs = [s.step for s in steps]
    acc = [s.correct / s.total for s in steps]
    running, recent, total = [], [], 0.0
    for n, value in enumerate(acc, start=1):
        total += value
        running.append(total / n)
        part = acc[max(0, n - window) : n]
        recent.append(sum(part) / len(part))
    groups = {
        None: ("o", "#4a7fb5", "teacher asked"),
        "all_correct": ("^", "#4c9a5b", "skipped: all rollouts right"),
        "all_wrong": ("v", "#d0473d", "skipped: all rollouts wrong"),
    }
    for key, (marker, color, name) in groups.items():
        points = [(x, a) for x, a, s in zip(xs, acc, steps, strict=True) if s.skipped == key]
        if points:
            ax.scatter(*zip(*points, strict=True), marker=marker, color=color, s=22, alpha=0.6,
                       label=f"{name} ({len(points)})", zorder=3)  # fmt: skip
    ax.plot(xs, running, color="#222222", linewidth=2, label="running mean")
    ax.plot(xs, recent, color="#e0a03a", linewidth=1.5, label=f"mean of last {window} steps")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("training step (sample)")
    ax.set_ylabel("student accuracy")
    ax.set_title("Student accuracy during distillation")
    _legend_right(ax)
    return _png(fig)


def bank_size_plot(
    points: Sequence[VersionPoint],
    max_entries: int | None = None,
    max_tokens: int | None = None,
) -> bytes | None:
    """Entries and rendered tokens over the bank's versions, compression versions marked."""
    if len(points) < 2:
        return None
    fig, ax = _figure()
    # One more point half a version on, so the last version shows as a step too.
    xs = [p.version for p in points] + [points[-1].version + 0.5]
    entries = [p.entries for p in points] + [points[-1].entries]
    ax.step(xs, entries, where="post", color="#4a7fb5", linewidth=2, label="entries")
    ax.set_xlabel("bank version")
    ax.set_ylabel("entries", color="#4a7fb5")
    ax.set_xlim(xs[0] - 0.2, xs[-1])
    ax.yaxis.get_major_locator().set_params(integer=True)
    _budget_line(ax, max_entries, max(entries), "#4a7fb5", "entry budget")
    ax.set_ylim(0, max(max(entries), max_entries or 0, 1) * 1.15)
    right = ax.twinx()
    if any(p.tokens is None for p in points):
        right.set_axis_off()
    else:
        tokens = [p.tokens or 0 for p in points] + [points[-1].tokens or 0]
        right.step(xs, tokens, where="post", color="#e0a03a", label="rendered tokens")
        right.set_ylabel("rendered tokens (estimate)", color="#e0a03a")
        _budget_line(right, max_tokens, max(tokens), "#e0a03a", "token budget")
        top = max(tokens) if not max_tokens or max_tokens > 3 * max(tokens) else max_tokens
        right.set_ylim(0, max(top, 1) * 1.15)
    compressed = [p.version for p in points if p.source == "compression"]
    for n, version in enumerate(compressed):
        name = f"written by compression ({len(compressed)})" if n == 0 else None
        ax.axvline(version, color="#d0473d", alpha=0.8, linewidth=1.5, linestyle="--", label=name)
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left",
              bbox_to_anchor=(1.08, 1.0), fontsize=8, frameon=False)  # fmt: skip
    ax.set_title("Bank size over versions")
    return _png(fig)


def _budget_line(ax: Any, bound: int | None, peak: float, color: str, name: str) -> None:
    """A dotted line at ``bound``; far above the data (3x) it is only named in the legend."""
    if not bound:
        return
    if bound > 3 * max(peak, 1):
        ax.plot([], [], color=color, linestyle=":", label=f"{name} {bound} (off the scale)")
    else:
        ax.axhline(bound, color=color, linestyle=":", linewidth=1.2, label=f"{name} ({bound})")


def operations_plot(batches: Sequence[Batch]) -> bytes | None:
    """Operations per batch (stacked): the teacher's applied by kind, compression's
    applied, those dropped when a batch's proposals were reconciled, those the bank
    rejected."""
    if not batches:
        return None
    fig, ax = _figure()
    xs = [b.batch for b in batches]
    counts: dict[str, list[int]] = {
        k: [] for k in (*OP_KINDS, "compression", "dropped", "rejected")
    }
    for b in batches:
        counts["dropped"].append(opt_count((b.reconcile or {}).get("dropped")) or 0)
        tally = Counter(str(r.get("op")) for r in b.results if r.get("status") == "applied")
        rejected = sum(r.get("status") == "rejected" for r in b.results)
        squeezed = b.compression_results()
        for kind in OP_KINDS:
            counts[kind].append(tally[kind])
        counts["compression"].append(sum(r.get("status") == "applied" for r in squeezed))
        counts["rejected"].append(rejected + sum(r.get("status") == "rejected" for r in squeezed))
    bottom = [0] * len(xs)
    for kind, values in counts.items():
        if not any(values):
            continue
        name = {
            "compression": "compression (applied)",
            "dropped": "dropped when reconciled",
            "rejected": "rejected by the bank",
        }.get(kind, f"{kind} (applied)")
        ax.bar(xs, values, 0.8, bottom=bottom, color=COLORS[kind],
               hatch="//" if kind in ("dropped", "rejected") else None,
               label=f"{name}: {sum(values)}")  # fmt: skip
        bottom = [a + b for a, b in zip(bottom, values, strict=True)]
    ax.set_xlabel("batch")
    ax.set_ylabel("operations")
    ax.set_title("Bank operations per batch")
    ax.yaxis.get_major_locator().set_params(integer=True)
    if not any(bottom):
        ax.text(0.5, 0.5, "no operation proposed", transform=ax.transAxes, ha="center")
    else:
        _legend_right(ax)
    return _png(fig)


def tokens_plot(steps: Sequence[Step]) -> bytes | None:
    """Prompt and cached tokens per step (all of its requests) and the hit rate."""
    if not steps:
        return None
    fig, ax = _figure()
    xs = [s.step for s in steps]
    prompt = [sum(t.get("prompt", 0) for t in s.tokens.values()) for s in steps]
    cached = [sum(t.get("cached", 0) for t in s.tokens.values()) for s in steps]
    ax.bar(xs, prompt, 0.9, color="#cfd9e8", label="prompt tokens")
    ax.bar(xs, cached, 0.9, color="#4a7fb5", label="of which cached")
    ax.set_xlabel("training step (sample)")
    ax.set_ylabel("tokens")
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    rate = [c / p if p else 0.0 for c, p in zip(cached, prompt, strict=True)]
    right.plot(xs, rate, color="#d0473d", linewidth=1.2, marker=".", label="cache hit rate")
    total_rate = sum(cached) / sum(prompt) if sum(prompt) else 0.0
    right.axhline(total_rate, color="#d0473d", linestyle=":", linewidth=1,
                  label=f"overall hit rate ({total_rate:.0%})")  # fmt: skip
    right.set_ylim(0, 1.05)
    right.set_ylabel("cached / prompt")
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left",
              bbox_to_anchor=(1.08, 1.0), fontsize=8, frameon=False)  # fmt: skip
    ax.set_title("Prompt tokens and prefix-cache hits per step")
    return _png(fig)


def phases_plot(steps: Sequence[Step], batches: Sequence[Batch]) -> bytes | None:
    """Seconds per step by phase (stacked); a batch's commit sits on its last step."""
    if not steps:
        return None
    fig, ax = _figure()
    xs = [s.step for s in steps]
    commit = {b.steps[1]: b.seconds for b in batches if b.steps}
    phases = {
        "student": [s.seconds.get("student", 0.0) for s in steps],
        "teacher_solution": [
            max(s.seconds.get("teacher_solution", 0.0) - s.seconds.get("student", 0.0), 0.0)
            for s in steps
        ],
        "extraction": [s.seconds.get("extraction", 0.0) for s in steps],
        "commit": [commit.get(s.step, 0.0) for s in steps],
    }
    names = {
        "student": "student rollouts",
        "teacher_solution": "teacher solution (after the rollouts)",
        "extraction": "teacher comparison + operations",
        "commit": "batch commit (reconcile, apply, compress)",
    }
    bottom = [0.0] * len(xs)
    for phase, values in phases.items():
        if not any(values):
            continue
        ax.bar(xs, values, 0.8, bottom=bottom, color=COLORS[phase],
               label=f"{names[phase]}: {sum(values):.1f} s")  # fmt: skip
        bottom = [a + b for a, b in zip(bottom, values, strict=True)]
    ax.set_xlabel("training step (sample)")
    ax.set_ylabel("seconds")
    ax.set_title("Seconds per phase (samples in flight overlap)")
    _legend_right(ax)
    return _png(fig)


def eval_plot(
    reports: Sequence[EvalReport], metric: str = "pass_at_1", name: str = "pass@1"
) -> bytes | None:
    """``metric`` without and with the bank, overall and per category, each report's
    pair of bars side by side (hatched: no bank; solid: with the bank)."""
    if not reports:
        return None
    categories = Counter()
    for r in reports:
        for c in r.conditions.values():
            for category, figures in c.get("by_category", {}).items():
                categories[category] += _count(figures)
    groups = ["all", *(category for category, _ in categories.most_common(MAX_CATEGORIES))]
    bars = [(r, cond) for r in reports for cond in r.conditions]
    fig, ax = _figure(height=HEIGHT + 0.6)
    width = 0.8 / max(len(bars), 1)
    for n, (report, cond) in enumerate(bars):
        color = REPORT_COLORS[reports.index(report) % len(REPORT_COLORS)]
        values = []
        for group in groups:
            figures = report.conditions[cond] if group == "all" else (
                report.conditions[cond].get("by_category", {}).get(group, {})
            )  # fmt: skip
            value = finite(figures.get(metric)) if isinstance(figures, dict) else None
            values.append(0.0 if value is None else value)
        xs = [g + (n - (len(bars) - 1) / 2) * width for g in range(len(groups))]
        no_bank = cond == "no_bank"
        ax.bar(xs, values, width, color="white" if no_bank else color, edgecolor=color,
               hatch="///" if no_bank else None,
               label=label(f"{report.label}: {'no bank' if no_bank else cond}", 48))  # fmt: skip
        if len(groups) * len(bars) <= 24:
            for x, v in zip(xs, values, strict=True):
                ax.text(x, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([label(g) for g in groups], rotation=30 if len(groups) > 4 else 0,
                       ha="right" if len(groups) > 4 else "center", fontsize=8)  # fmt: skip
    ax.set_ylim(0, 1.1)
    ax.set_ylabel(name)
    ax.set_title(f"Evaluation ({name}): without and with the bank, overall and per category")
    _legend_right(ax)
    return _png(fig)


def _count(figures: Any) -> int:
    n = figures.get("num_samples") if isinstance(figures, dict) else None
    return n if isinstance(n, int) and n > 0 else 0


def _figure(height: float = HEIGHT) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.25)
    ax.xaxis.get_major_locator().set_params(integer=True)  # steps, versions, batches
    ax.spines[["top"]].set_visible(False)
    return fig, ax


def _legend_right(ax: Any) -> None:
    """The legend outside the axes, on their right."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
