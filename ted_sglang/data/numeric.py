"""Numbers as they appear in answers: parsing, finding and comparing.

Understands integers, decimals, thousand separators (``1,000``), fractions
(``3/4``, ``\\frac{3}{4}``, mixed ``1\\frac{1}{2}``), percents, scientific
notation (``1.2e-3``, ``1.2 \\times 10^{-3}``), a unicode minus, degree signs
and trailing units (``12 cm``, ``45°``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_UNSIGNED = (
    r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?"  # 12, 1,000, 3.5, 1e-3
    r"|\.\d+(?:[eE][-+]?\d+)?"  # .5
)
_SIGNED = rf"[-+]?(?:{_UNSIGNED})"
# A number, optionally a fraction a/b, optionally a percent; not glued to letters or digits.
_NUMBER_RE = re.compile(
    rf"(?<![\w.])(?P<num>{_SIGNED})(?:\s*/\s*(?P<den>{_UNSIGNED}))?(?P<pct>\s*%)?(?![\d])"
)
_UNIT = r"[A-Za-z]+(?:\s*\^?\s*\{?[23]\}?|[²³])?(?:\s*(?:/|per\s)\s*[A-Za-z]+)?"
_FULL_RE = re.compile(rf"(?P<number>{_NUMBER_RE.pattern})(?:\s*(?:{_UNIT})(?:\s+{_UNIT})?)?")


@dataclass(frozen=True)
class Number:
    """A parsed number; ``decimals`` counts the digits after the point as written."""

    value: float
    is_percent: bool = False
    decimals: int = 0


def clean_math(text: str) -> str:
    """Rewrite LaTeX and unicode notation of numbers into plain ASCII text."""
    s = text.replace("−", "-").replace("×", r"\times ").replace("·", r"\cdot ")
    s = s.replace("$", "").replace(r"\%", "%").replace(r"\!", "").replace(r"\,", "")
    s = s.replace(r"\left", "").replace(r"\right", "").replace("\\ ", " ").replace("~", " ")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree", "", s)
    s = re.sub(  # 1.2 \times 10^{-3} -> 1.2e-3
        r"(\d(?:\.\d+)?)\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{?\s*([-+]?\d+)\s*\}?",
        r"\1e\2",
        s,
    )
    s = re.sub(  # mixed number: 1\frac{1}{2} -> 3/2
        r"(\d+)\s*\\frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}",
        lambda m: _mixed(int(m.group(1)), int(m.group(2)), int(m.group(3))),
        s,
    )
    s = re.sub(r"\\frac\s*\{\s*([-+]?[\d.]+)\s*\}\s*\{\s*([\d.]+)\s*\}", r"\1/\2", s)
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\1/\2", s)  # \frac34
    return s


def _mixed(whole: int, num: int, den: int) -> str:
    if den == 0:
        return f"{whole} {num}/{den}"
    return f"{whole * den + num}/{den}"


def _to_number(match: re.Match[str]) -> Number | None:
    num = match.group("num").replace(",", "")
    den = match.group("den")
    is_percent = match.group("pct") is not None
    try:
        value = float(num)
        if den is not None:
            denominator = float(den.replace(",", ""))
            if denominator == 0:
                return None
            value /= denominator
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    decimals = 0
    if den is None and "." in num and "e" not in num.lower():
        decimals = len(num.split(".", 1)[1])
    return Number(value, is_percent, decimals)


def parse_number(text: str) -> Number | None:
    """Parse ``text`` as one number (with an optional unit), or return None.

    >>> parse_number("12 cm").value, parse_number(r"\\frac{3}{4}").value
    (12.0, 0.75)
    """
    s = clean_math(text).strip().rstrip(".").strip()
    while len(s) >= 2 and s[0] + s[-1] in ("()", "[]", "{}"):
        s = s[1:-1].strip()
    match = _FULL_RE.fullmatch(s)
    if match is None:
        return None
    inner = _NUMBER_RE.fullmatch(match.group("number"))
    assert inner is not None
    return _to_number(inner)


def find_numbers(text: str) -> list[Number]:
    """All numbers in ``text``, in order of appearance."""
    numbers = []
    for match in _NUMBER_RE.finditer(clean_math(text)):
        number = _to_number(match)
        if number is not None:
            numbers.append(number)
    return numbers


def numbers_match(
    predicted: Number, expected: Number, rel_tol: float = 1e-4, abs_tol: float = 1e-6
) -> bool:
    """Whether ``predicted`` equals ``expected`` within tolerance.

    A prediction also matches when rounded to the decimals the expected answer
    is written with (``1/3`` matches ``0.33``), and a percent matches its
    fraction (``50%`` matches ``0.5`` and ``50``).
    """
    values = [predicted.value]
    if predicted.is_percent and not expected.is_percent:
        values.append(predicted.value / 100)
    elif expected.is_percent and not predicted.is_percent:
        values.append(predicted.value * 100)
    for value in values:
        if math.isclose(value, expected.value, rel_tol=rel_tol, abs_tol=abs_tol):
            return True
        if expected.decimals > 0 and round(value, expected.decimals) == round(
            expected.value, expected.decimals
        ):
            return True
    return False


def format_number(number: Number) -> str:
    """A canonical text form: ``12``, ``0.75``, ``50%``."""
    value = number.value
    text = str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return text + ("%" if number.is_percent else "")
