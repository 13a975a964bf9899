"""A request's state from arrival to its last token."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ted_sglang.engine.kv import SequenceKV
    from ted_sglang.engine.prompt import ImageInput
    from ted_sglang.engine.radix_cache import TreeNode
    from ted_sglang.engine.sampling_params import SamplingParams
    from ted_sglang.engine.stop_match import StopRegex


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    DECODE = "decode"
    FINISHED = "finished"


def finish_stop(matched: int | str) -> dict[str, Any]:
    return {"type": "stop", "matched": matched}


def finish_length(length: int) -> dict[str, Any]:
    return {"type": "length", "length": length}


def finish_abort(
    message: str, status_code: int | None = 500, err_type: str | None = "InternalServerError"
) -> dict[str, Any]:
    """SGLang's ``FINISH_ABORT``; a None ``status_code`` (``/abort_request``) still answers 200."""
    return {"type": "abort", "message": message, "status_code": status_code, "err_type": err_type}


@dataclass(eq=False)
class Sequence:
    """Prompt, sampling settings, KV, outputs and logprobs of one generation.

    ``prompt_ids`` are what the model reads; ``cache_key`` is the same length and
    equal to it except over an image, whose tokens are replaced by an id derived
    from the image's bytes (so different images never share cached KV).
    """

    rid: str
    prompt_ids: list[int]
    cache_key: list[int]
    sampling: SamplingParams
    max_new_tokens: int
    stop_ids: frozenset[int]
    image: ImageInput | None = None
    grammar: Any = None  # xgrammar.GrammarMatcher
    stop_regex: StopRegex | None = None
    utf8_pending: bytes = b""  # unfinished UTF-8 sequence at the end of the output (grammar)
    return_logprob: bool = False
    logprob_start_len: int = -1  # resolved: -1 = no input logprobs
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    token_ids_logprob: list[int] | None = None  # ids whose logprobs every position reports
    return_hidden_states: bool = False
    return_prompt_token_ids: bool = False
    priority: int | None = None
    stream: bool = False
    on_update: Callable[[Sequence], None] | None = None
    arrival_time: float = field(default_factory=time.perf_counter)

    status: SeqStatus = SeqStatus.WAITING
    output_ids: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0
    num_computed_tokens: int = 0
    kv: SequenceKV | None = None
    cache_node: TreeNode | None = None
    finish_reason: dict[str, Any] | None = None
    finish_time: float | None = None
    input_token_logprobs: list[tuple[float | None, int]] = field(default_factory=list)
    input_top_logprobs: list[list[tuple[float, int]] | None] = field(default_factory=list)
    output_token_logprobs: list[tuple[float, int]] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
    input_token_ids_logprobs: list[list[tuple[float, int]] | None] = field(default_factory=list)
    output_token_ids_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
    # SGLang's layout: the last prefill chunk's rows (one list of rows), then one row per
    # decode step (the sampled last token is never run through the model).
    hidden_states: list[Any] = field(default_factory=list)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is SeqStatus.FINISHED

    @property
    def wants_input_logprobs(self) -> bool:
        return self.return_logprob and 0 <= self.logprob_start_len < self.prompt_len

    @property
    def max_prefix_len(self) -> int:
        """How much of the prompt may come from the cache: all but the last token, and
        nothing past ``logprob_start_len`` when prompt logprobs are asked for (as SGLang)."""
        limit = self.prompt_len - 1
        if self.wants_input_logprobs:
            limit = min(limit, self.logprob_start_len)
        return limit

    def clip_to_image(self, length: int) -> int:
        """Largest length <= ``length`` that does not end inside the image span."""
        if self.image is not None and self.image.start < length < self.image.end:
            return self.image.start
        return length

    def kv_key(self) -> list[int]:
        """Cache key of every token whose KV this request holds (prompt, then outputs)."""
        assert self.kv is not None
        n = self.kv.length
        if n <= self.prompt_len:
            return self.cache_key[:n]
        return self.cache_key + self.output_ids[: n - self.prompt_len]

    def finish(self, reason: dict[str, Any]) -> None:
        self.finish_reason = reason
        self.finish_time = time.perf_counter()
        self.status = SeqStatus.FINISHED
