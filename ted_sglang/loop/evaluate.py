"""Accuracy of the student with a frozen bank and without one.

Inference is step 1 of the loop alone: the bank's rendering prefixes the student's
prompt and N trajectories are sampled per question.  pass@1 is the first
trajectory's correctness (or a separate greedy answer's, with ``greedy``);
``mean@N`` averages over the N trajectories.  Figures are broken down by category
when the dataset has them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ted_sglang.bank import ExperienceBank
from ted_sglang.data import Sample, format_question, grade
from ted_sglang.loop.calls import RequestFailed, Tokens, rollouts
from ted_sglang.loop.config import GenerationConfig
from ted_sglang.loop.leakage import find_overlap
from ted_sglang.prompts import ImageFallback
from ted_sglang.runtime import Endpoint

NO_BANK, WITH_BANK = "no_bank", "bank"


@dataclass
class SampleScore:
    sample_id: str
    category: str | None
    pass_at_1: bool
    num_correct: int
    num_rollouts: int
    answers: list[str | None]

    @property
    def mean(self) -> float:
        return self.num_correct / self.num_rollouts


@dataclass
class ConditionReport:
    """Accuracy under one condition (a bank, or none)."""

    name: str
    bank_version: int | None
    bank_entries: int
    scores: list[SampleScore] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    tokens: Tokens = field(default_factory=Tokens)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        categories = sorted({s.category for s in self.scores if s.category is not None})
        return {
            "name": self.name,
            "bank_version": self.bank_version,
            "bank_entries": self.bank_entries,
            **_figures(self.scores),
            "by_category": {
                c: _figures([s for s in self.scores if s.category == c]) for c in categories
            },
            "failed": [{"sample_id": i, "error": e} for i, e in self.failed],
            "tokens": self.tokens.to_dict(),
            "cache_hit_rate": round(self.tokens.cache_hit_rate, 4),
            "seconds": round(self.seconds, 2),
            "samples": [
                {
                    "id": s.sample_id,
                    "category": s.category,
                    "pass_at_1": s.pass_at_1,
                    "correct": s.num_correct,
                    "rollouts": s.num_rollouts,
                    "answers": s.answers,
                }
                for s in self.scores
            ],
        }


def _figures(scores: list[SampleScore]) -> dict[str, Any]:
    n = len(scores)
    return {
        "num_samples": n,
        "pass_at_1": sum(s.pass_at_1 for s in scores) / n if n else None,
        "mean_at_n": sum(s.mean for s in scores) / n if n else None,
    }


def score_sample(
    sample: Sample,
    endpoint: Endpoint,
    bank_text: str,
    rollouts_per_sample: int,
    gen: GenerationConfig,
    images: ImageFallback,
    *,
    greedy: bool,
) -> tuple[SampleScore, Tokens]:
    """Sample N trajectories (and a greedy one if ``greedy``) and grade them."""
    view = images.view(sample.image, sample.image_description, endpoint.takes_images)
    question = format_question(sample)
    out = rollouts(endpoint.backend, bank_text, question, view, rollouts_per_sample, gen)
    grades = [grade(t, sample) for t in out.texts]
    tokens = out.tokens
    first = grades[0].correct
    if greedy:
        best = rollouts(endpoint.backend, bank_text, question, view, 1, gen, greedy=True)
        tokens += best.tokens
        first = grade(best.texts[0], sample).correct
    score = SampleScore(
        sample.id, sample.category, first, sum(g.correct for g in grades), len(grades),
        [g.extracted for g in grades],
    )  # fmt: skip
    return score, tokens


def evaluate_condition(
    samples: Sequence[Sample],
    endpoint: Endpoint,
    bank: ExperienceBank | None,
    *,
    name: str,
    rollouts_per_sample: int,
    gen: GenerationConfig,
    greedy: bool = False,
    concurrency: int = 4,
    retries: int = 2,
    progress: bool = True,
) -> ConditionReport:
    """Score every sample under ``bank`` (``None``: no bank)."""
    bank_text = bank.render() if bank is not None else ""
    report = ConditionReport(
        name, bank.version if bank is not None else None, len(bank) if bank is not None else 0
    )
    images = ImageFallback()
    started = time.perf_counter()

    def one(sample: Sample) -> tuple[SampleScore, Tokens]:
        for attempt in range(retries + 1):
            try:
                return score_sample(
                    sample, endpoint, bank_text, rollouts_per_sample, gen, images, greedy=greedy
                )
            except RequestFailed:
                if attempt == retries:
                    raise
                time.sleep(min(2.0**attempt, 10.0))
        raise AssertionError("unreachable")

    bar = _bar(len(samples), f"eval {name}", progress)
    with ThreadPoolExecutor(max(concurrency, 1), thread_name_prefix="ted-eval") as pool:
        futures = [(s, pool.submit(one, s)) for s in samples]
        for sample, future in futures:
            try:
                score, tokens = future.result()
            except RequestFailed as exc:
                report.failed.append((sample.id, str(exc)))
                print(f"sample {sample.id} failed: {exc}", file=sys.stderr)
            else:
                report.scores.append(score)
                report.tokens += tokens
            if bar is not None:
                bar.update(1)
                if report.scores:
                    figures = _figures(report.scores)
                    bar.set_postfix(pass1=f"{figures['pass_at_1']:.2f}")
    if bar is not None:
        bar.close()
    report.seconds = time.perf_counter() - started
    return report


def evaluate(
    samples: Sequence[Sample],
    endpoint: Endpoint,
    bank: ExperienceBank | None,
    *,
    rollouts_per_sample: int = 5,
    gen: GenerationConfig | None = None,
    greedy: bool = False,
    concurrency: int = 4,
    retries: int = 2,
    progress: bool = True,
    dataset: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report: without a bank and, when ``bank`` is given, with it too."""
    if not samples:
        raise ValueError("there are no samples to evaluate")
    gen = gen or GenerationConfig()
    conditions = [(NO_BANK, None)] + ([(WITH_BANK, bank)] if bank is not None else [])
    reports = {}
    for name, condition_bank in conditions:
        reports[name] = evaluate_condition(
            samples, endpoint, condition_bank, name=name, rollouts_per_sample=rollouts_per_sample,
            gen=gen, greedy=greedy, concurrency=concurrency, retries=retries, progress=progress,
        ).to_dict()  # fmt: skip
    out: dict[str, Any] = {
        "dataset": dataset or {},
        "student_model": endpoint.model_path,
        "student_url": endpoint.url,
        "bank_model": bank.meta.student_model if bank is not None else None,
        "rollouts": rollouts_per_sample,
        "greedy": greedy,
        "student_max_tokens": gen.student_max_tokens,
        "temperature": gen.student_temperature,
        "conditions": reports,
    }
    if bank is not None:
        with_bank, without = reports[WITH_BANK], reports[NO_BANK]
        out["delta"] = {
            key: _diff(with_bank[key], without[key]) for key in ("pass_at_1", "mean_at_n")
        }
    return out


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def check_no_training_overlap(
    samples: Sequence[Sample], bank: ExperienceBank, exclude: bool, allow: bool = False
) -> list[Sample]:
    """The samples to score with ``bank``.

    Samples the bank was distilled from (same id, or the same question under another
    id: see :mod:`ted_sglang.loop.leakage`) raise ``ValueError``, unless ``exclude`` drops
    them or ``allow`` scores them anyway (with a warning on stderr).
    """
    if exclude and allow:
        raise ValueError("--exclude-trained and --allow-overlap contradict each other: pick one")
    overlap = find_overlap(samples, bank.meta)
    if not overlap:
        return list(samples)
    if allow:
        print(f"warning: {overlap.describe()}; scoring them anyway", file=sys.stderr)
        return list(samples)
    if not exclude:
        raise ValueError(
            f"{overlap.describe()}. Evaluate another split, pass --exclude-trained to leave "
            "them out, or --allow-overlap to score them anyway"
        )
    print(f"note: {overlap.describe()}; leaving them out", file=sys.stderr)
    return [s for s in samples if s.id not in overlap.ids]


