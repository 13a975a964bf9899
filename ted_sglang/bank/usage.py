"""Usage statistics of one experience and the utility score derived from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

_COUNTERS = ("shown", "correct", "wrong", "helpful", "harmful")


@dataclass(frozen=True)
class Usage:
    """How an experience has fared so far.

    ``shown``: times it was in a student prompt; ``correct`` / ``wrong``: times the
    student then answered correctly / wrongly; ``helpful`` / ``harmful``: times the
    teacher cited it as such; ``last_used_step``: the last step any of these moved.
    """

    shown: int = 0
    correct: int = 0
    wrong: int = 0
    helpful: int = 0
    harmful: int = 0
    last_used_step: int | None = None

    def bump(self, step: int, **counts: int) -> Usage:
        """A copy with the given counters increased and ``last_used_step`` set to ``step``."""
        assert set(counts) <= set(_COUNTERS), counts
        changed = {name: getattr(self, name) + n for name, n in counts.items()}
        last = step if self.last_used_step is None else max(self.last_used_step, step)
        return replace(self, last_used_step=last, **changed)

    def merged(self, other: Usage) -> Usage:
        """The sum of two entries' statistics (for the result of a merge)."""
        summed = {name: getattr(self, name) + getattr(other, name) for name in _COUNTERS}
        steps = [s for s in (self.last_used_step, other.last_used_step) if s is not None]
        return Usage(**summed, last_used_step=max(steps) if steps else None)

    @property
    def importance(self) -> int:
        """ExpeL-style importance count: citations for minus citations against."""
        return self.helpful - self.harmful

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        """Build from a stored dict; raises ``ValueError`` on a wrong field or type."""
        if not isinstance(data, dict):
            raise ValueError("usage must be an object")
        unknown = set(data) - {*_COUNTERS, "last_used_step"}
        if unknown:
            raise ValueError(f"usage has unknown fields {sorted(unknown)}")
        for name in _COUNTERS:
            value = data.get(name, 0)
            if not _is_count(value):
                raise ValueError(f"usage.{name} must be a non-negative integer, got {value!r}")
        last = data.get("last_used_step")
        if last is not None and not _is_count(last):
            raise ValueError("usage.last_used_step must be a non-negative integer or null")
        return cls(**data)


def utility(usage: Usage, cite_weight: float = 2.0, outcome_weight: float = 1.0) -> float:
    """Utility in (0, 1): a weighted mean of Laplace-smoothed success rates.

    The teacher's citations (helpful vs harmful) and the student's outcomes when the
    entry was shown (correct vs wrong) each give a rate ``(good + 1) / (good + bad + 2)``;
    an entry with no evidence scores 0.5.  Citations weigh more by default because
    every entry in a prompt sees the same outcome, while citations single one out.
    """
    assert cite_weight >= 0 and outcome_weight >= 0 and cite_weight + outcome_weight > 0
    cite = (usage.helpful + 1) / (usage.helpful + usage.harmful + 2)
    outcome = (usage.correct + 1) / (usage.correct + usage.wrong + 2)
    return (cite_weight * cite + outcome_weight * outcome) / (cite_weight + outcome_weight)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
