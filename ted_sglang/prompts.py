"""Every prompt of the TED loop, in one place.

The student's system prompt depends on the bank alone (same bank, same bytes), so
its prefix is shared by every fork and every question; the question and its image
come after it.  The teacher's prompts show the bank with its ids, the ground truth,
the teacher's own solution and the student's attempts with their verdicts.

Nothing here imports sglang: :mod:`ted_sglang.programs` wraps these texts in roles.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ted_sglang.bank.operations import OP_FIELDS, OperationLimits

logger = logging.getLogger(__name__)

STUDENT_INSTRUCTIONS = (
    "You are a careful problem solver. Read the question, reason step by step, and end "
    "with the final answer in the format the question asks for."
)
EXPERIENCES_HEADER = (
    "Experiences from earlier problems (use those that fit the question, ignore the rest):"
)
TEACHER_SYSTEM = (
    "You are an expert teacher. You solve problems carefully, and you keep a notebook of "
    "short, general experiences that help a student solve problems like these."
)
TEACHER_SOLVE = (
    "Solve this problem yourself. Reason step by step, checking each step, and end with "
    "the final answer."
)
NO_EXPERIENCES = "(none yet)"
TRUNCATED = " [...cut]"

# What each operation does, as the teacher reads it; its fields come from OP_FIELDS.
_OP_HELP = {
    "add": "a new experience",
    "update": "rewrite experience {id} (it was wrong, vague or too narrow)",
    "merge": "replace overlapping experiences by one that keeps what each said",
    "delete": "remove experience {id} (it is wrong or misled the student)",
    "none": "change nothing (when the notebook already covers the lesson)",
}
_EXAMPLE_VALUES: dict[str, Any] = {
    "text": "...",
    "id": "E2",
    "ids": ["E1", "E3"],
}


@dataclass(frozen=True)
class Attempt:
    """A student trajectory as the teacher sees it."""

    text: str
    correct: bool
    answer: str | None


@dataclass(frozen=True)
class ImageView:
    """How a sample's image reaches a model: the file (``image``), or its description
    in words (``description``) for a model that reads text only, or neither."""

    image: str | None = None
    description: str | None = None


class ImageFallback:
    """Chooses :class:`ImageView` for each sample, warning once per run when an image
    must be dropped because the model reads text only and there is no description."""

    def __init__(self) -> None:
        self.warned = False

    def view(self, image: Any, description: str | None, takes_images: bool) -> ImageView:
        if image is None:
            return ImageView()
        if takes_images:
            return ImageView(image=str(image))
        if description:
            return ImageView(description=description)
        if not self.warned:
            self.warned = True
            logger.warning(
                "the model reads text only and a sample has an image without an "
                "image_description: such questions are asked without their image"
            )
        return ImageView()


# ---- student ---------------------------------------------------------------------------


def student_system(bank_text: str) -> str:
    """The student's system prompt: instructions, then the rendered bank (if any)."""
    if not bank_text.strip():
        return STUDENT_INSTRUCTIONS
    return f"{STUDENT_INSTRUCTIONS}\n\n{EXPERIENCES_HEADER}\n{bank_text.rstrip()}"


def with_description(question: str, description: str | None) -> str:
    """The question text, preceded by the image's description when it stands in for it."""
    if not description:
        return question
    return f"[Image: {description}]\n\n{question}"


# ---- teacher ---------------------------------------------------------------------------


def teacher_solve(question: str, answer_format: str) -> str:
    """The teacher's request for its own solution."""
    return f"{TEACHER_SOLVE}\n\n{question}\n\n{answer_format}".rstrip()


def render_bank(entries: Sequence[tuple[str, str]]) -> str:
    """Bank entries with their ids, one per line, for the teacher."""
    return "\n".join(f"[{i}] {text}" for i, text in entries) or NO_EXPERIENCES


