"""A request's ``sampling_params``: SGLang's defaults and checks
(``sglang/srt/sampling/sampling_params.py``), with this engine's bounds on stop
strings and patterns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ted_sglang.engine.errors import RequestError
from ted_sglang.engine.stop_match import StopRegex

TOP_K_ALL = 1 << 30
MAX_STOP_COUNT = 32
MAX_STOP_REGEX_COUNT = 32
MAX_STOP_REGEX_LEN = 256  # bytes
MAX_N = 64
_SAMPLING_EPS = 1e-6
# custom_params is accepted: it only feeds a custom logit processor, which is refused.
_UNSUPPORTED_SAMPLING = ("beam_width", "watermark", "choice")


@dataclass
class SamplingParams:
    """Sampling settings of one request, with SGLang's defaults (greedy is ``top_k == 1``)."""

    max_new_tokens: int = 128
    explicit_max_new_tokens: bool = False  # set by the client (SGLang checks only then)
    min_new_tokens: int = 0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    stop_token_ids: set[int] = field(default_factory=set)
    stop_regex: list[str] = field(default_factory=list)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = TOP_K_ALL
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    regex: str | None = None
    json_schema: str | None = None
    ebnf: str | None = None
    structural_tag: str | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    sampling_seed: int | None = None
    stream_interval: int | None = None  # None or 0: the server's --stream-interval (as SGLang)
    custom_params: Any = None

    @property
    def is_greedy(self) -> bool:
        return self.top_k == 1

    @property
    def grammar_key(self) -> tuple[str, str] | None:
        """``(kind, text)`` of the constraint, or None."""
        for kind in ("json_schema", "regex", "ebnf", "structural_tag"):
            value = getattr(self, kind)
            if value is not None:
                return kind, value
        return None

    @cached_property
    def stop_matcher(self) -> StopRegex | None:
        """``stop_regex`` compiled once for every sample that shares these settings (each
        sequence matches with its own :meth:`StopRegex.fresh` copy); raises RequestError."""
        return StopRegex.compile(self.stop_regex) if self.stop_regex else None

    @property
    def has_penalties(self) -> bool:
        return (
            self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
            or self.repetition_penalty != 1.0
        )


