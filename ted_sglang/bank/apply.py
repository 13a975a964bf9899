"""Checking operations against the bank and carrying out the accepted ones.

Every operation of a document is judged against the bank as it was *before* the
document and against the operations accepted earlier in the same document; so the
accepted operations, applied on their own, give exactly the same bank.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ted_sglang.bank.apply_report import OpResult
from ted_sglang.bank.experience import (
    Experience,
    format_id,
    is_encodable,
    normalize_text,
    text_key,
)
from ted_sglang.bank.operations import (
    Operation,
    OperationLimits,
    Rejection,
    parse_operation,
)
from ted_sglang.bank.usage import Usage


@dataclass(frozen=True)
class Verdict:
    """One operation judged: accepted (``operation`` set, text normalised),
    rejected (``rejection`` set) or a ``none`` (neither)."""

    index: int
    raw: Any
    operation: Operation | None = None
    rejection: Rejection | None = None

    @property
    def op_name(self) -> str | None:
        if self.operation is not None:
            return self.operation.op
        op = self.raw.get("op") if isinstance(self.raw, Mapping) else None
        return op if isinstance(op, str) and len(op) <= 20 else None


def judge(
    entries: Mapping[str, Experience], raw_ops: list[Any], limits: OperationLimits
) -> list[Verdict]:
    """Judge each raw operation in order (see the module docstring)."""
    keys = {text_key(e.text): e.id for e in entries.values()}
    claimed: dict[str, int] = {}  # id -> index of the accepted op that touches it
    doc_keys: dict[str, int] = {}  # text key -> index of the accepted op that wrote it
    verdicts = []
    for index, raw in enumerate(raw_ops):
        if index >= limits.max_operations:
            rejection = Rejection(
                "too_many_operations",
                f"a document holds at most {limits.max_operations} operations",
            )
            verdicts.append(Verdict(index, raw, rejection=rejection))
            continue
        parsed = parse_operation(raw, limits)
        if isinstance(parsed, Rejection):
            verdicts.append(Verdict(index, raw, rejection=parsed))
            continue
        if parsed.op == "none":
            verdicts.append(Verdict(index, raw))
            continue
        rejection = _check_ids(parsed, entries, claimed)
        if rejection is None and parsed.text is not None:
            parsed, rejection = _check_text(parsed, entries, keys, doc_keys, limits)
        if rejection is not None:
            verdicts.append(Verdict(index, raw, rejection=rejection))
            continue
        for target in parsed.target_ids:
            claimed[target] = index
        if parsed.text is not None:
            doc_keys[text_key(parsed.text)] = index
        verdicts.append(Verdict(index, raw, operation=parsed))
    return verdicts


def _check_ids(
    op: Operation, entries: Mapping[str, Experience], claimed: dict[str, int]
) -> Rejection | None:
    targets = op.target_ids
    for target in targets:
        if target not in entries:
            shown = target if len(target) <= 40 else target[:40] + "..."
            return Rejection("unknown_id", f"{shown!r} is not an id in the bank")
    if len(set(targets)) != len(targets):
        return Rejection("duplicate_id", "a merge must name each id once")
    for target in targets:
        if target in claimed:
            return Rejection(
                "id_conflict", f"{target} is already changed by operation #{claimed[target]}"
            )
    return None


def _check_text(
    op: Operation,
    entries: Mapping[str, Experience],
    keys: dict[str, str],
    doc_keys: dict[str, int],
    limits: OperationLimits,
) -> tuple[Operation, Rejection | None]:
    assert op.text is not None
    if not is_encodable(op.text):
        return op, Rejection("invalid_text", "text holds invalid Unicode (a lone surrogate)")
    text = normalize_text(op.text)
    if not text:
        return op, Rejection("empty_text", "text is empty")
    if len(text) < limits.min_text_chars:
        return op, Rejection(
            "text_too_short",
            f"text has {len(text)} characters, the minimum is {limits.min_text_chars}",
        )
    if len(text) > limits.max_text_chars:
        return op, Rejection(
            "text_too_long",
            f"text has {len(text)} characters, the maximum is {limits.max_text_chars}",
        )
    key = text_key(text)
    if op.op == "update" and keys.get(key) == op.id:
        return op, Rejection("unchanged_text", f"the new text is the same as {op.id}'s text")
    owner = keys.get(key)
    if owner is not None and owner not in op.target_ids:
        return op, Rejection("duplicate_text", f"the same text is already in {owner}")
    if key in doc_keys:
        return op, Rejection(
            "duplicate_text", f"the same text is already written by operation #{doc_keys[key]}"
        )
    return replace(op, text=text), None


def execute(
    entries: Mapping[str, Experience],
    operations: list[Operation],
    *,
    version: int,
    step: int,
    next_number: int,
) -> tuple[dict[str, Experience], int, list[dict[str, Any]]]:
    """Carry out accepted operations on a copy of ``entries`` as bank ``version``.

    Returns the new entries, the next id number, and the operations as recorded in
    the history (document form plus ``result_id`` for adds and merges).
    """
    out = dict(entries)
    records = []
    for op in operations:
        record = op.to_dict()
        if op.op == "delete":
            del out[op.id]
        elif op.op == "update":
            old = out[op.id]
            out[op.id] = replace(old, text=op.text, updated_step=step, updated_version=version)
        else:
            assert op.op in ("add", "merge"), op
            usage = Usage()
            for source in op.ids:
                usage = usage.merged(out.pop(source).usage)
            new_id = format_id(next_number)
            next_number += 1
            assert new_id not in out
            out[new_id] = Experience(new_id, op.text, step, step, version, version, usage)
            record["result_id"] = new_id
        records.append(record)
    return out, next_number, records


def op_results(verdicts: list[Verdict], records: list[dict[str, Any]]) -> list[OpResult]:
    """One result per judged operation; ``records`` are what :func:`execute` made of the
    accepted ones, in order."""
    made = iter(records)
    results = []
    for v in verdicts:
        if v.rejection is not None:
            results.append(
                OpResult(
                    v.index,
                    "rejected",
                    v.raw,
                    v.op_name,
                    None,
                    v.rejection.code,
                    v.rejection.reason,
                )
            )
        elif v.operation is None:
            results.append(OpResult(v.index, "none", v.raw, "none"))
        else:
            record = next(made)
            results.append(OpResult(v.index, "applied", v.raw, v.op_name, record.get("result_id")))
    return results
