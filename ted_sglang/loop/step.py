"""One training sample: its model phases, then its usage statistics.

:func:`run_phases` talks to the servers and changes nothing: student rollouts
under the bank as it was when the sample started (a :class:`BankView`), grading,
the teacher's solution and its extraction.  :func:`sample_record` then counts the
sample's usage statistics in the bank and returns its log record; its proposed
operations are applied with the rest of its batch (:mod:`ted_sglang.loop.batch`).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ted_sglang.bank import ExperienceBank
from ted_sglang.data import GradeResult, Sample, answer_instruction, format_question, grade
from ted_sglang.loop import calls
from ted_sglang.loop.calls import Extraction, Tokens
from ted_sglang.loop.config import DistillConfig
from ted_sglang.loop.steplog import STEP
from ted_sglang.prompts import Attempt, ImageFallback
from ted_sglang.runtime import Endpoint

# Why a sample's teacher was not asked: every rollout right, or every rollout wrong.
ALL_CORRECT, ALL_WRONG = "all_correct", "all_wrong"


@dataclass(frozen=True)
class BankView:
    """The bank as one sample's phases see it."""

    version: int
    text: str
    entries: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, bank: ExperienceBank) -> BankView:
        return cls(bank.version, bank.render(), tuple(bank.render_entries()))

    @property
    def ids(self) -> list[str]:
        return [i for i, _ in self.entries]


@dataclass
class PhaseResult:
    """What the servers produced for one sample (nothing applied yet)."""

    sample: Sample
    view: BankView
    trajectories: list[str]
    grades: list[GradeResult]
    solution: str | None = None
    solution_grade: GradeResult | None = None
    chains: list[str] | None = None
    extraction: Extraction | None = None
    skipped: str | None = None  # ALL_CORRECT / ALL_WRONG when the teacher was not asked
    attempt_order: list[int] = field(default_factory=list)
    tokens: dict[str, Tokens] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    worker: str | None = None  # the student endpoint's URL

    @property
    def num_correct(self) -> int:
        return sum(g.correct for g in self.grades)


def uniform_outcome(grades: list[GradeResult]) -> str | None:
    """:data:`ALL_CORRECT` or :data:`ALL_WRONG` when every rollout agrees, else ``None``."""
    if grades and all(g.correct for g in grades):
        return ALL_CORRECT
    if not any(g.correct for g in grades):
        return ALL_WRONG
    return None


def run_phases(
    sample: Sample,
    view: BankView,
    student: Endpoint,
    teacher: Endpoint,
    config: DistillConfig,
    images: ImageFallback,
    attempt_order: list[int],
) -> PhaseResult:
    """Student rollouts, grading, teacher solution and extraction for ``sample``.

    With ``config.skip_uniform`` the teacher is asked only once the rollouts are
    graded, and not at all when they are all right or all wrong (``skipped``);
    otherwise its solution, which does not depend on the rollouts, is generated while
    they run.  ``attempt_order`` is the order in which the teacher reads the attempts
    (a permutation of ``range(config.rollouts)``).  Raises
    :class:`~ted_sglang.loop.calls.RequestFailed` when a server fails a request.
    """
    gen = config.generation
    start = time.perf_counter()
    teacher_view = images.view(sample.image, sample.image_description, teacher.takes_images)
    bare_question = format_question(sample, instruction=False)

    def solve() -> tuple[str, Tokens]:
        return calls.solve(
            teacher.backend, bare_question, answer_instruction(sample), teacher_view, gen
        )

    def roll() -> PhaseResult:
        out = calls.rollouts(
            student.backend, view.text, format_question(sample),
            images.view(sample.image, sample.image_description, student.takes_images),
            config.rollouts, gen,
        )  # fmt: skip
        result = PhaseResult(
            sample, view, out.texts, [grade(t, sample) for t in out.texts],
            attempt_order=list(attempt_order), tokens={"student": out.tokens},
            worker=student.url,
        )  # fmt: skip
        result.seconds["student"] = time.perf_counter() - start
        return result

    if config.skip_uniform:
        result = roll()
        result.skipped = uniform_outcome(result.grades)
        if result.skipped is not None:
            return result
        result.solution, result.tokens["teacher_solution"] = solve()
    else:
        with ThreadPoolExecutor(1, thread_name_prefix="ted-solution") as pool:
            solving = pool.submit(solve)
            result = roll()
            result.solution, result.tokens["teacher_solution"] = solving.result()
    result.solution_grade = grade(result.solution, sample)
    result.seconds["teacher_solution"] = time.perf_counter() - start

    start = time.perf_counter()
    shown = [result.trajectories[i] for i in attempt_order]
    solution_text = result.solution
    if config.structured_chains:
        condensed, result.tokens["chains"] = calls.chains(
            teacher.backend, bare_question, [*shown, result.solution], gen, len(shown) + 1
        )
        result.chains = condensed
        shown, solution_text = condensed[:-1], condensed[-1]
    attempts = [
        Attempt(text, result.grades[i].correct, result.grades[i].extracted)
        for text, i in zip(shown, attempt_order, strict=True)
    ]
    result.extraction = calls.extract(
        teacher.backend, question=bare_question, ground_truth=sample.reference_answer,
        solution=solution_text, attempts=attempts, bank_entries=view.entries,
        limits=config.limits, view=teacher_view, gen=gen,
    )  # fmt: skip
    result.tokens["extraction"] = result.extraction.tokens
    result.seconds["extraction"] = time.perf_counter() - start
    return result


