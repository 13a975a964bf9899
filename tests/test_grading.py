"""Answer extraction and grading on tricky responses."""

from __future__ import annotations

import pytest

from ted_sglang.data.grading import answer_matches, extract_answer, find_boxed, grade
from ted_sglang.data.numeric import find_numbers, numbers_match, parse_number
from ted_sglang.data.sample import Sample, format_question

MC = Sample(
    "mc", "Which shape has three sides?", "C", options=["circle", "square", "triangle", "star"]
)
MC_NUM = Sample("mcn", "How long is the room?", "B", options=["6 m", "8 m", "10 m", "12 m"])
MC_LATEX = Sample(
    "mcl",
    "How long?",
    "D",
    options=["$6 \\mathrm{~cm}$", "$8 \\mathrm{~cm}$", "$9$", "$12 \\mathrm{~cm}$"],
)
MC_LETTERS = Sample("mcx", "Which point?", "C", options=["A", "B", "C", "D", "E"])
MC_SHUFFLED = Sample("mcs", "Which label?", "A", options=["B", "A", "C"])
MC_IMAGE = Sample("mci", "Which piece fits?", "B", meta={"num_choices": 4})
MC_RED = Sample("mcr", "Which colour?", "B", options=["red", "dark red", "blue"])
NUM = Sample("n", "How many circles?", "7")
FRAC = Sample("f", "What fraction is shaded?", "3/4")
DEC = Sample("d", "What is the ratio?", "0.75")
ROUND = Sample("r", "What is the ratio, to two decimals?", "0.33")
NEG = Sample("neg", "What is 3 minus 8?", "-5")
BIG = Sample("big", "How many visitors?", "12500")
PCT = Sample("pct", "What percent is shaded?", "25%")
DEG = Sample("deg", "What is the angle?", "45")
SCI = Sample("sci", "What is the value?", "0.0012")
TEXT = Sample("t", "Which word is formed?", "KNAO")
ROOT = Sample("sqrt", "What is the length?", "2\\sqrt{2}")

CASES = [
    # (sample, response, expected extraction, correct?)
    (MC, "Answer: \\boxed{C}", "C", True),
    (MC, "A triangle has three sides.\nAnswer: \\boxed{C}", "C", True),
    (MC, "A triangle has three sides, so the answer is C.", "C", True),
    (MC, "The answer is option B", "B", False),
    (MC, "the correct option is (C).", "C", True),
    (MC, "After checking, the final answer: (C) triangle", "C", True),
    (MC, "Answer: C. triangle", "C", True),
    (MC, "**Answer:** C", "C", True),
    (MC, "I think it is a triangle.\nAnswer: triangle", "C", True),
    (MC, "The shape with three sides is the triangle.\n\\boxed{\\text{triangle}}", "C", True),
    (MC, "A shape like that has three sides.", None, False),  # 'A' in a sentence is no answer
    (MC, "A triangle has three sides.", "C", True),  # read by option text, not as letter A
    (MC, "Answer: (A) or (C)", None, False),
    (MC, "A square has four, a circle has none. So (C).", "C", True),
    (MC, "\\boxed{A} at first, but wait, that is wrong: \\boxed{C}", "C", True),
    (MC, "<think>maybe A</think>\nAnswer: \\boxed{c}", "C", True),
    (MC, "(A) circle (B) square (C) triangle (D) star", None, False),
    (MC, "Final Answer: \\boxed{(C)}", "C", True),
    (MC_NUM, "Each tile is 2 m, four tiles: 8 m.\nAnswer: 8 m", "B", True),
    (MC_NUM, "Answer: \\boxed{8}", "B", True),
    (MC_NUM, "Answer: \\boxed{B}", "B", True),
    (MC_LATEX, "So p+q+r+s = 12 cm.\nAnswer: \\boxed{12}", "D", True),
    (MC_LATEX, "The answer is $9$.", "C", False),
    (MC_LETTERS, "Answer: \\boxed{C}", "C", True),  # options equal to their letters
    (MC_SHUFFLED, "Answer: A", "A", True),  # a letter names a position, not an option text
    (MC_IMAGE, "Looking at the pieces, the answer is (B).", "B", True),
    (MC_IMAGE, "Answer: \\boxed{E}", None, False),  # only A-D exist
    (MC_RED, "Answer: dark red", "B", True),
    (NUM, "There are 3 red and 4 blue circles, 7 in total.\nAnswer: \\boxed{7}", "7", True),
    (NUM, "Answer: \\boxed{7}\nI counted 3 rows first.", "7", True),  # boxed beats later numbers
    (NUM, "First I saw 5 circles, then 2 more: 7 circles.", "7", True),
    (NUM, "The answer is 7 (3 + 4).", "7", True),
    (NUM, "3 + 4 = 7\nAnswer: 7 circles", "7", True),
    (NUM, "\\boxed{3+4=7}", "7", True),
    (NUM, "\\boxed{6} then recount: \\boxed{7}", "7", True),
    (NUM, "Answer: \\boxed{\\text{7}}", "7", True),
    (NUM, "The answer is 8.", "8", False),
    (NUM, "I cannot tell.", None, False),
    (FRAC, "Answer: \\boxed{\\frac{3}{4}}", "0.75", True),
    (FRAC, "Answer: 0.75", "0.75", True),
    (FRAC, "Answer: \\boxed{\\dfrac{6}{8}}", "0.75", True),
    (FRAC, "Answer: 3/5", "0.6", False),
    (DEC, "Answer: $\\frac{3}{4}$", "0.75", True),
    (ROUND, "Answer: \\boxed{1/3}", "0.3333333333333333", True),
    (ROUND, "Answer: 0.3", "0.3", False),
    (NEG, "3 - 8 = -5, so Answer: \\boxed{-5}", "-5", True),
    (NEG, "Answer: −5", "-5", True),
    (NEG, "Answer: 5", "5", False),
    (BIG, "Answer: 12,500 visitors", "12500", True),
    (BIG, "Answer: \\boxed{1.25 \\times 10^{4}}", "12500", True),
    (PCT, "Answer: \\boxed{25\\%}", "25%", True),
    (PCT, "Answer: 0.25", "0.25", True),
    (PCT, "Answer: 25", "25", True),
    (DEG, "The angle is 45°.\nAnswer: \\boxed{45^\\circ}", "45", True),
    (DEG, "Answer: 45 degrees", "45", True),
    (SCI, "Answer: 1.2e-3", "0.0012", True),
    (TEXT, "Gerda sees K, N, A, O.\nAnswer: \\boxed{KNAO}", "KNAO", True),
    (TEXT, "Answer: knao.", "knao", True),
    (TEXT, "Answer: KNGO", "KNGO", False),
    (ROOT, "Answer: \\boxed{2\\sqrt{2}}", "2\\sqrt{2}", True),
    (ROOT, "Answer: \\boxed{2 \\sqrt{2}}", "2 \\sqrt{2}", True),
]


