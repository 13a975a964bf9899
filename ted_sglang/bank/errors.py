"""Errors of bank files: a file that cannot be used, and a save that would lose edits."""

from __future__ import annotations

import os
from pathlib import Path


class BankFileError(ValueError):
    """A bank file is missing, unreadable, truncated, inconsistent or cannot be written."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class BankConflict(BankFileError):
    """A save based on one state of a bank file found the file changed by another writer.

    ``expected_version``: the version the saving bank read (or last wrote);
    ``found_version``: the version the file holds now.  Nothing was written.
    """

    def __init__(self, path: str | os.PathLike[str], expected_version: int, found_version: int):
        self.expected_version = expected_version
        self.found_version = found_version
        if found_version == expected_version:
            change = (
                f"it was at version {expected_version} then and is still at version "
                f"{found_version}, but another writer changed its content (usage statistics, "
                "metadata, or the whole bank)"
            )
        else:
            change = (
                f"it was at version {expected_version} then and another writer has saved "
                f"version {found_version} since"
            )
        super().__init__(
            path,
            f"not saved: the file changed since this bank was read: {change}. Load it again "
            "and redo the change (ExperienceBank.update_file does the whole cycle under the "
            "file's lock)",
        )


class BankLockTimeout(BankFileError):
    """Another process held a bank file's lock for longer than the caller would wait."""
