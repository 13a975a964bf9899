"""Constrained decoding with xgrammar: compiled grammars (cached), token masks, and
the UTF-8 check xgrammar lacks (0.2.7 lets overlong and surrogate byte sequences
through inside JSON strings; decoded, they become U+FFFD and break ``maxLength``)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ted_sglang.engine.errors import RequestError

if TYPE_CHECKING:
    import torch

# Bounds on the compile work one request may ask for (xgrammar's time grows quickly with
# nesting: a 128-deep schema takes ~0.5 s, a 400-deep one ~20 s, on the compile threads
# every request shares).  The bank's largest operations schema (300 ids) is ~8,000
# characters and 10 levels deep.
MAX_GRAMMAR_CHARS = 64 * 1024
MAX_SCHEMA_NESTING = 64


class GrammarCache:
    """Compiles ``regex``/``json_schema``/``ebnf``/``structural_tag`` constraints once each
    (LRU by kind and text).

    Thread-safe: requests compile in worker threads before they reach the scheduler.
    """

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        stop_token_ids: list[int],
        max_entries: int = 64,
        any_whitespace: bool = True,
        max_whitespace_cnt: int | None = None,
    ) -> None:
        import xgrammar

        info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids
        )
        self.compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        special = set(info.special_token_ids)
        # Each token's bytes in the output (special tokens: none), for the UTF-8 check.
        self.token_bytes = [
            b"" if i in special else bytes(piece) for i, piece in enumerate(info.decoded_vocab)
        ]
        self.vocab_size = vocab_size
        self.max_entries = max_entries
        self.any_whitespace = any_whitespace
        self.max_whitespace_cnt = max_whitespace_cnt
        self._entries: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, kind: str, text: str) -> Any:
        """The compiled grammar; raises RequestError with the compiler's message when invalid."""
        key = (kind, text)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
            self.misses += 1
        compiled = self._compile(kind, text)
        self._check_not_empty(kind, compiled)
        with self._lock:
            self._entries[key] = compiled
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return compiled

    def _check_not_empty(self, kind: str, compiled: Any) -> None:
        """Refuse a grammar that allows no first token (a ``$ref`` to itself compiles so)."""
        import xgrammar

        matcher = xgrammar.GrammarMatcher(compiled)
        bitmask = xgrammar.allocate_token_bitmask(1, self.vocab_size)
        matcher.fill_next_token_bitmask(bitmask)
        if not matcher.is_terminated() and not bool(bitmask.any()):
            raise RequestError(
                f"the {kind} allows no output at all (does it refer to itself, or ask for "
                "something no value can be?)"
            )

    def info(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "hits": self.hits,
            "misses": self.misses,
            "max_entries": self.max_entries,
        }

    def matcher(self, compiled: Any) -> Any:
        import xgrammar

        return xgrammar.GrammarMatcher(compiled)

    def _compile(self, kind: str, text: str) -> Any:
        if len(text) > MAX_GRAMMAR_CHARS:
            raise RequestError(
                f"the {kind} is {len(text)} characters; at most {MAX_GRAMMAR_CHARS} are compiled"
            )
        try:
            if kind == "json_schema":
                try:
                    _check_nesting(kind, json.loads(text))
                except json.JSONDecodeError as exc:
                    raise RequestError(f"json_schema is not valid JSON: {exc}") from None
                return self.compiler.compile_json_schema(
                    text,
                    any_whitespace=self.any_whitespace,
                    max_whitespace_cnt=self.max_whitespace_cnt,
                )
            if kind == "regex":
                return self.compiler.compile_regex(text)
            if kind == "structural_tag":
                return self.compiler.compile_structural_tag(structural_tag_json(text))
            assert kind == "ebnf", kind
            return self.compiler.compile_grammar(text)
        except RequestError:
            raise
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError subclasses
            raise RequestError(f"invalid {kind}: {exc}") from None


