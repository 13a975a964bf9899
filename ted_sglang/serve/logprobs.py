"""SGLang's ``[logprob, token_id, text]`` triples → OpenAI's ``logprobs`` shapes.

Chat: ``{"content": [{"token", "bytes", "logprob", "top_logprobs": [{"token", "bytes",
"logprob"}]}], "refusal": null}``.  Text completions: ``{"tokens", "token_logprobs",
"top_logprobs": [{token: logprob}], "text_offset"}`` (offsets count characters from the
start of the choice's text).  ``bytes`` are the UTF-8 bytes of the token's text as the
engine decodes it alone; a token that holds part of a character decodes to U+FFFD.
"""

from __future__ import annotations

import math
from typing import Any

# OpenAI's value for a token too unlikely to score (also for -inf and NaN).
FLOOR = -9999.0


def request_fields(top_logprobs: int) -> dict[str, Any]:
    """The ``/generate`` fields that ask for output logprobs with text."""
    return {
        "return_logprob": True,
        "top_logprobs_num": top_logprobs,
        "return_text_in_logprobs": True,
        "logprob_start_len": -1,
    }


def new_entries(meta: dict[str, Any], sent: int) -> tuple[list[Any], list[Any] | None]:
    """The output logprobs of ``meta`` after the first ``sent`` (and their top rows).

    An engine streams them cumulatively (SGLang's default) or only the new ones
    (``--incremental-streaming-output``): a list as long as ``completion_tokens`` is
    cumulative."""
    tokens = meta.get("output_token_logprobs") or []
    tops = meta.get("output_top_logprobs")
    if len(tokens) == meta.get("completion_tokens") and sent <= len(tokens):
        return tokens[sent:], None if tops is None else tops[sent:]
    return tokens, tops


def chat_logprobs(tokens: list[Any], tops: list[Any] | None) -> dict[str, Any]:
    content = []
    for i, entry in enumerate(tokens):
        item = _chat_item(entry)
        item["top_logprobs"] = [_chat_item(t) for t in _row(tops, i)]
        content.append(item)
    return {"content": content, "refusal": None}


def completion_logprobs(
    tokens: list[Any], tops: list[Any] | None, offset: int, top_k: int
) -> tuple[dict[str, Any], int]:
    """The logprobs object and the offset after its last token."""
    texts, offsets = [], []
    for entry in tokens:
        offsets.append(offset)
        text = _text(entry)
        texts.append(text)
        offset += len(text)
    top = None
    if top_k > 0:
        top = [{_text(t): _value(t) for t in _row(tops, i)} for i in range(len(tokens))]
    body = {
        "tokens": texts,
        "token_logprobs": [_value(e) for e in tokens],
        "top_logprobs": top,
        "text_offset": offsets,
    }
    return body, offset


def _chat_item(entry: Any) -> dict[str, Any]:
    text = _text(entry)
    return {"token": text, "bytes": list(text.encode("utf-8")), "logprob": _value(entry)}


def _row(tops: list[Any] | None, i: int) -> list[Any]:
    if tops is None or i >= len(tops) or not isinstance(tops[i], list):
        return []
    return tops[i]


def _text(entry: Any) -> str:
    text = entry[2] if isinstance(entry, list | tuple) and len(entry) > 2 else None
    return text if isinstance(text, str) else ""


def _value(entry: Any) -> float:
    value = entry[0] if isinstance(entry, list | tuple) and entry else None
    if not isinstance(value, int | float) or math.isnan(value):
        return FLOOR
    return max(float(value), FLOOR)
