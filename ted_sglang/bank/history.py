"""The versions of a bank: what each applied, and rebuilding any version from them."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from ted_sglang.bank.apply import execute
from ted_sglang.bank.experience import Experience
from ted_sglang.bank.operations import OperationLimits, Rejection, parse_operation


@dataclass(frozen=True)
class VersionRecord:
    """Version ``version`` of a bank: the operations that made it from the version
    before (document form, with ``result_id`` on adds and merges), the caller's step
    and free-form ``meta`` (e.g. ``{"sample_id": ..., "source": "teacher"}``)."""

    version: int
    step: int
    operations: tuple[dict[str, Any], ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "step": self.step,
            "operations": [dict(op) for op in self.operations],
            "meta": copy.deepcopy(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Any) -> VersionRecord:
        """Build from a stored dict; raises ``ValueError`` naming what is wrong."""
        if not isinstance(data, dict) or set(data) != {"version", "step", "operations", "meta"}:
            raise ValueError("a history record must hold version, step, operations and meta")
        for name in ("version", "step"):
            value = data[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"history record: {name} must be a non-negative integer")
        if not isinstance(data["operations"], list) or not isinstance(data["meta"], dict):
            raise ValueError("history record: operations must be a list and meta an object")
        return cls(data["version"], data["step"], tuple(data["operations"]), data["meta"])


@dataclass(frozen=True)
class BankDiff:
    """What changed between two versions: entries only in the newer one (``added``),
    only in the older one (``removed``), and in both with another text (``changed``,
    as (old, new) pairs)."""

    version_a: int
    version_b: int
    added: tuple[Experience, ...]
    removed: tuple[Experience, ...]
    changed: tuple[tuple[Experience, Experience], ...]

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def summary(self) -> str:
        """Readable lines: ``+ [E7] text``, ``- [E2] text``, ``~ [E3] old`` / ``  -> new``."""
        lines = [
            f"version {self.version_a} -> {self.version_b}: {len(self.added)} added, "
            f"{len(self.removed)} removed, {len(self.changed)} changed"
        ]
        lines += [f"- [{e.id}] {e.text}" for e in self.removed]
        for old, new in self.changed:
            lines += [f"~ [{old.id}] {old.text}", f"  -> {new.text}"]
        lines += [f"+ [{e.id}] {e.text}" for e in self.added]
        return "\n".join(lines)


def replay(
    history: list[VersionRecord], upto: int | None = None
) -> tuple[dict[str, Experience], int]:
    """Rebuild the entries (with zero usage) and the next id number after version
    ``upto`` (default: the last).  Raises ``ValueError`` if the history is inconsistent."""
    entries: dict[str, Experience] = {}
    next_number = 1
    for position, record in enumerate(history, start=1):
        if upto is not None and record.version > upto:
            break
        if record.version != position:
            raise ValueError(f"history record {position} says version {record.version}")
        if not record.operations:
            raise ValueError(f"version {record.version} applies no operation")
        for raw in record.operations:
            raw = dict(raw) if isinstance(raw, dict) else raw
            result_id = raw.pop("result_id", None) if isinstance(raw, dict) else None
            parsed = parse_operation(raw, _UNBOUNDED_MERGE)
            if isinstance(parsed, Rejection) or parsed.op == "none" or parsed.text == "":
                raise ValueError(f"version {record.version}: bad operation {raw!r}")
            targets = parsed.target_ids
            if len(set(targets)) != len(targets) or any(t not in entries for t in targets):
                raise ValueError(f"version {record.version}: {raw!r} names missing entries")
            entries, next_number, (made,) = execute(
                entries,
                [parsed],
                version=record.version,
                step=record.step,
                next_number=next_number,
            )
            if made.get("result_id") != result_id:
                raise ValueError(f"version {record.version}: {raw!r} should create {result_id}")
    return entries, next_number


# Replays accept whatever was once applied, even under limits that have changed since.
_UNBOUNDED_MERGE = OperationLimits(max_merge_ids=1 << 30)


def diff_entries(
    a: dict[str, Experience], b: dict[str, Experience], version_a: int, version_b: int
) -> BankDiff:
    """Compare two sets of entries (ordered as given) by id and text."""
    return BankDiff(
        version_a,
        version_b,
        added=tuple(e for i, e in b.items() if i not in a),
        removed=tuple(e for i, e in a.items() if i not in b),
        changed=tuple((a[i], e) for i, e in b.items() if i in a and a[i].text != e.text),
    )
