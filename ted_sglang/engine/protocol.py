"""SGLang's native ``/generate`` request: parsed, checked, and expanded into items.

Types are checked by SGLang's own JSON contract (``sglang.api.v1.api_types``,
the schema its Python and Rust servers share), so whatever SGLang 0.5.23 accepts
parses here; the value checks and defaults mirror
``sglang/srt/sampling/sampling_params.py`` and ``GenerateReqInput``. A null
field means its default. Fields of features this engine does not have (LoRA,
sessions, embeddings input, ...) are refused when set, never silently ignored.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from ted_sglang.engine.errors import ContractError, RequestError
from ted_sglang.engine.sampling_params import SamplingParams, parse_sampling_params

# Set (non-null, non-false) values of these fields are refused: they would change the result.
_UNSUPPORTED_FIELDS = (
    "input_embeds",
    "video_data",
    "audio_data",
    "lora_path",
    "lora_id",
    "session_params",
    "custom_logit_processor",
    "cache_salt",
    "extra_key",
    "return_routed_experts",
    "return_flat_raw_top_logprobs",
    "return_flat_raw_output_top_logprobs",
    "positional_embed_overrides",
    "mm_hashes",
    "max_thinking_tokens",
    "require_reasoning",
    "return_sampling_mask",
    "kv_hints",
)
MAX_TOKEN_IDS_LOGPROB = 256  # token ids whose logprobs one request may ask for
MAX_TOP_LOGPROBS_NUM = 256  # top tokens reported per position
MAX_GENERATE_ITEMS = 4096  # samples (prompts x n) in one request
_INT64_RANGE = (-(1 << 63), 1 << 63)


@dataclass
class GenerateItem:
    """One prompt to run once (a request with ``n`` samples becomes ``n`` items)."""

    rid: str
    text: str | None
    input_ids: list[int] | None
    image_data: str | None
    sampling: SamplingParams
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    token_ids_logprob: list[int] | None = None
    return_hidden_states: bool = False
    return_prompt_token_ids: bool = False
    priority: int | None = None


@dataclass
class GenerateRequest:
    """A parsed ``/generate`` body: its items and how to shape the answer."""

    items: list[GenerateItem]
    is_single: bool
    stream: bool


def parse_generate(body: Any) -> GenerateRequest:
    """Check a decoded ``/generate`` JSON body and expand it into items; raises RequestError."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    _check_contract(body)
    for name in _UNSUPPORTED_FIELDS:
        if body.get(name):
            raise RequestError(f"{name!r} is not supported by this engine")

    text, input_ids = body.get("text"), body.get("input_ids")
    if text is None and input_ids is None:
        raise RequestError("Either text or input_ids should be provided.")
    if text is not None and input_ids is not None:
        raise RequestError("Only one of text or input_ids can be provided.")
    if text is not None:
        is_single = isinstance(text, str)
        prompts: list[Any] = [text] if is_single else list(text)
    else:
        if len(input_ids) == 0:
            raise RequestError("input_ids cannot be empty.")
        is_single = isinstance(input_ids[0], int)
        prompts = [input_ids] if is_single else list(input_ids)
        if any(len(ids) == 0 for ids in prompts):
            raise RequestError("input_ids cannot be empty.")
        if any(i < 0 for ids in prompts for i in ids):
            raise RequestError("input_ids must be non-negative token ids.")
    if not prompts:
        raise RequestError("the batch of prompts is empty")
    num = len(prompts)

    params = _per_prompt(body.get("sampling_params"), num, "sampling_params", default={})
    parsed: dict[int, SamplingParams] = {}  # a dict that every prompt shares is parsed once
    for p in params:
        if id(p) not in parsed:
            parsed[id(p)] = parse_sampling_params(p)
    samplings = [parsed[id(p)] for p in params]
    n = samplings[0].n
    if any(s.n != n for s in samplings):
        raise RequestError("n must be the same in every sampling_params of a batch")
    if num * n > MAX_GENERATE_ITEMS:
        raise RequestError(
            f"a request may hold at most {MAX_GENERATE_ITEMS} samples (prompts x n), got "
            f"{num} x {n}; send the prompts in several requests"
        )
    images = _images(body.get("image_data"), num, is_single)
    if n > 1:
        for name in ("return_logprob", "logprob_start_len", "top_logprobs_num"):
            if isinstance(body.get(name), list):
                raise RequestError(f"Cannot use list {name} with parallel_sample_num > 1")
    return_logprob = _per_prompt(body.get("return_logprob"), num, "return_logprob", False)
    start_len = _per_prompt(body.get("logprob_start_len"), num, "logprob_start_len", -1)
    top_num = _per_prompt(body.get("top_logprobs_num"), num, "top_logprobs_num", 0)
    text_in_logprobs = bool(body.get("return_text_in_logprobs") or False)
    token_ids = _token_ids_logprob(body.get("token_ids_logprob"), num, n)
    hidden = _per_prompt(body.get("return_hidden_states"), num, "return_hidden_states", False)
    prompt_rids = _rids(body.get("rid"), num, is_single and n == 1)
    priority = _priority(body.get("priority"))
    return_prompt_ids = bool(body.get("return_prompt_token_ids") or False)

    items = []
    for i, prompt in enumerate(prompts):
        if start_len[i] is not None and start_len[i] < -1:
            raise RequestError(f"logprob_start_len must be >= -1, got {start_len[i]}")
        if top_num[i] is not None and top_num[i] < 0:
            raise RequestError(f"top_logprobs_num must be >= 0, got {top_num[i]}")
        if top_num[i] is not None and top_num[i] > MAX_TOP_LOGPROBS_NUM:
            raise RequestError(
                f"top_logprobs_num may be at most {MAX_TOP_LOGPROBS_NUM}, got {top_num[i]}"
            )
        for _ in range(n):
            items.append(
                GenerateItem(
                    # With n > 1, SGLang gives every sample a fresh id (GenerateReqInput
                    # .regenerate_rid); the prompt's own rid only names the group.
                    rid=prompt_rids[i] if n == 1 else uuid.uuid4().hex,
                    text=prompt if text is not None else None,
                    input_ids=list(prompt) if input_ids is not None else None,
                    image_data=images[i],
                    sampling=samplings[i],
                    return_logprob=bool(return_logprob[i]),
                    logprob_start_len=-1 if start_len[i] is None else start_len[i],
                    top_logprobs_num=top_num[i] or 0,
                    return_text_in_logprobs=text_in_logprobs,
                    token_ids_logprob=token_ids[i],
                    return_hidden_states=bool(hidden[i]),
                    return_prompt_token_ids=return_prompt_ids,
                    priority=priority,
                )
            )
    return GenerateRequest(
        items=items, is_single=is_single and n == 1, stream=bool(body.get("stream") or False)
    )