def structural_tag_json(text: str) -> str:
    """An SGLang ``structural_tag`` as the JSON xgrammar compiles.

    SGLang takes two forms: the current one (``{"format": {...}}``, xgrammar's own) and
    the legacy one (``{"structures": [{"begin", "schema", "end"}], "triggers": [...]}``),
    which becomes a ``triggered_tags`` format. A missing JSON schema means any JSON.
    """
    try:
        tag = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(f"structural_tag is not valid JSON: {exc}") from None
    if not isinstance(tag, dict):
        raise RequestError("structural_tag must be a JSON object")
    _check_nesting("structural_tag", tag)
    if tag.get("structures") is not None:
        structures, triggers = tag["structures"], tag.get("triggers")
        if not isinstance(structures, list) or not isinstance(triggers, list):
            raise RequestError("a legacy structural_tag needs lists 'structures' and 'triggers'")
        tags = []
        for item in structures:
            if not isinstance(item, dict) or "begin" not in item or "end" not in item:
                raise RequestError("each structural_tag structure needs 'begin' and 'end'")
            schema = item.get("schema")
            content = {"type": "json_schema", "json_schema": {} if schema is None else schema}
            tags.append(
                {"type": "tag", "begin": item["begin"], "content": content, "end": item["end"]}
            )
        fmt = {
            "type": "triggered_tags",
            "triggers": triggers,
            "tags": tags,
            "at_least_one": bool(tag.get("at_least_one", False)),
        }
        return json.dumps({"type": "structural_tag", "format": fmt})
    if not isinstance(tag.get("format"), dict):
        raise RequestError("structural_tag needs a 'format' object (or legacy 'structures')")
    _fill_json_schemas(tag["format"])
    return json.dumps(tag)


def _check_nesting(kind: str, value: Any) -> None:
    """Refuse JSON nested deeper than :data:`MAX_SCHEMA_NESTING` levels."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        if children and depth > MAX_SCHEMA_NESTING:
            raise RequestError(f"the {kind} is nested more than {MAX_SCHEMA_NESTING} levels deep")
        stack += [(child, depth + 1) for child in children]


def _fill_json_schemas(fmt: Any) -> None:
    """Give every ``json_schema`` format without a schema the empty one (any JSON)."""
    if not isinstance(fmt, dict):
        return
    if fmt.get("type") in ("json_schema", "qwen_xml_parameter") and fmt.get("json_schema") is None:
        fmt["json_schema"] = {}
    _fill_json_schemas(fmt.get("content"))
    for key in ("elements", "tags"):
        for child in fmt.get(key) or ():
            _fill_json_schemas(child)


# Second-byte range allowed after each multi-byte lead byte (RFC 3629), and the number
# of continuation bytes it takes; later continuation bytes are 80-BF.
_LEADS = {
    **{b: (1, 0x80, 0xBF) for b in range(0xC2, 0xE0)},
    0xE0: (2, 0xA0, 0xBF),  # no overlong 3-byte forms
    **{b: (2, 0x80, 0xBF) for b in (*range(0xE1, 0xED), 0xEE, 0xEF)},
    0xED: (2, 0x80, 0x9F),  # no surrogates
    0xF0: (3, 0x90, 0xBF),  # no overlong 4-byte forms
    **{b: (3, 0x80, 0xBF) for b in range(0xF1, 0xF4)},
    0xF4: (3, 0x80, 0x8F),  # nothing above U+10FFFF
}


def utf8_tail(pending: bytes, piece: bytes) -> bytes | None:
    r"""The unfinished UTF-8 sequence that ``pending + piece`` ends with (``b""`` if none),
    or None when ``pending + piece`` is not the start of valid UTF-8.

    ``pending`` is a previous answer: the unfinished end of the output so far.

    Example:
        >>> utf8_tail(b"", "é".encode()[:1]), utf8_tail(b"\xc3", b"\xa9!")
        (b'\xc3', b'')
        >>> utf8_tail(b"\xe0", b"\x82") is None  # overlong
        True
    """
    data = pending + piece
    i, n = 0, len(data)
    while i < n:
        lead = data[i]
        if lead < 0x80:
            i += 1
            continue
        if lead not in _LEADS:
            return None
        need, low, high = _LEADS[lead]
        for j in range(1, need + 1):
            if i + j >= n:
                return data[i:]
            if not (low <= data[i + j] <= high if j == 1 else 0x80 <= data[i + j] <= 0xBF):
                return None
        i += need + 1
    return b""


def apply_grammar_masks(logits: torch.Tensor, matchers: list[tuple[int, Any]]) -> None:
    """Mask, in place, the tokens each ``(row, matcher)`` forbids next."""
    if not matchers:  # so that unconstrained decoding runs without xgrammar installed
        return
    import xgrammar

    bitmask = xgrammar.allocate_token_bitmask(logits.shape[0], logits.shape[1])
    for row, matcher in matchers:
        matcher.fill_next_token_bitmask(bitmask, row)
    xgrammar.apply_token_bitmask_inplace(
        logits, bitmask, vocab_size=logits.shape[1], indices=[row for row, _ in matchers]
    )
