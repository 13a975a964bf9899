"""What a bank knows about itself: the model it was distilled for, the samples it saw."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class BankMeta:
    """Metadata persisted with a bank.

    ``student_model``: the model the experiences were distilled for (banks are tagged
    so that a user knows what they fit).  ``training_sample_ids``: the samples the bank
    learnt from, in first-seen order, so an evaluation can refuse to score them;
    ``training_question_hashes``: digests of their questions (see
    :func:`ted_sglang.loop.leakage.question_hash`), so the same question under another id is
    caught too.  ``extra``: anything else a caller wants to keep (JSON values).
    """

    student_model: str | None = None
    training_sample_ids: list[str] = field(default_factory=list)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)
    training_question_hashes: list[str] = field(default_factory=list)

    def add_training_samples(
        self,
        sample_ids: list[str] | tuple[str, ...],
        question_hashes: list[str] | tuple[str, ...] = (),
    ) -> int:
        """Record sample ids and question digests (strings) not recorded yet; returns
        how many sample ids were new."""
        for name, values in (("sample ids", sample_ids), ("question hashes", question_hashes)):
            if isinstance(values, str) or not all(isinstance(s, str) for s in values):
                raise ValueError(f"{name} must be a list of strings")
        _extend_unique(self.training_question_hashes, question_hashes)
        return _extend_unique(self.training_sample_ids, sample_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "student_model": self.student_model,
            "training_sample_ids": list(self.training_sample_ids),
            "training_question_hashes": list(self.training_question_hashes),
            "created_at": self.created_at,
            "extra": copy.deepcopy(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Any) -> BankMeta:
        """Build from a stored dict; raises ``ValueError`` naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError("meta must be an object")
        unknown = set(data) - {
            "student_model",
            "training_sample_ids",
            "training_question_hashes",
            "created_at",
            "extra",
        }
        if unknown:
            raise ValueError(f"meta has unknown fields {sorted(unknown)}")
        model = data.get("student_model")
        if model is not None and not isinstance(model, str):
            raise ValueError("meta.student_model must be a string or null")
        samples = data.get("training_sample_ids", [])
        hashes = data.get("training_question_hashes", [])
        for name, values in (
            ("training_sample_ids", samples),
            ("training_question_hashes", hashes),
        ):
            if not isinstance(values, list) or not all(isinstance(s, str) for s in values):
                raise ValueError(f"meta.{name} must be a list of strings")
        created = data.get("created_at", "")
        extra = data.get("extra", {})
        if not isinstance(created, str) or not isinstance(extra, dict):
            raise ValueError("meta.created_at must be a string and meta.extra an object")
        return cls(model, list(samples), created, extra, list(hashes))


def _extend_unique(known: list[str], values: list[str] | tuple[str, ...]) -> int:
    """Append the values not in ``known`` yet (first-seen order); returns how many."""
    seen = set(known)
    new = [v for v in dict.fromkeys(values) if v not in seen]
    known.extend(new)
    return len(new)


def check_json(value: Any, what: str) -> Any:
    """A deep copy of ``value`` through JSON; ``ValueError`` if it is not JSON data."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON data (str, number, list, dict...): {exc}") from None