def parse_abort(body: Any) -> tuple[str, bool, str | None]:
    """``(rid, abort_all, abort_message)`` of an ``/abort_request`` body (SGLang's AbortReq)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    rid, abort_all, message = body.get("rid"), body.get("abort_all"), body.get("abort_message")
    if rid is not None and not isinstance(rid, str):
        raise RequestError("rid must be a string")
    if abort_all is not None and not isinstance(abort_all, bool):
        raise RequestError("abort_all must be a boolean")
    if message is not None and not isinstance(message, str):
        raise RequestError("abort_message must be a string")
    return rid or "", bool(abort_all), message or None


def _check_contract(body: dict[str, Any]) -> None:
    from sglang.api.v1.api_types import GenerateRequest as ContractRequest
    from sglang.api.v1.api_types import JsonContractError

    try:
        ContractRequest.from_json_value(body)
    except JsonContractError as exc:
        raise ContractError(str(exc)) from None
    except RecursionError:
        raise ContractError("the request body is nested too deeply") from None
    except OverflowError as exc:  # an integer too large for a float field
        raise ContractError(f"a number in the request is too large: {exc}") from None


def _per_prompt(value: Any, num: int, name: str, default: Any) -> list[Any]:
    if isinstance(value, list):
        if len(value) != num:
            raise RequestError(f"{name} has {len(value)} entries for {num} prompts")
        return [default if v is None else v for v in value]
    return [default if value is None else value] * num


def _images(value: Any, num: int, is_single: bool) -> list[str | None]:
    """One image (or None) per prompt; more than one image for a prompt is refused."""

    def one(entry: Any) -> str | None:
        if isinstance(entry, list):
            entry = [e for e in entry if e is not None]
            if len(entry) > 1:
                raise RequestError("at most one image per request is supported")
            entry = entry[0] if entry else None
        if entry is not None and not isinstance(entry, str):
            raise RequestError("image_data must be a file path, base64 data or a data URI")
        return entry or None

    if value is None:
        return [None] * num
    if is_single:
        return [one(value)]
    if not isinstance(value, list) or len(value) != num:
        raise RequestError(f"image_data must be a list of {num} entries, one per prompt")
    return [one(v) for v in value]


def _rids(value: Any, num: int, is_single: bool) -> list[str]:
    """One rid per prompt, as ``GenerateReqInput._normalize_rid``: a string names a single
    request, or ``{rid}_{i}`` for prompt i of a batch; a list has one per prompt."""
    if value is None:
        return [uuid.uuid4().hex for _ in range(num)]
    if isinstance(value, str):
        return [value] if is_single else [f"{value}_{i}" for i in range(num)]
    if is_single:
        raise RequestError("rid must be a string for a single request")
    if len(value) != num:
        raise RequestError(
            f"The specified rids length mismatch with the batch_size for batch processing "
            f"({len(value)} rids for {num} prompts)."
        )
    if len(set(value)) != len(value):
        raise RequestError("Duplicate request IDs detected within the request")
    return list(value)


def _token_ids_logprob(value: Any, num: int, n: int) -> list[list[int] | None]:
    """Per prompt: the token ids whose logprobs to report at each position, or None."""
    if not value:
        return [None] * num
    if isinstance(value[0], list):
        if n > 1:
            raise RequestError("Cannot use list token_ids_logprob with parallel_sample_num > 1")
        if len(value) != num:
            raise RequestError(f"token_ids_logprob has {len(value)} entries for {num} prompts")
        rows = [row or None for row in value]
    else:
        rows = [list(value)] * num
    for row in rows:
        if row is not None and len(row) > MAX_TOKEN_IDS_LOGPROB:
            raise RequestError(
                f"token_ids_logprob may name at most {MAX_TOKEN_IDS_LOGPROB} token ids, "
                f"got {len(row)}"
            )
        if row is not None and any(t < 0 for t in row):
            raise RequestError("token_ids_logprob must hold non-negative token ids")
    return rows


def _priority(value: Any) -> int | None:
    if value is not None and not _INT64_RANGE[0] <= value < _INT64_RANGE[1]:
        raise RequestError(
            "priority must be a signed 64-bit integer "
            "between -9223372036854775808 and 9223372036854775807"
        )
    return value
