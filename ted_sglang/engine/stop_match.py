"""``stop_regex`` patterns matched with bounded work: a tail window and a time budget.

A request's patterns run on the scheduler thread after each of its tokens. Python's
``re`` backtracks without limit and holds the GIL while it does, so a pattern such
as ``(a|aa)+!x`` over a run of ``a`` would stall every request and ``/health``.
Here patterns run with the ``regex`` module (``re``'s syntax), which stops a match
at a timeout and releases the GIL while matching, over the output's last tokens
only: as SGLang, as many tokens as the longest pattern can match characters, plus
one (at least :data:`MIN_WINDOW_TOKENS`, at most :data:`MAX_WINDOW_TOKENS`).

A check (all of a request's patterns, after one token) may take
:data:`CHECK_TIMEOUT_S`, and all checks of one request together
:data:`REQUEST_BUDGET_S`; past either, :meth:`StopRegex.search` raises
:class:`StopRegexTimeout` and the scheduler finishes that request (an abort with
status 400). The ``regex`` module checks its clock while it backtracks, so one call
can overrun its timeout by about as much again. Compiling is bounded too: a pattern
whose repeats would expand past :data:`MAX_EXPANSION` items is refused.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from typing import Any

from ted_sglang.engine.errors import RequestError

MIN_WINDOW_TOKENS = 16
MAX_WINDOW_TOKENS = 1024
CHECK_TIMEOUT_S = 0.05
REQUEST_BUDGET_S = 1.0
MAX_EXPANSION = 10_000  # ``regex`` writes ``a{n}`` out n times when it compiles it


class StopRegexTimeout(Exception):
    """A request's ``stop_regex`` patterns used up their time; the message says which."""


@dataclass
class StopRegex:
    """A request's compiled ``stop_regex`` patterns and the matching time one of its
    sequences has used (:meth:`fresh` gives each sequence its own)."""

    patterns: list[tuple[str, Any]]  # (source, regex.Pattern)
    window_tokens: int
    spent_s: float = 0.0

    @classmethod
    def compile(cls, sources: list[str]) -> StopRegex:
        """Compile ``sources``; raises RequestError (400) for a pattern ``regex`` refuses or
        one whose repeat counts multiply past :data:`MAX_EXPANSION`."""
        import regex

        patterns = []
        widest = 0
        for source in sources:
            parsed = _parse(source)
            _check_expansion(source, parsed)
            widest = max(widest, _max_width(parsed))
            try:
                patterns.append((source, regex.compile(source, flags=regex.VERSION0)))
            except (regex.error, ValueError, OverflowError, RecursionError) as exc:
                raise RequestError(f"invalid stop_regex {source!r}: {exc}") from None
        window = min(max(widest + 1, MIN_WINDOW_TOKENS), MAX_WINDOW_TOKENS)
        return cls(patterns, window)

    def fresh(self) -> StopRegex:
        """The same compiled patterns with a time budget of their own (one per sequence)."""
        return replace(self, spent_s=0.0)

    def search(self, text: str) -> str | None:
        """The first pattern found in ``text`` (its source), or None; raises StopRegexTimeout."""
        remaining = REQUEST_BUDGET_S - self.spent_s
        timeout = min(CHECK_TIMEOUT_S, remaining)
        start = time.perf_counter()
        try:
            for source, pattern in self.patterns:
                left = timeout - (time.perf_counter() - start)
                if left <= 0:
                    raise TimeoutError
                if pattern.search(text, timeout=left, concurrent=True) is not None:
                    return source
            return None
        except TimeoutError:
            if remaining <= CHECK_TIMEOUT_S:
                limit = f"all checks of a request may take {REQUEST_BUDGET_S * 1000:.0f} ms"
            else:
                limit = f"one check may take {CHECK_TIMEOUT_S * 1000:.0f} ms"
            raise StopRegexTimeout(
                f"stop_regex took too long to match ({limit}); use a pattern that does "
                "not backtrack, or stop strings"
            ) from None
        finally:
            self.spent_s += time.perf_counter() - start


def _parse(source: str) -> Any:
    """``source`` parsed by ``re``'s own parser; raises RequestError (400)."""
    from re import _parser

    try:
        return _parser.parse(source)
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        raise RequestError(f"invalid stop_regex {source!r}: {exc}") from None


def _max_width(parsed: Any) -> int:
    """The most characters a parsed pattern can match, capped at ``MAX_WINDOW_TOKENS``."""
    try:
        _, high = parsed.getwidth()
    except (re.error, RecursionError, OverflowError, ValueError):
        return MAX_WINDOW_TOKENS
    return min(high, MAX_WINDOW_TOKENS)


def _check_expansion(source: str, parsed: Any) -> None:
    """Refuse a pattern that the ``regex`` module would expand to more than
    :data:`MAX_EXPANSION` items (``a{4294967294}`` would take gigabytes to compile)."""
    if _expanded_size(parsed) > MAX_EXPANSION:
        raise RequestError(
            f"stop_regex {source!r} repeats too much: its repeat counts may multiply to at "
            f"most {MAX_EXPANSION}"
        )


def _expanded_size(sub: Any) -> int:
    """Items of a parsed pattern with every repeat written out (its lower bound when
    unbounded); stops counting once past :data:`MAX_EXPANSION`."""
    from re import _constants as c

    total = 0
    for op, av in sub:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            low, high, inner = av
            count = low if high == c.MAXREPEAT else high
            total += max(count, 1) * _expanded_size(inner)
        elif op is c.SUBPATTERN:
            total += _expanded_size(av[-1])
        elif op is c.BRANCH:
            total += sum(_expanded_size(branch) for branch in av[1])
        elif op in (c.ASSERT, c.ASSERT_NOT):
            total += _expanded_size(av[1])
        elif op is c.ATOMIC_GROUP:
            total += _expanded_size(av)
        elif op is c.GROUPREF_EXISTS:
            total += _expanded_size(av[1]) + (_expanded_size(av[2]) if av[2] else 0)
        else:
            total += 1
        if total > MAX_EXPANSION:
            break
    return total
