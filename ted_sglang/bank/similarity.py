"""Text similarity for finding near-duplicate experiences.

A similarity is any ``(text_a, text_b) -> float`` in [0, 1], symmetric, 1.0 for equal
texts; an embedding model can be plugged in by wrapping its cosine similarity.  One
that works better in batches may also offer ``prepare(texts)``: :func:`prepare` calls
it with every text about to be compared, before the pairwise calls.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Iterable, Sequence

from ted_sglang.bank.experience import text_key

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


def similarity_name(similarity: Similarity) -> str:
    """A short name for logs and reports (``name`` attribute, else the function's)."""
    name = getattr(similarity, "name", None) or getattr(similarity, "__name__", None)
    return str(name or type(similarity).__name__)


def prepare(similarity: Similarity, texts: Iterable[str]) -> None:
    """Hand ``texts`` at once to a similarity that has a ``prepare`` hook (e.g. to embed
    them in one batch); plain functions need nothing."""
    hook = getattr(similarity, "prepare", None)
    if callable(hook):
        hook(list(dict.fromkeys(texts)))


def check_threshold(threshold: float, what: str = "threshold") -> float:
    """``threshold`` if it is in (0, 1]; ``ValueError`` otherwise."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ValueError(f"{what} must be a number in (0, 1], got {threshold!r}")
    if not 0 < threshold <= 1:
        raise ValueError(f"{what} must be in (0, 1], got {threshold}")
    return float(threshold)


def best_match(
    text: str, candidates: Sequence[str], similarity: Similarity, threshold: float
) -> tuple[int, float] | None:
    """The candidate most similar to ``text`` (earliest on ties) and its similarity, if
    it reaches ``threshold``; an exact duplicate (same text up to case and whitespace)
    always matches, with similarity 1.0."""
    key = text_key(text)
    for i, candidate in enumerate(candidates):
        if text_key(candidate) == key:
            return i, 1.0
    best: tuple[int, float] | None = None
    for i, candidate in enumerate(candidates):
        score = similarity(text, candidate)
        if score >= threshold and (best is None or score > best[1]):
            best = (i, score)
    return best


def near_duplicate_groups(
    texts: Sequence[str], similarity: Similarity, threshold: float
) -> list[list[tuple[int, float]]]:
    """Group ``texts`` into near-duplicates: each group is a list of (index, similarity to
    the group's first text), in input order.

    Leader clustering: a text joins the group whose first text (its leader) it is most
    similar to, if that reaches ``threshold``, else it starts a group.  Comparing with
    leaders only keeps groups from drifting along a chain of small changes.  A text
    equal (up to case and whitespace) to any grouped text joins that text's group.
    Deterministic for a deterministic similarity.
    """
    prepare(similarity, texts)
    groups: list[list[tuple[int, float]]] = []
    group_of_key: dict[str, int] = {}
    for i, text in enumerate(texts):
        key = text_key(text)
        if key in group_of_key:
            groups[group_of_key[key]].append((i, 1.0))
            continue
        leaders = [texts[g[0][0]] for g in groups]
        match = best_match(text, leaders, similarity, threshold)
        if match is None:
            groups.append([(i, 1.0)])
            group_of_key[key] = len(groups) - 1
        else:
            groups[match[0]].append((i, match[1]))
            group_of_key[key] = match[0]
    return groups