def format_table(report: dict[str, Any]) -> str:
    """The report as a small table: overall, then per category."""
    conditions = report["conditions"]
    names = list(conditions)
    n = report["rollouts"]
    head = f"{'':<22}" + "".join(f"{name + ' pass@1':>16}{f'mean@{n}':>10}" for name in names)
    lines = [head]

    def row(label: str, figures: list[dict[str, Any]]) -> str:
        cells = "".join(
            f"{_pct(f.get('pass_at_1')):>16}{_pct(f.get('mean_at_n')):>10}" for f in figures
        )
        count = figures[0].get("num_samples", 0)
        return f"{label[:16] + f' ({count})':<22}{cells}"

    lines.append(row("all", [conditions[c] for c in names]))
    categories = sorted({c for name in names for c in conditions[name]["by_category"]})
    for category in categories:
        lines.append(row(category, [conditions[c]["by_category"].get(category, {}) for c in names]))
    for name in names:
        c = conditions[name]
        lines.append(
            f"{name}: {c['tokens']['prompt']} prompt tokens ({c['cache_hit_rate']:.0%} cached), "
            f"{c['tokens']['completion']} generated, {c['seconds']:.0f} s"
            + (f", {len(c['failed'])} failed" if c["failed"] else "")
        )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="sample", dynamic_ncols=True)
