"""One question with its image and ground truth, and how it is shown to a model.

The answer convention lives here and only here: a response ends with a line
``Answer: \\boxed{...}`` (see :func:`answer_instruction`); the extractor in
``grading.py`` reads that form and its common variants.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ted_sglang.data.numeric import parse_number

AnswerType = Literal["choice", "number", "text"]
ANSWER_TYPES: tuple[str, ...] = ("choice", "number", "text")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Letters offered when a multiple-choice question draws its options in the image
# (MathVision's Kangaroo problems have five, A-E).
DEFAULT_IMAGE_CHOICES = 5
ANSWER_PREFIX = "Answer:"


@dataclass(frozen=True)
class Sample:
    """A question, its optional image and its ground-truth answer.

    ``options`` are shown as A, B, C...; for multiple choice ``answer`` is the
    letter (an answer given as the text of an option becomes its letter).
    ``answer_type`` is inferred when left empty: options, or a lone letter A-E,
    make ``"choice"``; an answer that parses as a number makes ``"number"``;
    anything else is ``"text"``. ``meta`` keeps whatever else the source carried
    (``split``, ``solution``, ``num_choices`` for options drawn in the image...).
    ``image_description`` says in words what the image shows, for models that read
    text only (it describes the picture; it does not solve the question).
    """

    id: str
    question: str
    answer: str
    image: Path | None = None
    options: list[str] | None = None
    category: str | None = None
    answer_type: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    image_description: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise ValueError(f"sample id must be a non-empty string, got {self.id!r}")
        where = f"sample {self.id!r}"
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"{where}: question must be a non-empty string")
        if not isinstance(self.answer, str) or not self.answer.strip():
            raise ValueError(f"{where}: answer must be a non-empty string")
        if self.category is not None and not isinstance(self.category, str):
            raise ValueError(f"{where}: category must be a string or null")
        if self.image is not None:
            object.__setattr__(self, "image", Path(self.image).expanduser().resolve())
        description = self.image_description
        if description is not None and not isinstance(description, str):
            raise ValueError(f"{where}: image_description must be a string or null")
        object.__setattr__(self, "image_description", (description or "").strip() or None)
        options = self.options
        if options is not None:
            if not isinstance(options, list | tuple) or not all(
                isinstance(o, str) for o in options
            ):
                raise ValueError(f"{where}: options must be a list of strings")
            options = [str(o) for o in options] or None
            if options is not None and not 2 <= len(options) <= len(LETTERS):
                raise ValueError(f"{where}: needs 2 to 26 options, got {len(options)}")
            object.__setattr__(self, "options", options)
        answer = self.answer.strip()
        answer_type = self.answer_type or _infer_answer_type(answer, options)
        if answer_type not in ANSWER_TYPES:
            raise ValueError(f"{where}: answer_type must be one of {ANSWER_TYPES}")
        if answer_type == "choice":
            answer = _choice_letter(answer, options, where)
        elif options is not None:
            raise ValueError(f"{where}: a question with options has answer_type 'choice'")
        elif answer_type == "number" and parse_number(answer) is None:
            raise ValueError(f"{where}: answer {answer!r} is not a number")
        object.__setattr__(self, "answer", answer)
        object.__setattr__(self, "answer_type", answer_type)

    def __hash__(self) -> int:  # options and meta are lists/dicts; equal samples share these
        return hash((self.id, self.question, self.answer))

    @property
    def choice_letters(self) -> str:
        """The letters a multiple-choice answer may take ('' for other types)."""
        if self.answer_type != "choice":
            return ""
        if self.options is not None:
            return LETTERS[: len(self.options)]
        count = int(self.meta.get("num_choices") or DEFAULT_IMAGE_CHOICES)
        return LETTERS[: max(count, LETTERS.index(self.answer) + 1)]

    @property
    def correct_option(self) -> str | None:
        """The text of the correct option, when the options are given as text."""
        if self.options is None:
            return None
        return self.options[LETTERS.index(self.answer)]

    @property
    def reference_answer(self) -> str:
        """The ground truth as a person would state it: ``B (12 cm)`` or ``12``."""
        option = self.correct_option
        return f"{self.answer} ({option})" if option is not None else self.answer


def _infer_answer_type(answer: str, options: list[str] | None) -> str:
    if options is not None or re.fullmatch(r"[A-E]", answer):
        return "choice"
    return "number" if parse_number(answer) is not None else "text"


def _choice_letter(answer: str, options: list[str] | None, where: str) -> str:
    letter = answer.strip("() .").upper()
    if options is None:
        if len(letter) == 1 and letter in LETTERS:
            return letter
        raise ValueError(f"{where}: a multiple-choice answer without options must be a letter")
    if len(letter) == 1 and letter in LETTERS[: len(options)]:
        return letter
    matches = [i for i, o in enumerate(options) if o.strip().lower() == answer.lower()]
    if len(matches) == 1:
        return LETTERS[matches[0]]
    raise ValueError(
        f"{where}: answer {answer!r} is neither a letter A-{LETTERS[len(options) - 1]} "
        "nor the text of one option"
    )


def answer_instruction(sample: Sample) -> str:
    """How the response must end, worded for the sample's answer type."""
    if sample.answer_type == "choice":
        letters = ", ".join(sample.choice_letters)
        what = "LETTER is the letter of the correct option"
        if sample.options is None:
            what += f" shown in the image ({letters})"
        else:
            what += f" ({letters})"
        return (
            "Reason step by step, then end your response with a final line "
            f"'{ANSWER_PREFIX} \\boxed{{LETTER}}', where {what}."
        )
    if sample.answer_type == "number":
        return (
            "Reason step by step, then end your response with a final line "
            f"'{ANSWER_PREFIX} \\boxed{{NUMBER}}' giving the number alone, without units."
        )
    return (
        "Reason step by step, then end your response with a final line "
        f"'{ANSWER_PREFIX} \\boxed{{ANSWER}}' giving a short final answer."
    )


def format_question(sample: Sample, *, instruction: bool = True) -> str:
    """The question as the student sees it: text, lettered options, answer format."""
    parts = [sample.question.strip()]
    if sample.options is not None:
        lines = [f"{letter}. {text}" for letter, text in zip(LETTERS, sample.options, strict=False)]
        parts.append("Options:\n" + "\n".join(lines))
    if instruction:
        parts.append(answer_instruction(sample))
    return "\n\n".join(parts)
