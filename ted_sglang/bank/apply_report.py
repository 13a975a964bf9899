"""What :meth:`ExperienceBank.apply` did with each operation of a document."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["applied", "rejected", "none"]


@dataclass(frozen=True)
class OpResult:
    """The fate of one operation.

    ``raw`` is the operation as received; ``op`` its name when it has a known one;
    ``result_id`` the id an ``add`` or ``merge`` created.  A rejected op carries a
    ``code`` (see :data:`~ted_sglang.bank.operations.SHAPE_CODES` and
    :data:`~ted_sglang.bank.operations.SEMANTIC_CODES`) and a ``reason`` for people.
    """

    index: int
    status: Status
    raw: Any
    op: str | None = None
    result_id: str | None = None
    code: str | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        assert (self.status == "rejected") == (self.code is not None)
        assert self.status != "rejected" or self.reason

    def describe(self) -> str:
        """One line: ``#2 update E3: applied`` / ``#3 delete: rejected (E9 does not exist)``."""
        name = self.op or "operation"
        if self.status == "applied":
            target = _target(self.raw)
            if self.result_id:
                target = f"{target} -> {self.result_id}" if target else self.result_id
            return f"#{self.index} {name} {target}: applied"
        if self.status == "none":
            return f"#{self.index} none: nothing to do"
        return f"#{self.index} {name}: rejected ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "status": self.status, "op": self.op}
        if self.result_id:
            out["result_id"] = self.result_id
        if self.code:
            out["code"] = self.code
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class ApplyReport:
    """The outcome of one document.

    ``error`` (with ``error_code``) is set when the document as a whole could not be
    read (not JSON, not ``{"operations": [...]}``); then ``results`` is empty.  The bank
    moves to a new version exactly when at least one operation was applied
    (``changed``); ``version`` is the bank's version after the call.
    """

    version: int
    previous_version: int
    results: tuple[OpResult, ...] = ()
    error: str | None = None
    error_code: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.version != self.previous_version

    @property
    def applied(self) -> list[OpResult]:
        return [r for r in self.results if r.status == "applied"]

    @property
    def rejected(self) -> list[OpResult]:
        return [r for r in self.results if r.status == "rejected"]

    @property
    def new_ids(self) -> list[str]:
        """Ids created by this document (adds and merges), in order."""
        return [r.result_id for r in self.applied if r.result_id]

    @property
    def ok(self) -> bool:
        """Whether the document was read and nothing in it was rejected."""
        return self.error is None and not self.rejected

    def summary(self) -> str:
        """Readable lines, e.g. to log or to show the teacher what went wrong."""
        if self.error:
            return f"document rejected: {self.error}"
        head = (
            f"version {self.previous_version} -> {self.version}"
            if self.changed
            else f"version {self.version} unchanged"
        )
        counts = f"{len(self.applied)} applied, {len(self.rejected)} rejected"
        return "\n".join([f"{head} ({counts})", *(r.describe() for r in self.results)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "previous_version": self.previous_version,
            "error": self.error,
            "error_code": self.error_code,
            "results": [r.to_dict() for r in self.results],
        }


def _target(raw: Any) -> str:
    if isinstance(raw, dict):
        if isinstance(raw.get("id"), str):
            return raw["id"]
        if isinstance(raw.get("ids"), list):
            return "+".join(str(i) for i in raw["ids"])
    return ""
