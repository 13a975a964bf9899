"""Keeping evaluation honest: the bank's training samples and the model it fits.

A bank records the ids of the samples it was distilled from and a digest of each
one's question (:func:`question_hash`).  An evaluation item overlaps the bank when
its id is a training id, or when its question is a training question under another
id (same text up to case, whitespace and Unicode form; same options; same image
bytes).  :func:`model_mismatch` compares the bank's student model with the model a
server reports, by name (``org/Model-Name`` and ``/models/model-name`` agree).
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from ted_sglang.bank import BankMeta
from ted_sglang.data import Sample


def normalize_question(text: str) -> str:
    """NFKC, casefolded, every run of whitespace one space, ends stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def question_hash(sample: Sample) -> str:
    """A digest of what the model is asked: the normalised question, the normalised
    options and the image file's bytes (its name if it cannot be read)."""
    image = None
    if sample.image is not None:
        try:
            image = hashlib.sha256(sample.image.read_bytes()).hexdigest()
        except OSError:
            image = sample.image.name
    item = [
        normalize_question(sample.question),
        [normalize_question(o) for o in sample.options or []],
        image,
    ]
    return hashlib.sha256(json.dumps(item, ensure_ascii=False).encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class Overlap:
    """Evaluation samples that the bank was distilled from: by id, and (other ids) by
    identical question."""

    by_id: tuple[str, ...]
    by_question: tuple[str, ...]

    @property
    def ids(self) -> set[str]:
        return {*self.by_id, *self.by_question}

    def __bool__(self) -> bool:
        return bool(self.by_id or self.by_question)

    def describe(self) -> str:
        parts = []
        if self.by_id:
            parts.append(f"{len(self.by_id)} by id ({_listing(self.by_id)})")
        if self.by_question:
            parts.append(
                f"{len(self.by_question)} by identical question under another id "
                f"({_listing(self.by_question)})"
            )
        return f"{len(self.ids)} evaluation sample(s) were used to distill this bank: " + "; ".join(
            parts
        )


def find_overlap(samples: Sequence[Sample], meta: BankMeta) -> Overlap:
    """Which of ``samples`` the bank described by ``meta`` was distilled from."""
    trained_ids = set(meta.training_sample_ids)
    trained_questions = set(meta.training_question_hashes)
    by_id, by_question = [], []
    for s in samples:
        if s.id in trained_ids:
            by_id.append(s.id)
        elif trained_questions and question_hash(s) in trained_questions:
            by_question.append(s.id)
    return Overlap(tuple(by_id), tuple(by_question))


def normalize_model_name(name: str) -> str:
    """The comparable part of a model name or path: its last path component,
    casefolded, without a ``.gguf`` suffix."""
    last = PurePosixPath(name.strip().replace("\\", "/").rstrip("/")).name or name.strip()
    last = last.casefold()
    return last.removesuffix(".gguf")


def model_mismatch(bank_model: str | None, served_model: str) -> str | None:
    """A warning when the bank was distilled for another model than the one served
    (``None`` when they agree); a bank without a model tag gets a note."""
    if bank_model is None:
        return "note: the bank does not say which student model it was distilled for"
    if normalize_model_name(bank_model) == normalize_model_name(served_model):
        return None
    return (
        f"warning: the bank was distilled for {bank_model}, but the student serves "
        f"{served_model}: its experiences may not fit this model"
    )


def _listing(ids: Sequence[str]) -> str:
    return ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