def sample_record(bank: ExperienceBank, result: PhaseResult, *, step: int) -> dict[str, Any]:
    """Count one sample's usage statistics in ``bank`` and return its log record.

    Each entry the student saw counts as shown once per trajectory, with that
    trajectory's outcome; the teacher's citations count as helpful / harmful.  The
    teacher's operations are not applied here: they go through the batch's
    reconciliation (see :mod:`ted_sglang.loop.batch`).  Bad citations are reported in the
    record, never raised.
    """
    sample, view = result.sample, result.view
    for g in result.grades:
        bank.record_shown(view.ids, step)
        bank.record_outcome(view.ids, g.correct, step)
    record: dict[str, Any] = {
        "event": STEP,
        "step": step,
        "sample_id": sample.id,
        "category": sample.category,
        "ground_truth": sample.reference_answer,
        "worker": result.worker,
        "bank_version_seen": view.version,
        "bank_ids_seen": view.ids,
        "trajectories": [
            {"text": t, "correct": g.correct, "extracted": g.extracted, "method": g.method}
            for t, g in zip(result.trajectories, result.grades, strict=True)
        ],
        "student_correct": result.num_correct,
        "student_total": len(result.grades),
        "skipped": result.skipped,
        "teacher_solution": result.solution,
        "teacher_solution_correct": (
            None if result.solution_grade is None else result.solution_grade.correct
        ),
        "attempt_order": result.attempt_order,
        "chains": result.chains,
        "critique": None,
        "teacher_output": None,
        "citations_output": None,
        "citations": None,
        "citations_error": None,
    }
    extraction = result.extraction
    if extraction is not None:
        record["critique"] = extraction.critique
        record["teacher_output"] = extraction.operations
        record["citations_output"] = extraction.citations
        try:
            helpful, harmful = calls.parse_citations(extraction.citations, view.ids)
        except ValueError as exc:
            record["citations_error"] = str(exc)
        else:
            bank.record_cited(helpful, harmful, step=step)
            record["citations"] = {"helpful": helpful, "harmful": harmful}
    record["tokens"] = {name: t.to_dict() for name, t in result.tokens.items()}
    record["seconds"] = {k: round(v, 3) for k, v in result.seconds.items()}
    return record


def tokens_total(records: list[dict[str, Any]]) -> Tokens:
    """Sum of the tokens of log records."""
    total = Tokens()
    for record in records:
        for t in (record.get("tokens") or {}).values():
            total += Tokens(t["prompt"], t["cached"], t["completion"], t.get("requests", 0))
    return total
