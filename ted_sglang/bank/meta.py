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
    learnt from, in first-seen order, so an evaluation can refuse to score them.
    ``extra``: anything else a caller wants to keep (JSON values).
    """

    student_model: str | None = None
    training_sample_ids: list[str] = field(default_factory=list)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)

    def add_training_samples(self, sample_ids: list[str] | tuple[str, ...]) -> int:
        """Record sample ids (strings) not recorded yet; returns how many were new."""
        if isinstance(sample_ids, str) or not all(isinstance(s, str) for s in sample_ids):
            raise ValueError("sample ids must be a list of strings")
        known = set(self.training_sample_ids)
        new = [s for s in dict.fromkeys(sample_ids) if s not in known]
        self.training_sample_ids.extend(new)
        return len(new)

    def to_dict(self) -> dict[str, Any]:
        return {
            "student_model": self.student_model,
            "training_sample_ids": list(self.training_sample_ids),
            "created_at": self.created_at,
            "extra": copy.deepcopy(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Any) -> BankMeta:
        """Build from a stored dict; raises ``ValueError`` naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError("meta must be an object")
        unknown = set(data) - {"student_model", "training_sample_ids", "created_at", "extra"}
        if unknown:
            raise ValueError(f"meta has unknown fields {sorted(unknown)}")
        model = data.get("student_model")
        if model is not None and not isinstance(model, str):
            raise ValueError("meta.student_model must be a string or null")
        samples = data.get("training_sample_ids", [])
        if not isinstance(samples, list) or not all(isinstance(s, str) for s in samples):
            raise ValueError("meta.training_sample_ids must be a list of strings")
        created = data.get("created_at", "")
        extra = data.get("extra", {})
        if not isinstance(created, str) or not isinstance(extra, dict):
            raise ValueError("meta.created_at must be a string and meta.extra an object")
        return cls(model, list(samples), created, extra)


def check_json(value: Any, what: str) -> Any:
    """A deep copy of ``value`` through JSON; ``ValueError`` if it is not JSON data."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON data (str, number, list, dict...): {exc}") from None
