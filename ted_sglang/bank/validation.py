"""The one validation of a bank's file content, run on load and on save.

What passes here is what every command can handle (show, stats, diff, save, serve):
plain JSON data (no NaN or infinity, integers within 64 bits, strings that are valid
Unicode, nesting at most :data:`MAX_NESTING` deep) whose experience texts are stored
as the operations store them (one line, whitespace normalised, within the bank's
``max_text_chars``).  The structure itself (fields, types, the entries agreeing with
the history) is checked by the ``from_dict`` of each part.
"""

from __future__ import annotations

import math
from typing import Any

from ted_sglang.bank.experience import is_encodable, normalize_text
from ted_sglang.bank.operations import OperationLimits

# Containers inside containers; a distill checkpoint needs 6, a merged bank's meta 7.
MAX_NESTING = 32
# Integers are counters, steps and versions: 64-bit signed, like every JSON reader's.
INT_BOUND = 2**63


def check_json_tree(data: Any) -> None:
    """Raise ``ValueError`` naming the first place where ``data`` is not plain JSON data
    within the limits above.  Iterative: deep nesting cannot exhaust the stack."""
    # Each item: (value, depth, path) with path = (parent path, key or index) or None.
    stack: list[tuple[Any, int, Any]] = [(data, 0, None)]
    while stack:
        value, depth, path = stack.pop()
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, int):
            if not -INT_BOUND < value < INT_BOUND:
                raise ValueError(f"{_where(path)}: the integer is out of the 64-bit range")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{_where(path)}: {value} is not a JSON number")
        elif isinstance(value, str):
            if not is_encodable(value):
                raise ValueError(
                    f"{_where(path)}: the string holds invalid Unicode (a lone surrogate)"
                )
        elif isinstance(value, dict):
            if depth >= MAX_NESTING:
                raise ValueError(f"{_where(path)}: nested more than {MAX_NESTING} levels deep")
            for key, item in value.items():
                if not isinstance(key, str) or not is_encodable(key):
                    raise ValueError(f"{_where(path)}: a key is not a valid string")
                stack.append((item, depth + 1, (path, key)))
        elif isinstance(value, list | tuple):
            if depth >= MAX_NESTING:
                raise ValueError(f"{_where(path)}: nested more than {MAX_NESTING} levels deep")
            stack += [(item, depth + 1, (path, i)) for i, item in enumerate(value)]
        else:
            raise ValueError(f"{_where(path)}: a {type(value).__name__} is not JSON data")


def stored_text_problem(text: str, limits: OperationLimits) -> str | None:
    """Why ``text`` cannot be an experience's stored text (``None`` if it can): it must
    be what :func:`~ted_sglang.bank.experience.normalize_text` makes of it (no newline,
    NUL or other control character, no leading, trailing or repeated whitespace),
    non-empty, valid Unicode and at most ``limits.max_text_chars`` long."""
    if not is_encodable(text):
        return "holds invalid Unicode (a lone surrogate)"
    if not text:
        return "is empty"
    if len(text) > limits.max_text_chars:
        return f"has {len(text)} characters, over the bank's limit of {limits.max_text_chars}"
    if normalize_text(text) != text:
        return "is not one normalised line (control characters or extra whitespace)"
    return None


def check_texts(entries: list[Any], history: list[Any], limits: OperationLimits) -> None:
    """Raise ``ValueError`` for the first stored text (of an entry, or written by an
    operation in the history) that :func:`stored_text_problem` refuses."""
    for index, entry in enumerate(entries):
        text = entry.get("text") if isinstance(entry, dict) else None
        if isinstance(text, str):
            problem = stored_text_problem(text, limits)
            if problem:
                raise ValueError(f"entries[{index}]: the text {problem}")
    for number, record in enumerate(history, start=1):
        operations = record.get("operations") if isinstance(record, dict) else None
        for op in operations if isinstance(operations, list) else ():
            text = op.get("text") if isinstance(op, dict) else None
            if isinstance(text, str):
                problem = stored_text_problem(text, limits)
                if problem:
                    raise ValueError(f"history version {number}: a text {problem}")


def _where(path: Any) -> str:
    """``meta.extra["k"][2]`` for the path (parent, key) chain of the stack above."""
    parts: list[str] = []
    while path is not None:
        path, key = path
        if isinstance(key, int):
            parts.append(f"[{key}]")
        elif key.isidentifier() and len(key) <= 40:
            parts.append(f".{key}")
        else:
            parts.append(f"[{key[:40]!r}]")
    text = "".join(reversed(parts)).lstrip(".")
    return text or "the file"
