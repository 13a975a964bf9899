"""SGLang ``/generate`` results → OpenAI response bodies and server-sent event chunks.

Usage counts prompt and cached tokens once per prompt (the first of its ``n``
samples) and completion tokens of every sample, as SGLang's own OpenAI server does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from starlette.responses import Response

from ted_sglang.serve.backend import EngineStream
from ted_sglang.serve.errors import ServeError

Kind = Literal["chat", "text"]
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class ResponseHead:
    """What every response of one request carries."""

    id: str
    created: int
    model: str
    fingerprint: str
    kind: Kind
    n: int


class JSONResponse(Response):
    """JSON encoded with orjson (fast; bytes straight to the socket)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def as_list(result: Any) -> list[dict[str, Any]]:
    return result if isinstance(result, list) else [result]


def finish_reason(meta: dict[str, Any]) -> str | None:
    reason = meta.get("finish_reason")
    if reason is None:
        return None
    kind = reason.get("type") if isinstance(reason, dict) else reason
    if kind == "abort":
        message = reason.get("message", "aborted") if isinstance(reason, dict) else "aborted"
        raise ServeError(f"the engine aborted the request: {message}", 500)
    return "length" if kind == "length" else "stop"


def usage(metas: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """OpenAI ``usage`` from the ``meta_info`` of every sample (prompt-major order)."""
    firsts = metas[::n]
    prompt = sum(m.get("prompt_tokens", 0) for m in firsts)
    cached = sum(m.get("cached_tokens", 0) or 0 for m in firsts)
    completion = sum(m.get("completion_tokens", 0) for m in metas)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def completion_body(head: ResponseHead, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole (non-streaming) response."""
    choices = []
    for index, result in enumerate(results):
        reason = finish_reason(result["meta_info"])
        if head.kind == "chat":
            message = {"role": "assistant", "content": result["text"]}
            choices.append(
                {"index": index, "message": message, "logprobs": None, "finish_reason": reason}
            )
        else:
            choices.append(
                {"index": index, "text": result["text"], "logprobs": None, "finish_reason": reason}
            )
    return {
        **_head_fields(head, chunk=False),
        "choices": choices,
        "usage": usage([r["meta_info"] for r in results], head.n),
    }


@dataclass
class _Choice:
    sent: str = ""
    started: bool = False
    finished: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


async def event_stream(
    head: ResponseHead,
    stream: EngineStream,
    num_choices: int,
    include_usage: bool,
    on_done: Any = None,
) -> AsyncIterator[bytes]:
    """OpenAI chunks from the engine's cumulative-text events, then ``[DONE]``.

    An error after the stream began is sent as one ``data: {"error": ...}`` event (the
    shape OpenAI clients raise on).  ``on_done(metas)`` is called when all choices
    finished.  The engine stream is closed in every case (a client that goes away
    aborts the generation).
    """
    choices = [_Choice() for _ in range(num_choices)]
    try:
        async for event in stream.events():
            index = event.get("index", 0)
            if not 0 <= index < num_choices:
                raise ServeError(f"the engine sent a result for choice {index}", 502)
            choice = choices[index]
            text, meta = event.get("text", ""), event.get("meta_info", {})
            choice.meta = meta
            reason = finish_reason(meta)
            delta = ""
            if text.startswith(choice.sent):  # cumulative text; a shrunk one sends nothing
                delta, choice.sent = text[len(choice.sent) :], text
            if not delta and reason is None and choice.started:
                continue
            yield _chunk(head, index, delta, reason, choice)
            choice.started = True
            choice.finished = reason is not None
        if not all(c.finished for c in choices):
            raise ServeError("the engine ended the stream before every choice finished", 502)
        metas = [c.meta for c in choices]
        if on_done is not None:
            on_done(metas)
        if include_usage:
            yield _sse({**_head_fields(head), "choices": [], "usage": usage(metas, head.n)})
    except ServeError as exc:
        yield _sse(exc.body())
    finally:
        await stream.aclose()
    yield DONE


def _chunk(
    head: ResponseHead, index: int, delta: str, reason: str | None, choice: _Choice
) -> bytes:
    if head.kind == "chat":
        body: dict[str, Any] = {"content": delta}
        if not choice.started:
            body = {"role": "assistant", "content": delta}
        item = {"index": index, "delta": body, "logprobs": None, "finish_reason": reason}
    else:
        item = {"index": index, "text": delta, "logprobs": None, "finish_reason": reason}
    return _sse({**_head_fields(head), "choices": [item]})


def _head_fields(head: ResponseHead, chunk: bool = True) -> dict[str, Any]:
    chat_object = "chat.completion.chunk" if chunk else "chat.completion"
    return {
        "id": head.id,
        "object": chat_object if head.kind == "chat" else "text_completion",
        "created": head.created,
        "model": head.model,
        "system_fingerprint": head.fingerprint,
    }


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"
