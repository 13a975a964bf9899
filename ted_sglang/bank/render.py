"""Rendering the bank as prompt text, and measuring how much of a prefix survives."""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable

from ted_sglang.bank.experience import Experience

Tokenize = Callable[[str], list[int]]

# Word pieces of up to four characters with their leading space, single punctuation
# marks, runs of whitespace: close to what a byte-level BPE makes of English prose.
_PIECE_RE = re.compile(r" ?[^\W_]{1,4}| ?[^\s\w]|_|\s+", re.UNICODE)


def render_line(entry: Experience) -> str:
    """One entry as rendered: ``[E3] text`` and a newline."""
    return f"[{entry.id}] {entry.text}\n"


def render_text(entries: Iterable[Experience]) -> str:
    """The experiences block: one line per entry in the given order; ``""`` for none."""
    return "".join(render_line(e) for e in entries)


def approx_tokenize(text: str) -> list[int]:
    """A cheap, deterministic stand-in for a tokenizer (no model needed).

    Splits ``text`` into pieces of about the size a BPE tokenizer makes (about four
    characters of a word, one punctuation mark) and maps each piece to an integer,
    so counts are realistic and equal pieces get equal ids.
    """
    return [zlib.crc32(piece.encode("utf-8", "surrogatepass")) for piece in _PIECE_RE.findall(text)]


def prefix_retention(old_text: str, new_text: str, tokenize: Tokenize = approx_tokenize) -> float:
    """Shared leading tokens of two renderings over the tokens of the new one.

    The share of the new rendering a prefix cache holding the old one can serve: 1.0
    when they are equal; an extension scores ``len(old) / len(new)``; an empty new
    rendering counts as 1.0.
    """
    new = tokenize(new_text)
    if not new:
        return 1.0
    old = tokenize(old_text)
    shared = 0
    for a, b in zip(old, new, strict=False):
        if a != b:
            break
        shared += 1
    return shared / len(new)
