"""Bank files for the serving tests."""

from __future__ import annotations

from pathlib import Path

from ted_sglang.bank import ExperienceBank


def write_bank(path: Path, *texts: str, model: str = "tiny") -> ExperienceBank:
    """A bank of ``texts`` (one version per add) for ``model``, saved at ``path``."""
    bank = ExperienceBank(student_model=model)
    for text in texts:
        add(bank, text)
    bank.save(path)
    return bank


def add(bank: ExperienceBank, text: str) -> None:
    """Add one experience as a new version (the operation must be accepted)."""
    report = bank.apply({"operations": [{"op": "add", "text": text}]})
    assert report.error is None and report.version == report.previous_version + 1
