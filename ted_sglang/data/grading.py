"""Reading the final answer out of a model's response, and grading it.

The response is read in this order, and the first place that yields an
answer of the sample's type wins:

1. the last ``\\boxed{...}`` (nested braces allowed);
2. the last answer statement: ``Answer: ...``, ``the answer is ...``,
   ``the correct option is ...`` (earlier ones if the last says nothing usable);
3. a fallback over the whole response: for multiple choice the last line, then
   the last explicit ``(B)`` / ``option B``; for numbers the last number; for
   text the last line.

Text after the last ``</think>`` is read when there is any.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ted_sglang.data.numeric import (
    Number,
    clean_math,
    find_numbers,
    format_number,
    numbers_match,
    parse_number,
)
from ted_sglang.data.sample import LETTERS, Sample


@dataclass(frozen=True)
class GradeResult:
    """The verdict on one response; truthy when correct."""

    correct: bool
    extracted: str | None
    expected: str
    method: str  # "boxed", "statement", "fallback" or "none"

    def __bool__(self) -> bool:
        return self.correct


def grade(text: str, sample: Sample) -> GradeResult:
    """Extract the answer from ``text`` and compare it with the sample's."""
    extracted, method = _extract(text, sample)
    correct = extracted is not None and answer_matches(extracted, sample)
    return GradeResult(correct, extracted, sample.answer, method)


def extract_answer(text: str, sample: Sample) -> str | None:
    """The final answer in ``text``: a letter, a number or a short text; None if none."""
    return _extract(text, sample)[0]


def answer_matches(predicted: str, sample: Sample) -> bool:
    """Whether an already extracted answer equals the sample's ground truth."""
    if sample.answer_type == "choice":
        return _letter_from(predicted, sample) == sample.answer
    if sample.answer_type == "number":
        expected = parse_number(sample.answer)
        assert expected is not None
        number = _number_from(predicted, last=True)
        return number is not None and numbers_match(number, expected)
    expected_text = normalize_text(sample.answer)
    if normalize_text(predicted) == expected_text:
        return True
    gold, guess = parse_number(sample.answer), parse_number(predicted)
    return gold is not None and guess is not None and numbers_match(guess, gold)


def normalize_text(text: str) -> str:
    """Lower case, LaTeX wrappers and punctuation removed, articles dropped."""
    s = clean_math(text).lower()
    s = re.sub(r"\\(?:boxed|fbox)\s*\{(.*)\}", r"\1", s)
    s = re.sub(r"[{}\\*_`\"']", " ", s)
    s = re.sub(r"[^\w\s+\-=/.^()]", " ", s)
    s = re.sub(r"\b(?:a|an|the)\b", " ", s)
    return " ".join(s.split()).strip(" .")


# --- extraction --------------------------------------------------------------

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*(\{)|\\boxed\s+([^\s$\\{}]+)")
_ANSWER_LINE_RE = re.compile(
    r"(?im)(?:^|(?<=[\s*#>]))(?:final\s+answer|answer)\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?"
    r"(?P<rest>[^\n]*)"
)
_ANSWER_PHRASE_RE = re.compile(
    r"\b(?:final\s+answer|answer|(?:correct|right|best)\s+(?:answer|option|choice))"
    r"\s+(?:is|should\s+be|would\s+be|will\s+be|must\s+be)\s*:?\s*(?P<rest>[^\n]*)"
    r"|\bI\s+(?:would\s+)?(?:choose|pick|select)\s+(?P<pick>[^\n]*)",
    re.IGNORECASE,
)
_OPTION_WORD_RE = re.compile(r"(?i)\b(?:option|choice)\s*\(?([A-Z])\)?(?![A-Za-z])")
_PAREN_LETTER_RE = re.compile(r"\(([A-Z])\)")


def _extract(text: str, sample: Sample) -> tuple[str | None, str]:
    if "</think>" in text:
        after = text.rsplit("</think>", 1)[1]
        if after.strip():
            text = after
    boxed = find_boxed(text)
    if boxed:
        answer = _interpret(boxed[-1], sample, last=True)
        if answer is not None:
            return answer, "boxed"
    for statement in reversed(_statements(text)):
        answer = _interpret(statement, sample, last=False)
        if answer is not None:
            return answer, "statement"
    answer = _fallback(text, sample)
    return (answer, "fallback") if answer is not None else (None, "none")


def find_boxed(text: str) -> list[str]:
    """The contents of every ``\\boxed{...}`` in ``text``, in order."""
    found = []
    for match in _BOXED_RE.finditer(text):
        if match.group(2) is not None:
            found.append(match.group(2))
            continue
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:i])
                    break
    return found