def parse_sampling_params(raw: dict[str, Any]) -> SamplingParams:
    """SGLang's ``SamplingParams.__post_init__`` + ``verify`` on a (contract-checked) dict."""
    for name in _UNSUPPORTED_SAMPLING:
        if raw.get(name):
            raise RequestError(f"sampling_params.{name} is not supported by this engine")

    def get(name: str, default: Any) -> Any:
        value = raw.get(name)
        return default if value is None else value

    sp = SamplingParams(
        max_new_tokens=get("max_new_tokens", 128),
        explicit_max_new_tokens=raw.get("max_new_tokens") is not None,
        min_new_tokens=get("min_new_tokens", 0),
        n=get("n", 1),
        stop=_str_list(raw.get("stop")),
        stop_token_ids={int(t) for t in (raw.get("stop_token_ids") or ()) if t is not None},
        stop_regex=_str_list(raw.get("stop_regex")),
        temperature=float(get("temperature", 1.0)),
        top_p=float(get("top_p", 1.0)),
        top_k=get("top_k", -1),
        min_p=float(get("min_p", 0.0)),
        frequency_penalty=float(get("frequency_penalty", 0.0)),
        presence_penalty=float(get("presence_penalty", 0.0)),
        repetition_penalty=float(get("repetition_penalty", 1.0)),
        ignore_eos=bool(get("ignore_eos", False)),
        skip_special_tokens=bool(get("skip_special_tokens", True)),
        spaces_between_special_tokens=bool(get("spaces_between_special_tokens", True)),
        no_stop_trim=bool(get("no_stop_trim", False)),
        regex=raw.get("regex") or None,
        json_schema=raw.get("json_schema") or None,
        ebnf=raw.get("ebnf") or None,
        structural_tag=raw.get("structural_tag") or None,
        logit_bias=_logit_bias(raw.get("logit_bias")),
        sampling_seed=raw.get("sampling_seed"),
        stream_interval=raw.get("stream_interval"),
        custom_params=raw.get("custom_params"),
    )
    if not math.isfinite(sp.temperature) or sp.temperature < 0.0:
        raise RequestError(
            f"temperature must be a non-negative finite number, got {sp.temperature}."
        )
    if sp.temperature < _SAMPLING_EPS:
        sp.temperature, sp.top_k = 1.0, 1
    if sp.top_k == -1:
        sp.top_k = TOP_K_ALL
    if not 0.0 < sp.top_p <= 1.0:
        raise RequestError(f"top_p must be in (0, 1], got {sp.top_p}.")
    if not 0.0 <= sp.min_p <= 1.0:
        raise RequestError(f"min_p must be in [0, 1], got {sp.min_p}.")
    if sp.top_k < 1:
        raise RequestError(f"top_k must be -1 (disable) or at least 1, got {sp.top_k}.")
    for name in ("frequency_penalty", "presence_penalty"):
        if not -2.0 <= getattr(sp, name) <= 2.0:
            raise RequestError(f"{name} must be in [-2, 2], got {getattr(sp, name)}.")
    if not 0.0 < sp.repetition_penalty <= 2.0:
        raise RequestError(
            f"repetition_penalty must be in (0, 2] (1.0 = no penalty), got {sp.repetition_penalty}."
        )
    if sp.max_new_tokens < 0:
        raise RequestError(f"max_new_tokens must be at least 0, got {sp.max_new_tokens}.")
    if not 0 <= sp.min_new_tokens <= sp.max_new_tokens:
        raise RequestError(
            f"min_new_tokens must be in [0, max_new_tokens({sp.max_new_tokens})], "
            f"got {sp.min_new_tokens}."
        )
    if not 1 <= sp.n <= MAX_N:
        raise RequestError(f"n must be in [1, {MAX_N}], got {sp.n}.")
    if len(sp.stop) > MAX_STOP_COUNT:
        raise RequestError(f"at most {MAX_STOP_COUNT} stop strings are allowed, got {len(sp.stop)}")
    if sum(x is not None for x in (sp.json_schema, sp.regex, sp.ebnf, sp.structural_tag)) > 1:
        raise RequestError("Only one of json_schema, regex, ebnf, or structural_tag can be set.")
    _check_stop_regex(sp.stop_regex)
    return sp


def _check_stop_regex(patterns: list[str]) -> None:
    """SGLang's bounds on ``stop_regex`` (count, bytes each), and ``re``'s syntax."""
    import re

    if len(patterns) > MAX_STOP_REGEX_COUNT:
        raise RequestError(
            f"at most {MAX_STOP_REGEX_COUNT} stop_regex patterns are allowed, got {len(patterns)}"
        )
    for pattern in patterns:
        num_bytes = len(pattern.encode("utf-8", "surrogatepass"))
        if num_bytes > MAX_STOP_REGEX_LEN:
            raise RequestError(
                f"stop_regex is {num_bytes} bytes, over the {MAX_STOP_REGEX_LEN}-byte limit"
            )
        try:
            re.compile(pattern)
        except (re.error, OverflowError, RecursionError) as exc:
            raise RequestError(f"invalid stop_regex {pattern!r}: {exc}") from None


def _str_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [s for s in value if s]


def _logit_bias(value: Any) -> dict[int, float]:
    if not value:
        return {}
    try:
        bias = {int(k): float(v) for k, v in value.items()}
    except (ValueError, OverflowError, TypeError):
        raise RequestError("logit_bias must map token ids to finite numbers") from None
    if not all(math.isfinite(v) for v in bias.values()):
        raise RequestError("logit_bias values must be finite numbers (no NaN or infinity)")
    return bias
