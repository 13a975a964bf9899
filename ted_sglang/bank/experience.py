"""One experience: a short, general piece of advice with a stable id."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from ted_sglang.bank.usage import Usage

ID_PREFIX = "E"
_ID_RE = re.compile(r"E[1-9][0-9]{0,17}")


def format_id(number: int) -> str:
    """The id of the ``number``-th experience ever created: 1 -> ``"E1"``."""
    assert number >= 1
    return f"{ID_PREFIX}{number}"


def id_number(experience_id: str) -> int:
    """The number in an id: ``"E12"`` -> 12.  The id must be well formed."""
    assert is_valid_id(experience_id), experience_id
    return int(experience_id[len(ID_PREFIX) :])


def is_valid_id(value: object) -> bool:
    """Whether ``value`` is a well-formed experience id (``E1``, ``E2``, ...)."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def normalize_text(text: str) -> str:
    """The stored form of a text: every run of whitespace or control characters
    becomes one space, and the ends are stripped (a rendered entry is one line)."""
    cleaned = "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in text)
    return " ".join(cleaned.split())


def text_key(text: str) -> str:
    """What two texts must share to count as exact duplicates: normalised, casefolded."""
    return normalize_text(text).casefold()


def is_encodable(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Experience:
    """An entry of the bank.

    ``created_*`` / ``updated_*`` hold the step and bank version at which the entry was
    created and last changed (its text); usage does not count as a change.
    """

    id: str
    text: str
    created_step: int
    updated_step: int
    created_version: int
    updated_version: int
    usage: Usage = field(default_factory=Usage)

    @property
    def order_key(self) -> tuple[int, int]:
        """Render position: entries changed longer ago first, then by id."""
        return (self.updated_version, id_number(self.id))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "created_step": self.created_step,
            "updated_step": self.updated_step,
            "created_version": self.created_version,
            "updated_version": self.updated_version,
            "usage": self.usage.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Experience:
        """Build from a stored dict; raises ``ValueError`` naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError("an entry must be an object")
        expected = {
            "id",
            "text",
            "created_step",
            "updated_step",
            "created_version",
            "updated_version",
            "usage",
        }
        if set(data) != expected:
            raise ValueError(f"entry fields are {sorted(data)}, expected {sorted(expected)}")
        if not is_valid_id(data["id"]):
            raise ValueError(f"entry id {data['id']!r} is not of the form E1, E2, ...")
        if not isinstance(data["text"], str) or not data["text"]:
            raise ValueError(f"entry {data['id']}: text must be a non-empty string")
        for name in ("created_step", "updated_step", "created_version", "updated_version"):
            value = data[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"entry {data['id']}: {name} must be a non-negative integer")
        try:
            usage = Usage.from_dict(data["usage"])
        except ValueError as exc:
            raise ValueError(f"entry {data['id']}: {exc}") from None
        return cls(**{**data, "usage": usage})