def clip(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters, marked when cut."""
    text = text.strip()
    return text if len(text) <= max_chars else text[:max_chars].rstrip() + TRUNCATED


def render_attempts(attempts: Sequence[Attempt], max_chars: int) -> str:
    """The student's attempts, each headed by its verdict and extracted answer."""
    blocks = []
    for number, a in enumerate(attempts, start=1):
        verdict = "correct" if a.correct else "wrong"
        answer = a.answer if a.answer is not None else "no answer found"
        body = clip(a.text, max_chars) or "(empty)"
        blocks.append(f"--- Attempt {number}: {verdict} (answered: {answer}) ---\n{body}")
    return "\n\n".join(blocks)


def extraction_request(
    question: str,
    ground_truth: str,
    solution: str,
    attempts: Sequence[Attempt],
    bank_entries: Sequence[tuple[str, str]],
    max_chars: int = 2000,
) -> str:
    """The teacher's view of one sample, asking for a short critique first."""
    right = sum(a.correct for a in attempts)
    return (
        f"Question:\n{question}\n\n"
        f"Correct answer: {ground_truth}\n\n"
        f"Your own solution:\n{clip(solution, max_chars) or '(empty)'}\n\n"
        f"The student's attempts ({right} of {len(attempts)} correct):\n"
        f"{render_attempts(attempts, max_chars)}\n\n"
        f"The student's notebook of experiences:\n{render_bank(bank_entries)}\n\n"
        "Compare the attempts with your solution and the correct answer. In a few "
        "sentences, say where the student went wrong (or right), and which general lesson "
        "would help on similar problems."
    )


def operations_request(num_ids: int, limits: OperationLimits) -> str:
    """Asks for the edit document; lists only the operations the bank's size allows."""
    needed = {"id": 1, "ids": 2, "text": 0}
    lines = []
    for op, names in OP_FIELDS.items():
        if any(num_ids < needed[n] for n in names):
            continue
        example = json.dumps({"op": op, **{n: _EXAMPLE_VALUES[n] for n in names}})
        lines.append(f"- {example}: {_OP_HELP[op].format(id='E2')}")
    return (
        'Now edit the notebook. Write JSON of the form {"operations": [...]} with at most '
        f"{limits.max_operations} operations, each one of:\n" + "\n".join(lines) + "\n"
        "An experience is one general sentence of advice for a whole kind of problem; it "
        "never quotes this question's numbers or answer. Each text is between "
        f"{limits.min_text_chars} and {limits.max_text_chars} characters. Prefer editing an "
        "existing experience over adding a near-duplicate."
    )


CITATION_REQUEST = (
    "Which experiences in the notebook helped the student's attempts, and which hurt or "
    'misled them? Answer as JSON {"helpful": [ids], "harmful": [ids]}; leave a list '
    "empty when unsure."
)


def chain_request(question: str, text: str, max_chars: int = 2000) -> str:
    """Asks to condense one solution into premises, steps and a conclusion."""
    return (
        f"Question:\n{question}\n\nSolution:\n{clip(text, max_chars) or '(empty)'}\n\n"
        "Condense this solution into a structured chain as JSON: the premises it starts "
        "from (facts read from the question or the image), its reasoning steps in order, "
        "and its conclusion (the final answer it reached)."
    )


def render_chain(chain: dict[str, Any]) -> str:
    """A structured chain as readable text (premises -> steps -> conclusion)."""
    premises = "; ".join(str(p) for p in chain.get("premises", [])) or "(none)"
    steps = "\n".join(f"  {i}. {s}" for i, s in enumerate(chain.get("steps", []), start=1))
    return (
        f"Premises: {premises}\nSteps:\n{steps or '  (none)'}\n"
        f"Conclusion: {chain.get('conclusion', '') or '(none)'}"
    )


def compression_request(
    merges: Sequence[Sequence[tuple[str, str]]],
    rewrites: Sequence[tuple[str, str]],
    limits: OperationLimits,
) -> str:
    """Asks the teacher to merge groups of near-duplicates and shorten long entries."""
    parts = ["The notebook of experiences has grown past its budget. Make it more compact."]
    if merges:
        groups = []
        for number, group in enumerate(merges, start=1):
            ids = json.dumps([i for i, _ in group])
            body = "\n".join(f"  [{i}] {text}" for i, text in group)
            groups.append(f"Group {number} {ids}:\n{body}")
        parts.append(
            "Merge each group into one experience that keeps every distinct lesson in it "
            '({"op": "merge", "ids": [...], "text": "..."}):\n' + "\n".join(groups)
        )
    if rewrites:
        body = "\n".join(f"  [{i}] {text}" for i, text in rewrites)
        parts.append(
            "Shorten each of these experiences, keeping its lesson "
            '({"op": "update", "id": "...", "text": "..."}):\n' + body
        )
    parts.append(
        'Answer with JSON {"operations": [...]}: one operation per group and per entry '
        f"above, each text between {limits.min_text_chars} and {limits.max_text_chars} "
        "characters."
    )
    return "\n\n".join(parts)


def update_merge_request(
    entry_id: str, current_text: str, texts: Sequence[str], limits: OperationLimits
) -> str:
    """Asks the teacher to merge several rewrites of one entry into one."""
    body = "\n".join(f"  {n}. {text}" for n, text in enumerate(texts, start=1))
    return (
        f"Experience [{entry_id}] of the notebook reads:\n  {current_text}\n\n"
        f"While learning from different problems, you proposed {len(texts)} different "
        f"rewrites of it:\n{body}\n\n"
        f"Write one rewrite of [{entry_id}] that keeps every distinct lesson of these, as "
        f'JSON {{"operations": [{{"op": "update", "id": "{entry_id}", "text": "..."}}]}}, '
        f"the text between {limits.min_text_chars} and {limits.max_text_chars} characters."
    )


def group_merge_request(texts: Sequence[str], limits: OperationLimits) -> str:
    """Asks the teacher to merge near-duplicate experiences (from different notebooks)
    into one; the ids are ``E1..En`` in the order of ``texts``."""
    body = "\n".join(f"  [E{n}] {text}" for n, text in enumerate(texts, start=1))
    ids = json.dumps([f"E{n}" for n in range(1, len(texts) + 1)])
    return (
        "These experiences, from notebooks kept separately, say nearly the same thing:\n"
        f"{body}\n\n"
        "Merge them into one experience that keeps every distinct lesson, as JSON "
        f'{{"operations": [{{"op": "merge", "ids": {ids}, "text": "..."}}]}}, the text '
        f"between {limits.min_text_chars} and {limits.max_text_chars} characters."
    )
