"""Edit operations on the bank: their one definition, the JSON Schema and the shape check.

A document is ``{"operations": [op, ...]}``; each op is an object whose ``"op"`` field
names it and whose other fields are exactly those listed in :data:`OP_FIELDS`:

    {"op": "add", "text": "..."}
    {"op": "update", "id": "E3", "text": "..."}        rewrite an entry
    {"op": "merge", "ids": ["E1", "E4"], "text": "..."} replace several entries by one
    {"op": "delete", "id": "E2"}
    {"op": "none"}

Both :func:`operations_schema` (for grammar-constrained decoding) and
:func:`parse_document` (for any text, constrained or not) are derived from
:data:`OP_FIELDS` and :class:`OperationLimits`, so they cannot drift apart.  The
checks that need the bank (does the id exist? is the text a duplicate?) live in
:mod:`ted_sglang.bank.apply`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ted_sglang.bank.experience import id_number, is_valid_id

# The single source of truth: op name -> its fields, in the order a model writes them.
OP_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "add": ("text",),
    "update": ("id", "text"),
    "merge": ("ids", "text"),
    "delete": ("id",),
    "none": (),
}
# How many existing ids an op needs before the schema may offer it.
_IDS_NEEDED: Final[Mapping[str, int]] = {"id": 1, "ids": 2, "text": 0}

# Rejection codes.  Shape codes mean the op does not fit the schema; the others are
# semantic (the op is well formed but does not fit the bank or the rest of the document).
SHAPE_CODES: Final = frozenset(
    {
        "not_object",
        "unknown_op",
        "missing_field",
        "unexpected_field",
        "wrong_type",
        "too_many_operations",
        "too_few_ids",
        "too_many_ids",
    }
)
SEMANTIC_CODES: Final = frozenset(
    {
        "unknown_id",
        "duplicate_id",
        "id_conflict",
        "empty_text",
        "text_too_short",
        "text_too_long",
        "invalid_text",
        "duplicate_text",
        "unchanged_text",
    }
)
DOCUMENT_CODES: Final = frozenset(
    {"invalid_json", "not_object", "missing_operations", "unexpected_field", "wrong_type"}
)


@dataclass(frozen=True)
class OperationLimits:
    """Bounds on a document: number of operations, text length (characters, after
    whitespace normalisation) and number of ids one merge may name."""

    max_operations: int = 8
    max_text_chars: int = 400
    min_text_chars: int = 8
    max_merge_ids: int = 5

    def __post_init__(self) -> None:
        if self.max_operations < 1:
            raise ValueError("max_operations must be at least 1")
        if not 1 <= self.min_text_chars <= self.max_text_chars:
            raise ValueError("need 1 <= min_text_chars <= max_text_chars")
        if self.max_merge_ids < 2:
            raise ValueError("max_merge_ids must be at least 2")

    def to_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Any) -> OperationLimits:
        if not isinstance(data, dict) or set(data) - set(cls.__dataclass_fields__):
            raise ValueError(
                f"limits must be an object with fields {list(cls.__dataclass_fields__)}"
            )
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
            raise ValueError("limits must be integers")
        return cls(**data)


@dataclass(frozen=True)
class Operation:
    """A well-formed operation (shape checked, not yet checked against the bank)."""

    op: str
    id: str | None = None
    ids: tuple[str, ...] = ()
    text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The document form: ``op`` and exactly the fields this op has."""
        out: dict[str, Any] = {"op": self.op}
        for name in OP_FIELDS[self.op]:
            value = getattr(self, name)
            out[name] = list(value) if name == "ids" else value
        return out

    @property
    def target_ids(self) -> tuple[str, ...]:
        """The existing entries this op touches."""
        return self.ids if self.op == "merge" else () if self.id is None else (self.id,)


@dataclass(frozen=True)
class Rejection:
    """Why an operation (or the whole document) was not applied."""

    code: str
    reason: str

    def __post_init__(self) -> None:
        assert self.code in SHAPE_CODES | SEMANTIC_CODES | DOCUMENT_CODES, self.code
        assert self.reason


def operations_schema(ids: Iterable[str], limits: OperationLimits | None = None) -> dict:
    """The JSON Schema of an operations document for a bank holding ``ids``.

    ``id`` and ``ids`` are an ``enum`` of the existing ids, so a grammar-constrained
    model cannot name a missing entry; ops that need more ids than exist are left out
    (an empty bank allows only ``add`` and ``none``).  Objects are closed and every
    property is required.
    """
    limits = limits or OperationLimits()
    id_set = set(ids)
    bad = sorted(str(i) for i in id_set if not is_valid_id(i))
    if bad:
        raise ValueError(f"not experience ids (E1, E2, ...): {bad}")
    id_list = sorted(id_set, key=id_number)
    variants = [
        _op_schema(op, fields, id_list, limits)
        for op, fields in OP_FIELDS.items()
        if all(len(id_list) >= _IDS_NEEDED[name] for name in fields)
    ]
    return {
        "type": "object",
        "properties": {
            "operations": {
                "type": "array",
                "items": {"anyOf": variants},
                "maxItems": limits.max_operations,
            }
        },
        "required": ["operations"],
        "additionalProperties": False,
    }


