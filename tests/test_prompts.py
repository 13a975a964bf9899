"""Every prompt rendered with realistic inputs: what the models are shown."""

from __future__ import annotations

import json
import logging

import pytest

from ted_sglang import prompts
from ted_sglang.bank import ExperienceBank, OperationLimits
from ted_sglang.data import Sample, answer_instruction, format_question
from ted_sglang.prompts import Attempt, ImageFallback

LIMITS = OperationLimits(max_operations=3, max_text_chars=160, min_text_chars=12)


@pytest.fixture
def bank() -> ExperienceBank:
    bank = ExperienceBank(limits=LIMITS)
    bank.apply(
        {
            "operations": [
                {"op": "add", "text": "Count each colour separately before adding the counts."},
                {"op": "add", "text": "Read bar values against the axis ticks, not the bar top."},
            ]
        }
    )
    return bank


@pytest.fixture
def sample() -> Sample:
    return Sample(
        "chart-1",
        "The bar chart shows fruit sold. Which bar is the tallest?",
        "B",
        options=["apple", "pear", "plum"],
        category="chart_max",
        image_description="A bar chart: apple 3, pear 7, plum 5.",
    )


def attempts() -> list[Attempt]:
    return [
        Attempt("The pear bar reaches 7, the highest.\nAnswer: \\boxed{B}", True, "B"),
        Attempt("Apple looks tallest.\nAnswer: \\boxed{A}", False, "A"),
        Attempt("I cannot tell.", False, None),
    ]


def test_student_system_holds_the_bank_and_nothing_of_the_question(bank, sample) -> None:
    text = prompts.student_system(bank.render())
    assert text.startswith(prompts.STUDENT_INSTRUCTIONS)
    assert prompts.EXPERIENCES_HEADER in text
    for experience_id, entry in bank.render_entries():
        assert f"[{experience_id}] {entry}" in text
    assert sample.question not in text
    # Same bank, same bytes; a new entry only extends the text (the prefix stays cached).
    assert prompts.student_system(bank.render()) == text
    bank.apply({"operations": [{"op": "add", "text": "Check the question's unit twice."}]})
    assert prompts.student_system(bank.render()).startswith(text)


def test_student_system_without_experiences_is_just_the_instructions() -> None:
    assert prompts.student_system("") == prompts.STUDENT_INSTRUCTIONS
    assert prompts.EXPERIENCES_HEADER not in prompts.student_system("  \n")


def test_description_stands_in_for_the_image(sample) -> None:
    question = format_question(sample)
    text = prompts.with_description(question, sample.image_description)
    assert text == f"[Image: {sample.image_description}]\n\n{question}"
    assert prompts.with_description(question, None) == question


def test_image_fallback_picks_image_description_or_nothing(sample, tmp_path, caplog) -> None:
    image = tmp_path / "a.png"
    fallback = ImageFallback()
    assert fallback.view(image, "words", takes_images=True).image == str(image)
    assert fallback.view(image, "words", takes_images=False).description == "words"
    assert fallback.view(None, "words", takes_images=False) == prompts.ImageView()
    with caplog.at_level(logging.WARNING, logger="ted_sglang.prompts"):
        assert fallback.view(image, None, takes_images=False) == prompts.ImageView()
        assert fallback.view(image, None, takes_images=False) == prompts.ImageView()
    assert len([r for r in caplog.records if "text only" in r.message]) == 1


def test_teacher_solve_holds_question_and_format(sample) -> None:
    text = prompts.teacher_solve(
        format_question(sample, instruction=False), answer_instruction(sample)
    )
    assert sample.question in text and "C. plum" in text and "\\boxed{LETTER}" in text


def test_extraction_request_shows_everything_the_teacher_compares(bank, sample) -> None:
    text = prompts.extraction_request(
        format_question(sample, instruction=False),
        sample.reference_answer,
        "Pear is 7, apple 3, plum 5.\nAnswer: \\boxed{B}",
        attempts(),
        bank.render_entries(),
    )
    assert sample.question in text
    assert "Correct answer: B (pear)" in text
    assert "Pear is 7, apple 3" in text
    assert "(1 of 3 correct)" in text
    assert "Attempt 1: correct (answered: B)" in text
    assert "Attempt 2: wrong (answered: A)" in text
    assert "Attempt 3: wrong (answered: no answer found)" in text
    for experience_id, entry in bank.render_entries():
        assert f"[{experience_id}] {entry}" in text


def test_extraction_request_with_an_empty_bank_and_long_attempts(sample) -> None:
    long = Attempt("step " * 1000, False, None)
    text = prompts.extraction_request("Q?", "4", "", [long], [], max_chars=300)
    assert f"notebook of experiences:\n{prompts.NO_EXPERIENCES}" in text
    assert prompts.TRUNCATED in text and len(text) < 1500
    assert "Your own solution:\n(empty)" in text


def test_operations_request_offers_what_the_bank_allows() -> None:
    empty = prompts.operations_request(0, LIMITS)
    assert '"op": "add"' in empty and '"op": "none"' in empty
    assert '"op": "update"' not in empty and '"op": "merge"' not in empty
    one = prompts.operations_request(1, LIMITS)
    assert '"op": "update"' in one and '"op": "delete"' in one and '"op": "merge"' not in one
    many = prompts.operations_request(5, LIMITS)
    assert '"op": "merge"' in many
    assert "at most 3 operations" in many and "between 12 and 160 characters" in many
    for line in many.splitlines():
        if line.startswith("- {"):
            json.loads(line[2 : line.index("}:") + 1])  # every example is valid JSON


def test_chain_prompts(sample) -> None:
    text = prompts.chain_request(sample.question, "Pear is tallest.\nAnswer: \\boxed{B}")
    assert sample.question in text and "Pear is tallest." in text and "premises" in text
    chain = {"premises": ["pear is 7", "apple is 3"], "steps": ["7 > 3"], "conclusion": "B"}
    rendered = prompts.render_chain(chain)
    assert rendered == "Premises: pear is 7; apple is 3\nSteps:\n  1. 7 > 3\nConclusion: B"
    assert "(none)" in prompts.render_chain({"premises": [], "steps": [], "conclusion": ""})


def test_compression_request_names_each_candidate(bank) -> None:
    entries = bank.render_entries()
    text = prompts.compression_request([entries], [entries[0]], LIMITS)
    assert '["E1", "E2"]' in text
    for experience_id, entry in entries:
        assert f"[{experience_id}] {entry}" in text
    assert '"op": "merge"' in text and '"op": "update"' in text
    only_rewrite = prompts.compression_request([], [entries[1]], LIMITS)
    assert "Merge each group" not in only_rewrite and "[E2]" in only_rewrite
