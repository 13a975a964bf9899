"""OpenAI request parameters → SGLang ``sampling_params`` (native ``/generate`` API)."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from ted_sglang.serve.errors import ServeError
from ted_sglang.serve.openai_protocol import (
    INT32_MAX,
    MAX_PROMPTS,
    MAX_STOP,
    MAX_STOP_CHARS,
    ChatCompletionRequest,
    CompletionRequest,
    ResponseFormat,
)

# What ``{"type": "json_object"}`` constrains to (as SGLang's own OpenAI server does).
JSON_OBJECT_SCHEMA = json.dumps({"type": "object"})
_TOKEN_ID = re.compile(r"[0-9]{1,10}")


def sampling_params(
    req: ChatCompletionRequest | CompletionRequest, template_stops: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The ``sampling_params`` of ``req``; unset fields are left to the server's defaults.

    ``template_stops``: the chat template's stop strings, added as SGLang's frontend adds
    them.  Raises :class:`ServeError` (400) for what cannot be served.
    """
    stop = _stops(req.stop, MAX_STOP - len(template_stops))
    stop += [s for s in template_stops if s not in stop]
    max_tokens = req.max_tokens
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        max_tokens = req.max_completion_tokens
    params: dict[str, Any] = {
        "max_new_tokens": max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "n": req.n,
        "stop": stop or None,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "sampling_seed": req.seed,
        "top_k": req.top_k,
        "min_p": req.min_p,
        "repetition_penalty": req.repetition_penalty,
        "min_new_tokens": req.min_tokens,
        "ignore_eos": req.ignore_eos,
        "skip_special_tokens": req.skip_special_tokens,
        "stop_token_ids": req.stop_token_ids,
        "regex": req.regex,
    }
    if req.logit_bias:
        params["logit_bias"] = _logit_bias(req.logit_bias)
    if isinstance(req, ChatCompletionRequest) and req.response_format is not None:
        schema = json_schema_text(req.response_format)
        if schema is not None:
            if req.regex is not None:
                raise ServeError("use either response_format or regex, not both", param="regex")
            params["json_schema"] = schema
    return {k: v for k, v in params.items() if v is not None}


def check_chat(req: ChatCompletionRequest) -> None:
    """Refuse chat features this server does not have, saying so."""
    if req.tools or req.functions:
        raise ServeError("tools and functions are not supported by this server", param="tools")
    if req.top_logprobs is not None and not req.logprobs:
        raise ServeError("top_logprobs needs logprobs: true", param="top_logprobs")


def check_completion(req: CompletionRequest) -> None:
    if req.echo:
        raise ServeError("echo is not supported by this server", param="echo")
    if req.suffix:
        raise ServeError("suffix is not supported by this server", param="suffix")
    if req.best_of not in (None, 1, req.n):
        raise ServeError("best_of is not supported by this server", param="best_of")
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not prompts:
        raise ServeError("prompt must be a string or a non-empty list of strings", param="prompt")
    if len(prompts) > MAX_PROMPTS:
        raise ServeError(f"at most {MAX_PROMPTS} prompts per request", param="prompt")


def json_schema_text(fmt: ResponseFormat) -> str | None:
    """The JSON Schema text a response format constrains to (None for ``text``)."""
    if fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return JSON_OBJECT_SCHEMA
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise ServeError(
            'response_format {"type": "json_schema"} needs json_schema.schema',
            param="response_format.json_schema.schema",
        )
    try:
        return orjson.dumps(fmt.json_schema.schema_).decode()
    except orjson.JSONEncodeError as exc:  # nested past orjson's depth limit
        raise ServeError(
            f"the schema cannot be used: {exc}", param="response_format.json_schema.schema"
        ) from None


def _stops(stop: str | list[str] | None, limit: int) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > limit:
        raise ServeError(f"at most {limit} stop strings are allowed", param="stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ServeError(f"stop strings may have {MAX_STOP_CHARS} characters at most", param="stop")
    return [s for s in stops if s]


def _logit_bias(bias: dict[str, float]) -> dict[str, float]:
    for key, value in bias.items():
        if not _TOKEN_ID.fullmatch(key) or int(key) > INT32_MAX:
            raise ServeError(f"logit_bias keys must be token ids, got {key!r}", param="logit_bias")
        if not -100.0 <= value <= 100.0:
            raise ServeError("logit_bias values must be in [-100, 100]", param="logit_bias")
    return bias
