"""SGLang's OpenAI routes on the engine's own port (``/v1/chat/completions``,
``/v1/completions``, ``/v1/models``, ``/v1/models/{id}``), without a bank.

They are serve's OpenAI layer (:mod:`ted_sglang.serve.openai_routes`) over this
engine's ``/generate`` handler, called in process: one implementation, two mounts.  As
SGLang's server, any model name is accepted and ``max_tokens`` beyond the context is a
400 unless the engine runs with ``--allow-auto-truncate``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from ted_sglang.serve.backend import error_from_body, parse_event
from ted_sglang.serve.errors import ServeError
from ted_sglang.serve.openai_routes import (
    OpenAIOptions,
    OpenAIService,
    ServedModel,
    openai_router,
)

if TYPE_CHECKING:
    from ted_sglang.engine.config import EngineConfig

RunGenerate = Callable[[Any, "Request | None"], Awaitable[Response]]


def add_openai_routes(
    app: FastAPI,
    config: EngineConfig,
    run_generate: RunGenerate,
    model_info: Callable[[], Awaitable[dict[str, Any]]],
) -> None:
    """Mount the OpenAI routes on ``app`` under ``/v1``; ``run_generate(body, request)``
    answers a decoded ``/generate`` body, ``model_info()`` is ``/model_info``'s body."""

    async def setup() -> ServedModel:
        from ted_sglang.runtime import pick_chat_template
        from ted_sglang.serve.chat_format import ChatFormat

        info = await model_info()
        template = await asyncio.to_thread(pick_chat_template, info, None)
        return ServedModel(
            generator=LocalGenerator(run_generate),
            chat=ChatFormat(template),
            name=info.get("served_model_name") or info["model_path"],
            root=info["model_path"],
            context_length=info.get("context_length"),
            created=int(time.time()),
        )

    options = OpenAIOptions(
        accept_any_model=True,
        allow_auto_truncate=config.allow_auto_truncate,
        max_body_bytes=config.max_request_bytes,
    )
    app.include_router(openai_router(OpenAIService(options, setup=setup)), prefix="/v1")


class LocalGenerator:
    """``/generate`` answered by the engine's handler in this process (no HTTP hop)."""

    def __init__(self, run_generate: RunGenerate) -> None:
        self.run_generate = run_generate

    async def generate(self, body: dict[str, Any], client: Request | None = None) -> Any:
        response = await self.run_generate(body, client)
        data = _decoded(response)
        if response.status_code != 200:
            raise error_from_body(None, response.status_code, data)
        return data

    async def stream(self, body: dict[str, Any], client: Request | None = None) -> LocalStream:
        response = await self.run_generate({**body, "stream": True}, client)
        if not isinstance(response, StreamingResponse):
            raise error_from_body(None, response.status_code, _decoded(response))
        return LocalStream(response.body_iterator)


class LocalStream:
    """The events of the engine's own server-sent stream; closing it closes the engine's
    generator, which aborts what did not finish."""

    def __init__(self, chunks: AsyncIterator[Any]) -> None:
        self.chunks = chunks

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        buffer = b""
        async for chunk in self.chunks:
            buffer += chunk if isinstance(chunk, bytes) else str(chunk).encode()
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if not line.startswith(b"data:"):
                    continue
                event = parse_event(line[5:])
                if event is None:
                    return
                yield event

    async def aclose(self) -> None:
        close = getattr(self.chunks, "aclose", None)
        if close is not None:
            await close()


def _decoded(response: Response) -> Any:
    if not response.body:
        raise ServeError("the client went away", 499)
    try:
        return orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return response.body.decode("utf-8", "replace")[:500]
