"""Text similarity for finding near-duplicate experiences.

A similarity is any ``(text_a, text_b) -> float`` in [0, 1], symmetric, 1.0 for equal
texts; an embedding model can be plugged in by wrapping its cosine similarity.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable

Similarity = Callable[[str, str], float]

_WORD_RE = re.compile(r"\w+", re.UNICODE)


@functools.lru_cache(maxsize=8192)
def word_set(text: str) -> frozenset[str]:
    """The casefolded words of a text."""
    return frozenset(_WORD_RE.findall(text.casefold()))


def token_jaccard(a: str, b: str) -> float:
    """Jaccard similarity of the two texts' word sets (1.0 for two texts without words)."""
    wa, wb = word_set(a), word_set(b)
    if not wa and not wb:
        return 1.0
    return len(wa & wb) / len(wa | wb)


def sequence_ratio(a: str, b: str) -> float:
    """difflib's ratio on the casefolded texts, made symmetric."""
    a, b = a.casefold(), b.casefold()
    return max(
        difflib.SequenceMatcher(None, a, b, autojunk=False).ratio(),
        difflib.SequenceMatcher(None, b, a, autojunk=False).ratio(),
    )
