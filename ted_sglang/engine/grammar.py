"""Constrained decoding with xgrammar: compiled grammars (cached), token masks, and
the UTF-8 check xgrammar lacks (0.2.7 lets overlong and surrogate byte sequences
through inside JSON strings; decoded, they become U+FFFD and break ``maxLength``)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ted_sglang.engine.protocol import RequestError

if TYPE_CHECKING:
    import torch


class GrammarCache:
    """Compiles ``regex``/``json_schema``/``ebnf`` constraints once each (LRU by kind and text).

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
        with self._lock:
            self._entries[key] = compiled
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return compiled

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
        try:
            if kind == "json_schema":
                try:
                    json.loads(text)
                except json.JSONDecodeError as exc:
                    raise RequestError(f"json_schema is not valid JSON: {exc}") from None
                return self.compiler.compile_json_schema(
                    text,
                    any_whitespace=self.any_whitespace,
                    max_whitespace_cnt=self.max_whitespace_cnt,
                )
            if kind == "regex":
                return self.compiler.compile_regex(text)
            assert kind == "ebnf", kind
            return self.compiler.compile_grammar(text)
        except RequestError:
            raise
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError subclasses
            raise RequestError(f"invalid {kind}: {exc}") from None


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
    import xgrammar

    if not matchers:
        return
    bitmask = xgrammar.allocate_token_bitmask(logits.shape[0], logits.shape[1])
    for row, matcher in matchers:
        matcher.fill_next_token_bitmask(bitmask, row)
    xgrammar.apply_token_bitmask_inplace(
        logits, bitmask, vocab_size=logits.shape[1], indices=[row for row, _ in matchers]
    )
