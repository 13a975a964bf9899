"""SGLang ``/generate`` results → OpenAI response bodies and server-sent event chunks.

Usage counts prompt and cached tokens once per prompt (the first of its ``n``
samples) and completion tokens of every sample, as SGLang's own OpenAI server does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson
from starlette.responses import Response

from ted_sglang.serve.errors import ServeError
from ted_sglang.serve.logprobs import chat_logprobs, completion_logprobs, new_entries

Kind = Literal["chat", "text"]
DONE = b"data: [DONE]\n\n"


class EventStream(Protocol):
    """An engine's ``/generate`` event stream (decoded ``data:`` events)."""

    def events(self) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class ResponseHead:
    """What every response of one request carries.  ``logprobs``: None when the client
    did not ask for them, else the number of top logprobs per token."""

    id: str
    created: int
    model: str
    fingerprint: str | None
    kind: Kind
    n: int
    logprobs: int | None = None


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
        detail = reason if isinstance(reason, dict) else {}
        raise ServeError(
            f"the engine aborted the request: {detail.get('message', 'aborted')}",
            _abort_status(detail.get("status_code")),
        )
    return "length" if kind == "length" else "stop"


def _abort_status(engine_status: Any) -> int:
    """The status for an abort the engine reports: its own (400: the request asked for
    too much work; 503: aborted by an operator), 503 when it gives none (`/abort_request`),
    502 for the engine's internal failures."""
    if engine_status is None:
        return 503
    if isinstance(engine_status, int) and 400 <= engine_status < 600 and engine_status != 500:
        return engine_status
    return 502


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
        meta = result["meta_info"]
        reason = finish_reason(meta)
        logprobs = _logprobs(head, meta, _Choice())
        if head.kind == "chat":
            message = {"role": "assistant", "content": result["text"]}
            choices.append(
                {"index": index, "message": message, "logprobs": logprobs, "finish_reason": reason}
            )
        else:
            choices.append(
                {"index": index, "text": result["text"], "logprobs": logprobs,
                 "finish_reason": reason}
            )  # fmt: skip
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
    logprobs_sent: int = 0
    text_offset: int = 0


def _logprobs(head: ResponseHead, meta: dict[str, Any], choice: _Choice) -> Any:
    """The choice's logprobs after those sent already (None when not asked for)."""
    if head.logprobs is None:
        return None
    tokens, tops = new_entries(meta, choice.logprobs_sent)
    choice.logprobs_sent += len(tokens)
    if head.kind == "chat":
        return chat_logprobs(tokens, tops)
    body, choice.text_offset = completion_logprobs(tokens, tops, choice.text_offset, head.logprobs)
    return body


async def event_stream(
    head: ResponseHead,
    stream: EventStream,
    num_choices: int,
    include_usage: bool,
    on_done: Any = None,
) -> AsyncIterator[bytes]:
    """OpenAI chunks from the engine's events, then ``[DONE]``.  Events carry the text
    so far (SGLang's default) or only its new part (``--incremental-streaming-output``:
    fewer ``output_ids`` than ``completion_tokens``); either works.

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
            ids = event.get("output_ids")
            if isinstance(ids, list) and len(ids) < (meta.get("completion_tokens") or 0):
                delta, choice.sent = text, choice.sent + text  # incremental streaming output
            elif text.startswith(choice.sent):  # cumulative text; a shrunk one sends nothing
                delta, choice.sent = text[len(choice.sent) :], text
            logprobs = _logprobs(head, meta, choice)
            fresh = logprobs is not None and bool(logprobs.get("content", logprobs.get("tokens")))
            if not delta and reason is None and choice.started and not fresh:
                continue
            yield _chunk(head, index, delta, reason, choice, logprobs)
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
    head: ResponseHead,
    index: int,
    delta: str,
    reason: str | None,
    choice: _Choice,
    logprobs: Any,
) -> bytes:
    if head.kind == "chat":
        body: dict[str, Any] = {"content": delta}
        if not choice.started:
            body = {"role": "assistant", "content": delta}
        item = {"index": index, "delta": body, "logprobs": logprobs, "finish_reason": reason}
    else:
        item = {"index": index, "text": delta, "logprobs": logprobs, "finish_reason": reason}
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