def _statements(text: str) -> list[str]:
    """What follows each answer statement, cut at the end of its sentence, in order."""
    found: list[tuple[int, str]] = []
    for regex in (_ANSWER_LINE_RE, _ANSWER_PHRASE_RE):
        for match in regex.finditer(text):
            rest = match.group("rest") if match.group("rest") is not None else match.group("pick")
            found.append((match.start(), _cut_sentence(rest)))
    return [rest for _, rest in sorted(found) if rest]


def _cut_sentence(rest: str) -> str:
    rest = rest.strip().strip("*").strip()
    rest = re.split(r"\.(?=\s|$)|;|,\s|\s(?:because|since|as|which)\s", rest, maxsplit=1)[0]
    return rest.strip().strip("*").strip()


def _interpret(candidate: str, sample: Sample, *, last: bool) -> str | None:
    """Read ``candidate`` as an answer of the sample's type, or None."""
    if sample.answer_type == "choice":
        return _letter_from(candidate, sample)
    if sample.answer_type == "number":
        number = _number_from(candidate, last=last)
        return format_number(number) if number is not None else None
    text = _strip_wrappers(candidate)
    return text or None


def _fallback(text: str, sample: Sample) -> str | None:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    if sample.answer_type == "choice":
        letter = _letter_from(lines[-1], sample)
        if letter is not None:
            return letter
        # Explicit letters anywhere count only when they all name the same option.
        found = {m.upper() for m in _OPTION_WORD_RE.findall(text) + _PAREN_LETTER_RE.findall(text)}
        found &= set(sample.choice_letters)
        return found.pop() if len(found) == 1 else None
    if sample.answer_type == "number":
        numbers = find_numbers(text)
        return format_number(numbers[-1]) if numbers else None
    return _strip_wrappers(lines[-1]) or None


def _strip_wrappers(text: str) -> str:
    s = text.strip()
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}", r"\1", s)
    return s.strip().strip("*$`\"' ").rstrip(".").strip()


def _number_from(candidate: str, *, last: bool) -> Number | None:
    text = _strip_wrappers(candidate)
    number = parse_number(text)
    if number is not None:
        return number
    if "=" in text:
        number = parse_number(text.rsplit("=", 1)[1])
        if number is not None:
            return number
    numbers = find_numbers(text)
    if not numbers:
        return None
    return numbers[-1] if last else numbers[0]


def _letter_from(candidate: str, sample: Sample) -> str | None:
    """The option letter that ``candidate`` names, by letter or by option text."""
    letters = sample.choice_letters
    s = _strip_wrappers(candidate)
    named = set(_PAREN_LETTER_RE.findall(s)) | {m.upper() for m in _OPTION_WORD_RE.findall(s)}
    if len(named & set(letters)) > 1:
        return None  # "(A) or (B)", or the options restated
    match = re.fullmatch(r"[(\[]?([A-Za-z])[)\]]?[.:)]?", s)
    if match and match.group(1).upper() in letters:
        return match.group(1).upper()
    for pattern in (
        r"(?i)(?:option|choice)\s*[(\[]?([A-Z])[)\]]?(?![A-Za-z])",
        r"[(\[]([A-Z])[)\]]",
        r"([A-Z])[.:)](?:\s|$)",
    ):
        match = re.match(pattern, s)
        if match and match.group(1).upper() in letters:
            return match.group(1).upper()
    if sample.options is not None:
        letter = _option_by_text(s, sample.options)
        if letter is not None:
            return letter
    found = {m.upper() for m in _OPTION_WORD_RE.findall(s)} & set(letters)
    if len(found) == 1:
        return found.pop()
    return None


def _option_by_text(text: str, options: list[str]) -> str | None:
    """The letter of the option whose text ``text`` gives (exactly, by value, or within)."""
    norm = normalize_text(text)
    if not norm:
        return None
    normalized = [normalize_text(o) for o in options]
    exact = [i for i, o in enumerate(normalized) if o == norm]
    if len(exact) == 1:
        return LETTERS[exact[0]]
    number = parse_number(text)
    if number is not None:
        by_value = []
        for i, option in enumerate(options):
            value = parse_number(option)
            if value is not None and numbers_match(number, value, rel_tol=1e-9, abs_tol=1e-12):
                by_value.append(i)
        if len(by_value) == 1:
            return LETTERS[by_value[0]]
    within = [
        i
        for i, o in enumerate(normalized)
        if len(o) > 1 and re.search(rf"(?<!\w){re.escape(o)}(?!\w)", norm)
    ]
    # An option inside a longer matching option ("red" in "dark red") does not count.
    within = [
        i for i in within if not any(normalized[i] in normalized[j] for j in within if j != i)
    ]
    if len(within) == 1:
        return LETTERS[within[0]]
    return None