def operations_schema_text(ids: Iterable[str], limits: OperationLimits | None = None) -> str:
    """:func:`operations_schema` as compact JSON text (stable: a cache key for grammars)."""
    return json.dumps(operations_schema(ids, limits), separators=(",", ":"))


def _op_schema(op: str, fields: tuple[str, ...], ids: list[str], limits: OperationLimits) -> dict:
    properties: dict[str, Any] = {"op": {"const": op}}
    for name in fields:
        if name == "text":
            properties[name] = {
                "type": "string",
                "minLength": limits.min_text_chars,
                "maxLength": limits.max_text_chars,
            }
        elif name == "id":
            properties[name] = {"type": "string", "enum": ids}
        else:
            properties[name] = {
                "type": "array",
                "items": {"type": "string", "enum": ids},
                "minItems": 2,
                "maxItems": min(limits.max_merge_ids, len(ids)),
            }
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def load_document(document: Any) -> tuple[list[Any] | None, Rejection | None]:
    """The raw operation list of a document (dict, or JSON as str/bytes), or why not.

    JSON text may hold raw control characters inside strings (grammar-constrained
    decoders can emit them); they are accepted and later normalised away.
    """
    if isinstance(document, bytes | bytearray):
        try:
            document = document.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, Rejection("invalid_json", f"document is not UTF-8 text: {exc}")
    if isinstance(document, str):
        try:
            document = json.loads(document, strict=False)
        except json.JSONDecodeError as exc:
            return None, Rejection("invalid_json", f"document is not valid JSON: {exc}")
        except RecursionError:
            return None, Rejection("invalid_json", "document is not valid JSON: nested too deeply")
    if not isinstance(document, Mapping):
        kind = type(document).__name__
        return None, Rejection(
            "not_object", f'document must be an object {{"operations": [...]}}, got {kind}'
        )
    if "operations" not in document:
        return None, Rejection("missing_operations", 'document has no "operations" field')
    extra = sorted(str(k) for k in document if k != "operations")
    if extra:
        return None, Rejection(
            "unexpected_field", f'document may only hold "operations"; remove {extra}'
        )
    ops = document["operations"]
    if not isinstance(ops, list | tuple):
        return None, Rejection(
            "wrong_type", f'"operations" must be a list, got {type(ops).__name__}'
        )
    return list(ops), None


def parse_operation(raw: Any, limits: OperationLimits) -> Operation | Rejection:
    """Check one raw op against the schema's shape (not against the bank)."""
    if not isinstance(raw, Mapping):
        return Rejection("not_object", f"an operation must be an object, got {type(raw).__name__}")
    op = raw.get("op")
    if not isinstance(op, str) or op not in OP_FIELDS:
        names = ", ".join(OP_FIELDS)
        return Rejection("unknown_op", f'"op" must be one of {names}; got {_brief(op)}')
    fields = OP_FIELDS[op]
    missing = [name for name in fields if name not in raw]
    if missing:
        return Rejection("missing_field", f"{op} needs field(s) {', '.join(missing)}")
    extra = sorted(str(k) for k in raw if k != "op" and k not in fields)
    if extra:
        allowed = ", ".join(fields) or "no other field"
        return Rejection("unexpected_field", f"{op} takes {allowed}; remove {', '.join(extra)}")
    values: dict[str, Any] = {}
    for name in fields:
        value = raw[name]
        if name == "ids":
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                return Rejection("wrong_type", f"{op}: ids must be a list of id strings")
            if len(value) < 2:
                return Rejection("too_few_ids", f"{op}: name at least 2 ids to merge")
            if len(value) > limits.max_merge_ids:
                return Rejection(
                    "too_many_ids", f"{op}: at most {limits.max_merge_ids} ids per merge"
                )
            values[name] = tuple(value)
        elif not isinstance(value, str):
            return Rejection(
                "wrong_type", f"{op}: {name} must be a string, got {type(value).__name__}"
            )
        else:
            values[name] = value
    return Operation(op=op, **values)


def _brief(value: Any) -> str:
    """A short, safe description of a bad value for a message."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:40]) + "..."
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    return f"a {type(value).__name__}"