@pytest.mark.parametrize(("sample", "response", "extracted", "correct"), CASES)
def test_extract_and_grade(sample: Sample, response: str, extracted: str | None, correct: bool):
    assert extract_answer(response, sample) == extracted
    result = grade(response, sample)
    assert result.correct is correct
    assert bool(result) is correct
    assert result.expected == sample.answer
    assert result.extracted == extracted


def test_grade_reports_where_the_answer_came_from():
    assert grade("Answer: \\boxed{7}", NUM).method == "boxed"
    assert grade("The answer is 7.", NUM).method == "statement"
    assert grade("so 7 in all", NUM).method == "fallback"
    assert grade("no idea", NUM).method == "none"


def test_find_boxed_handles_nested_braces():
    text = "\\boxed{\\frac{1}{2}} and \\boxed{x^{2}+\\sqrt{3}} and \\boxed 5 and \\boxed{unclosed"
    assert find_boxed(text) == ["\\frac{1}{2}", "x^{2}+\\sqrt{3}", "5"]


@pytest.mark.parametrize(
    ("text", "value", "percent"),
    [
        ("12", 12, False),
        ("12 cm", 12, False),
        ("-3.5", -3.5, False),
        ("1,000", 1000, False),
        ("1,234,567.5", 1234567.5, False),
        ("3/4", 0.75, False),
        ("\\frac{3}{4}", 0.75, False),
        ("\\tfrac34", 0.75, False),
        ("1\\frac{1}{2}", 1.5, False),
        ("50%", 50, True),
        ("45°", 45, False),
        ("30^{\\circ}", 30, False),
        ("2.5e3", 2500, False),
        ("$12 \\mathrm{~cm}^2$", 12, False),
        ("(7)", 7, False),
        (".5", 0.5, False),
    ],
)
def test_parse_number(text: str, value: float, percent: bool):
    number = parse_number(text)
    assert number is not None
    assert number.value == pytest.approx(value)
    assert number.is_percent is percent


@pytest.mark.parametrize("text", ["", "x", "5 and 6", "2\\sqrt{2}", "1/0", "A"])
def test_parse_number_rejects(text: str):
    assert parse_number(text) is None


def test_find_numbers_skips_digits_glued_to_words():
    assert [n.value for n in find_numbers("step B5 gives x2 and 3 or 1,000")] == [3, 1000]


def test_numbers_match_tolerances():
    seven = parse_number("7")
    assert numbers_match(parse_number("7.00001"), seven)
    assert not numbers_match(parse_number("7.01"), seven)
    assert not numbers_match(parse_number("6.6"), seven)  # no rounding to an integer answer


def test_answer_matches_a_given_answer():
    assert answer_matches("C", MC)
    assert answer_matches("triangle", MC)
    assert not answer_matches("B", MC)
    assert answer_matches("7.0", NUM)
    assert answer_matches("The KNAO", TEXT)


def test_format_question_shows_options_and_the_answer_convention():
    text = format_question(MC)
    assert "A. circle\nB. square\nC. triangle\nD. star" in text
    assert "Answer: \\boxed{LETTER}" in text
    assert "(A, B, C, D)" in text
    assert "shown in the image (A, B, C, D)" in format_question(MC_IMAGE)
    assert "\\boxed{NUMBER}" in format_question(NUM)
    assert format_question(NUM, instruction=False) == NUM.question


def test_a_response_in_the_instructed_format_is_always_read():
    for sample in (MC, MC_NUM, MC_IMAGE, NUM, FRAC, NEG, PCT, TEXT, ROOT):
        response = f"Some reasoning with 3 numbers 12 and A.\nAnswer: \\boxed{{{sample.answer}}}"
        assert grade(response, sample).correct, sample.id
