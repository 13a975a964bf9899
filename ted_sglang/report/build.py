"""The report's sections, from a log, a bank and eval reports (see :func:`build_report`)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ted_sglang.bank import CompressionPolicy, ExperienceBank
from ted_sglang.bank.storage import write_atomic
from ted_sglang.report import plots
from ted_sglang.report.html import (
    Num,
    Raw,
    Text,
    cards,
    esc,
    figure,
    notes,
    page,
    pct,
    signed_pct,
    table,
)
from ted_sglang.report.sources import (
    EvalReport,
    RunLog,
    bank_budget,
    bank_done,
    checkpoint,
    entry_origins,
    finite,
    load_bank,
    load_eval_reports,
    load_run_log,
    log_version_points,
    version_points,
)

MAX_ENTRY_ROWS = 500  # experiences listed (highest utility first)
MAX_REASON_ROWS = 60  # rejection codes listed
MAX_CATEGORY_ROWS = 200  # categories of the eval table (a data set has a few dozen)
MAX_TEXT_CHARS = 4000  # of one experience's text

# The plots a full report holds (ids of their <figure> elements).
PLOT_IDS = (
    "plot-accuracy", "plot-bank", "plot-operations", "plot-tokens", "plot-phases",
    "plot-eval-pass", "plot-eval-mean",
)  # fmt: skip


def build_report(
    log_path: str | os.PathLike[str],
    bank_path: str | os.PathLike[str] | None = None,
    eval_paths: Sequence[str | os.PathLike[str]] = (),
    title: str | None = None,
) -> str:
    """The report as one HTML document (raises ``ValueError`` naming a bad file)."""
    bank = load_bank(bank_path) if bank_path is not None else None
    log = load_run_log(log_path, bank_done(bank) if bank is not None else None)
    evals = load_eval_reports([Path(p) for p in eval_paths])
    title = title or f"TED distillation report: {Path(log_path).name}"
    body = [
        f"<h1>{esc(title)}</h1>",
        _sources(log, bank, evals),
        _summary(log, bank, evals),
        notes(log.notes),
        _accuracy(log),
        _bank_size(log, bank),
        _operations(log),
        _cost(log),
        _experiences(bank),
        _evaluation(evals),
    ]
    return page(title, body)


def write_report(
    out: str | os.PathLike[str],
    log_path: str | os.PathLike[str],
    bank_path: str | os.PathLike[str] | None = None,
    eval_paths: Sequence[str | os.PathLike[str]] = (),
    title: str | None = None,
) -> Path:
    """Build the report and write it to ``out`` atomically; returns ``out``."""
    text = build_report(log_path, bank_path, eval_paths, title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, text.encode("utf-8"))
    return out


def _sources(log: RunLog, bank: ExperienceBank | None, evals: list[EvalReport]) -> str:
    parts = [f"log <code>{esc(log.path)}</code>"]
    if bank is not None:
        model = bank.meta.student_model or "(no student model recorded)"
        parts.append(
            f"bank <code>{esc(bank.loaded_from)}</code> (version {bank.version}, "
            f"distilled for <code>{esc(model)}</code>)"
        )
        dataset = checkpoint(bank).get("dataset")
        if isinstance(dataset, dict) and dataset.get("path"):
            parts.append(
                f"training data <code>{esc(dataset.get('path'))}</code> split "
                f"{esc(dataset.get('split'))}"
            )
    parts += [f"eval <code>{esc(r.path)}</code>" for r in evals]
    when = datetime.now(UTC).isoformat(timespec="seconds")
    return f'<p class="meta">Built from {"; ".join(parts)}. Written {esc(when)}.</p>'


def _summary(log: RunLog, bank: ExperienceBank | None, evals: list[EvalReport]) -> str:
    steps = log.steps
    correct, total = sum(s.correct for s in steps), sum(s.total for s in steps)
    skipped = Counter(s.skipped for s in steps if s.skipped)
    applied = rejected = 0
    for b in log.batches:
        for r in (*b.results, *b.compression_results()):
            applied += r.get("status") == "applied"
            rejected += r.get("status") == "rejected"
    prompt = sum(t.get("prompt", 0) for s in steps for t in s.tokens.values())
    cached = sum(t.get("cached", 0) for s in steps for t in s.tokens.values())
    order = checkpoint(bank).get("order") if bank is not None else None
    of_all = f" of {len(order)}" if isinstance(order, list) and order else ""
    items = [
        ("samples distilled", f"{len(steps)}{of_all}"),
        ("batches", str(len(log.batches))),
        ("student accuracy in training", pct(correct / total) if total else "–"),
        (
            "skipped as uniform (all right / all wrong)",
            f"{sum(skipped.values())} ({skipped['all_correct']} / {skipped['all_wrong']})",
        ),
        ("operations applied / rejected", f"{applied} / {rejected}"),
        ("prompt tokens from the cache", pct(cached / prompt) if prompt else "–"),
    ]
    if bank is not None:
        items.append(("bank", f"v{bank.version} · {len(bank)} entries"))
    for r in evals[:3]:
        delta = finite(r.delta.get("pass_at_1"))
        if delta is not None:
            items.append((f"pass@1 gain: {plots.label(r.label, 40)}", f"{100 * delta:+.1f} pt"))
    return cards(items)


def _accuracy(log: RunLog) -> str:
    png = plots.accuracy_plot(log.steps)
    caption = (
        "Each dot is one sample: the share of its rollouts the student got right under the bank "
        "as it was then. Triangles: samples the teacher was not asked about because every "
        "rollout agreed (they teach nothing; their usage statistics still count)."
    )
    return "<h2>Student accuracy</h2>" + figure(
        "plot-accuracy", png, caption, "No finished step in the log yet."
    )


def _bank_size(log: RunLog, bank: ExperienceBank | None) -> str:
    if bank is not None:
        points = version_points(bank)
        max_entries, max_tokens = bank_budget(bank)
        caption = (
            "Entries and rendered tokens (the estimate the compression budget counts) at every "
            "version; red lines mark versions written by compression, dotted lines the budget."
        )
    else:
        points, (max_entries, max_tokens) = log_version_points(log), (None, None)
        caption = (
            "Entries after each batch, from the log (pass --bank for tokens and every version); "
            "red lines mark batches that compressed the bank."
        )
    png = plots.bank_size_plot(points, max_entries, max_tokens)
    return "<h2>Bank size</h2>" + figure("plot-bank", png, caption, "The bank never changed.")


def _operations(log: RunLog) -> str:
    png = plots.operations_plot(log.batches)
    caption = (
        "The teacher's operations per batch after reconciliation, by kind; compression's "
        "operations; proposals dropped when a batch's proposals were reconciled; operations the "
        "bank rejected."
    )
    out = ["<h2>Operations</h2>", figure("plot-operations", png, caption, "No batch committed.")]
    reasons: dict[tuple[str, str], list[Any]] = {}
    for b in log.batches:
        decisions = (b.reconcile or {}).get("decisions") or []
        for d in decisions:
            if isinstance(d, dict) and d.get("fate") == "dropped":
                _tally(reasons, "dropped when reconciled", d.get("code"), d.get("reason"))
        for stage, results in (("rejected by the bank", b.results),
                               ("compression: rejected", b.compression_results())):  # fmt: skip
            for r in results:
                if r.get("status") == "rejected":
                    _tally(reasons, stage, r.get("code"), r.get("reason"))
        for outside in (b.compression or {}).get("outside_plan") or []:
            if isinstance(outside, dict):
                _tally(
                    reasons, "compression: outside the plan", "outside_plan", outside.get("reason")
                )
    rows = sorted(reasons.items(), key=lambda kv: (-kv[1][0], kv[0]))
    out.append("<h3>Why operations did not apply</h3>")
    if not rows:
        out.append('<p class="empty" id="reasons-none">Every operation applied.</p>')
    else:
        body = [[stage, Raw(f"<code>{esc(code)}</code>"), count, Text(example)]
                for (stage, code), (count, example) in rows[:MAX_REASON_ROWS]]  # fmt: skip
        out.append(table(["stage", "code", "count", "example"], body, "reasons"))
    return "".join(out)


def _tally(reasons: dict, stage: str, code: Any, reason: Any) -> None:
    entry = reasons.setdefault((stage, str(code or "unknown")), [0, str(reason or "")[:300]])
    entry[0] += 1


def _cost(log: RunLog) -> str:
    out = ["<h2>Tokens and time</h2>"]
    out.append(figure(
        "plot-tokens", plots.tokens_plot(log.steps),
        "Prompt tokens of all of a sample's requests and how many the server's prefix cache held.",
        "No finished step in the log yet.",
    ))  # fmt: skip
    out.append(figure(
        "plot-phases", plots.phases_plot(log.steps, log.batches),
        "Wall-clock seconds of each sample's phases; samples in flight at once overlap, so the "
        "bars add up to more than the run took.",
        "No finished step in the log yet.",
    ))  # fmt: skip
    phases: dict[str, Counter] = {}
    records = [*(s.tokens for s in log.steps), *(b.tokens for b in log.batches)]
    for tokens in records:
        for phase, counts in tokens.items():
            phases.setdefault(phase, Counter()).update(counts)
    if phases:
        rows = [
            [phase, c["prompt"], c["cached"],
             pct(c["cached"] / c["prompt"]) if c["prompt"] else Num("–"), c["completion"]]
            for phase, c in phases.items()
        ]  # fmt: skip
        out.append(table(["phase", "prompt tokens", "cached", "hit rate", "generated"], rows,
                         "phase-tokens"))  # fmt: skip
    return "".join(out)


def _experiences(bank: ExperienceBank | None) -> str:
    out = ["<h2>Experiences</h2>"]
    if bank is None:
        return out[0] + '<p class="empty">Pass --bank to list the experiences.</p>'
    if not len(bank):
        return out[0] + '<p class="empty">The bank is empty.</p>'
    policy = CompressionPolicy()
    origins = entry_origins(bank)
    ranked = sorted(bank.entries, key=lambda e: (-policy.utility(e), e.order_key))
    count = f"{len(ranked)} experience" + ("s" if len(ranked) != 1 else "")
    out.append(
        f"<p>{count}, most useful first (utility: smoothed rate of the teacher's helpful vs "
        "harmful citations, weighted 2:1 with the student's outcomes when the entry was "
        "shown).</p>"
    )
    rows = []
    for rank, e in enumerate(ranked[:MAX_ENTRY_ROWS], start=1):
        u = e.usage
        text = e.text if len(e.text) <= MAX_TEXT_CHARS else e.text[: MAX_TEXT_CHARS - 1] + "…"
        rows.append([
            rank, Raw(f"<code>{esc(e.id)}</code>"), policy.utility(e), u.shown, u.correct,
            u.wrong, u.helpful, u.harmful, Text(text), Raw(_history(e, origins.get(e.id, {}))),
        ])  # fmt: skip
    headers = ["#", "id", "utility", "shown", "correct", "wrong", "helpful", "harmful", "text",
               "history"]  # fmt: skip
    out.append(table(headers, rows, "experiences"))
    if len(ranked) > MAX_ENTRY_ROWS:
        out.append(f'<p class="empty">{len(ranked) - MAX_ENTRY_ROWS} more not listed.</p>')
    return "".join(out)


def _history(entry: Any, origin: dict[str, Any]) -> str:
    batch = origin.get("batch")
    where = f", batch {esc(batch)}" if isinstance(batch, int) else ""
    source = origin.get("source")
    by = f" by {esc(source)}" if isinstance(source, str) else ""
    lines = [f"added v{entry.created_version} (step {entry.created_step}{where}){by}"]
    merged = [str(i) for i in origin.get("merged_from") or []]
    if merged:
        lines.append("merged from " + ", ".join(f"<code>{esc(i)}</code>" for i in merged))
    if entry.updated_version != entry.created_version:
        count = origin.get("updates") or 1
        lines.append(f"updated {count}× (last v{entry.updated_version}, step {entry.updated_step})")
    if entry.usage.last_used_step is not None:
        lines.append(f"last used step {entry.usage.last_used_step}")
    return "<br>".join(lines)


def _evaluation(evals: list[EvalReport]) -> str:
    out = ["<h2>Evaluation</h2>"]
    if not evals:
        return out[0] + '<p class="empty">Pass --eval REPORT.json (from eval --out) to compare.</p>'
    rollouts = {r.rollouts for r in evals}
    n = rollouts.pop() if len(rollouts) == 1 and None not in rollouts else "N"
    out.append(figure(
        "plot-eval-pass", plots.eval_plot(evals, "pass_at_1"),
        "pass@1 without (hatched) and with (solid) the bank; one colour per report.", "",
    ))  # fmt: skip
    out.append(figure(
        "plot-eval-mean", plots.eval_plot(evals, "mean_at_n", f"mean@{n}"),
        f"mean@{n}: the share of right answers over all rollouts.", "",
    ))  # fmt: skip
    rows = []
    for r in evals:
        delta = r.delta
        for name, c in r.conditions.items():
            rows.append([
                r.label, "no bank" if name == "no_bank" else name,
                c.get("bank_version"), c.get("num_samples"), pct(c.get("pass_at_1")),
                pct(c.get("mean_at_n")),
                signed_pct(delta.get("pass_at_1")) if name != "no_bank" else Raw("–"),
                str(r.data.get("student_model") or "–"),
            ])  # fmt: skip
    headers = ["report", "condition", "bank version", "samples", "pass@1", f"mean@{n}",
               "pass@1 gain", "student model"]  # fmt: skip
    out.append(table(headers, rows, "eval-overall"))
    categories = sorted({c for r in evals for cond in r.conditions.values()
                         for c in cond.get("by_category", {})})  # fmt: skip
    if categories:
        columns = [(r, name) for r in evals for name in r.conditions]
        head = ["category"] + [
            f"{r.label}: {'no bank' if name == 'no_bank' else name}" for r, name in columns
        ]
        body = []
        for category in categories[:MAX_CATEGORY_ROWS]:
            cells = []
            for r, name in columns:
                figures = r.conditions[name].get("by_category", {}).get(category) or {}
                cells.append(pct(figures.get("pass_at_1")) if isinstance(figures, dict) else "–")
            body.append([category, *cells])
        out.append("<h3>pass@1 per category</h3>" + table(head, body, "eval-categories"))
        if len(categories) > MAX_CATEGORY_ROWS:
            more = len(categories) - MAX_CATEGORY_ROWS
            out.append(f'<p class="empty">{more} more categories not listed.</p>')
    return "".join(out)
