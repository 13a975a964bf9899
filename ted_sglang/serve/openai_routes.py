"""OpenAI's API, one implementation with two mounts: ``serve`` (the bank as the system
prefix) and the reference engine's own port (no bank, as SGLang's server has them).

:func:`openai_router` gives ``POST /chat/completions``, ``POST /completions``,
``GET /models`` and ``GET /models/{id}`` (include it with ``prefix="/v1"``).  Each route
authenticates first, then reads, parses and validates its body (see
:mod:`ted_sglang.serve.http_edge`), and answers every failure itself in OpenAI's error
shape, so it behaves the same on any app; an unexpected error is logged and answered 500
without closing the connection.

Model names: a request naming another model than the one served gets 404
``model_not_found`` unless ``accept_any_model`` (SGLang's own server accepts any name).
``max_tokens`` beyond the context: 400 as SGLang does, unless ``allow_auto_truncate``,
which fits it to the room the prompt leaves (counted by the engine when it matters).

A client that disconnects while its engine request runs (or waits for its first event)
has that request cancelled: closing it makes the engine abort it and free its KV.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ted_sglang.engine.client_watch import ClientGone, until_disconnect
from ted_sglang.serve.errors import ServeError, error_body
from ted_sglang.serve.http_edge import DEFAULT_MAX_BODY_BYTES, read_json, require_key, validate
from ted_sglang.serve.logprobs import request_fields
from ted_sglang.serve.openai_protocol import ChatCompletionRequest, CompletionRequest
from ted_sglang.serve.responses import (
    EventStream,
    JSONResponse,
    Kind,
    ResponseHead,
    as_list,
    completion_body,
    event_stream,
)
from ted_sglang.serve.sampling import check_chat, check_completion, sampling_params

if TYPE_CHECKING:
    from ted_sglang.serve.bank_state import BankVersion
    from ted_sglang.serve.chat_format import ChatFormat

logger = logging.getLogger("ted_sglang.serve")
T = TypeVar("T")


class Generator(Protocol):
    """Where requests go: SGLang's native ``/generate``, over HTTP or in process
    (``client``: the caller's request, so an engine in process can see it leave)."""

    async def generate(self, body: dict[str, Any], client: Request | None = None) -> Any: ...

    async def stream(self, body: dict[str, Any], client: Request | None = None) -> EventStream: ...


@dataclass
class OpenAIOptions:
    """``api_keys``: any of them authenticates (none: open); ``echo_prompt`` adds the
    prompt sent to the engine to each non-streaming response (debugging)."""

    api_keys: tuple[str, ...] = ()
    accept_any_model: bool = False
    allow_auto_truncate: bool = False
    echo_prompt: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


@dataclass
class ServedModel:
    """The model behind the routes: where to send requests and how to format chats."""

    generator: Generator
    chat: ChatFormat
    name: str
    root: str | None
    context_length: int | None
    created: int


Served = Callable[[str, "BankVersion | None", list[dict[str, Any]], int], None]


class OpenAIService:
    """What the routes serve.  ``model`` is set by the mount, or made by ``setup`` on the
    first request; ``bank`` gives the bank version a request starts with (None: the
    routes serve without a bank); ``on_served(id, bank, metas, n)`` sees each result."""

    def __init__(
        self,
        options: OpenAIOptions,
        *,
        setup: Callable[[], Awaitable[ServedModel]] | None = None,
        bank: Callable[[], BankVersion] | None = None,
        on_served: Served | None = None,
    ) -> None:
        self.options = options
        self.model: ServedModel | None = None
        self.bank = bank
        self.on_served = on_served
        self._setup = setup
        self._lock = asyncio.Lock()

    async def ready(self) -> ServedModel:
        if self.model is None:
            async with self._lock:
                if self.model is None:
                    if self._setup is None:
                        raise ServeError("the server is still starting", 503)
                    self.model = await self._setup()
        return self.model

    def check_model(self, name: str | None) -> None:
        assert self.model is not None
        if name is None or name == self.model.name or self.options.accept_any_model:
            return
        raise model_not_found(name)

    def bank_for(self, use_bank: bool) -> BankVersion | None:
        return self.bank() if self.bank is not None and use_bank else None

    def head(
        self, kind: Kind, bank: BankVersion | None, n: int, logprobs: int | None
    ) -> ResponseHead:
        assert self.model is not None
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        fingerprint = None
        if self.bank is not None:
            fingerprint = f"ted-bank-v{bank.version}" if bank is not None else "ted-no-bank"
        return ResponseHead(rid, int(time.time()), self.model.name, fingerprint, kind, n, logprobs)

    def model_card(self) -> dict[str, Any]:
        assert self.model is not None
        return {
            "id": self.model.name,
            "object": "model",
            "created": self.model.created,
            "owned_by": "ted-sglang",
            "root": self.model.root,
            "max_model_len": self.model.context_length,
        }


def model_not_found(name: str) -> ServeError:
    return ServeError(
        f"The model {name[:200]!r} does not exist",
        404,
        param="model",
        code="model_not_found",
        err_type="invalid_request_error",
    )


def openai_router(service: OpenAIService) -> APIRouter:
    """The routes over ``service``; mount with ``app.include_router(r, prefix="/v1")``."""
    router = APIRouter()
    options = service.options

    async def answer(
        request: Request,
        handle: Callable[[Any, Request], Awaitable[Response]],
        has_body: bool = True,
    ) -> Response:
        try:
            require_key(request, options.api_keys, "API key")
            await service.ready()
            data = await read_json(request, options.max_body_bytes) if has_body else None
            return await handle(data, request)
        except ServeError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        except Exception as exc:  # answered here, so the connection stays usable
            logger.exception("unhandled error on %s", request.url.path)
            return JSONResponse(error_body(f"internal error: {exc!r}", 500), status_code=500)

    async def chat(data: Any, client: Request) -> Response:
        req = validate(ChatCompletionRequest, data)
        model = service.model
        assert model is not None
        service.check_model(req.model)
        check_chat(req)
        bank = service.bank_for(req.use_bank)
        prompt = model.chat.prompt(
            req.messages, bank.system_prompt if bank else None, bank.prefix if bank else None
        )
        body: dict[str, Any] = {
            "text": prompt.text,
            "sampling_params": sampling_params(req, model.chat.stop),
        }
        if prompt.image_data is not None:
            body["image_data"] = prompt.image_data
        top = (req.top_logprobs or 0) if req.logprobs else None
        if top is not None:
            body.update(request_fields(top))
        await fit_max_tokens(service, body, bank, client)
        h = service.head("chat", bank, req.n, top)
        usage = bool(req.stream_options and req.stream_options.include_usage)
        return await run(service, client, body, h, bank, req.n, (req.stream, usage), prompt.text)

    async def completions(data: Any, client: Request) -> Response:
        req = validate(CompletionRequest, data)
        service.check_model(req.model)
        check_completion(req)
        bank = service.bank_for(req.use_bank)
        prefix = bank.prefix if bank is not None else ""
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        text: str | list[str] = [prefix + p for p in prompts]
        if isinstance(req.prompt, str):
            text = text[0]
        body: dict[str, Any] = {"text": text, "sampling_params": sampling_params(req)}
        if req.logprobs is not None:
            body.update(request_fields(req.logprobs))
        await fit_max_tokens(service, body, bank, client)
        h = service.head("text", bank, req.n, req.logprobs)
        usage = bool(req.stream_options and req.stream_options.include_usage)
        num_choices = len(prompts) * req.n
        return await run(service, client, body, h, bank, num_choices, (req.stream, usage), text)

    async def list_models(_: Any, __: Request) -> Response:
        return JSONResponse({"object": "list", "data": [service.model_card()]})

    @router.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await answer(request, chat)

    @router.post("/completions")
    async def text_completions(request: Request) -> Response:
        return await answer(request, completions)

    @router.get("/models")
    async def models(request: Request) -> Response:
        return await answer(request, list_models, has_body=False)

    @router.get("/models/{model_id:path}")
    async def retrieve_model(model_id: str, request: Request) -> Response:
        async def one(_: Any, __: Request) -> Response:
            assert service.model is not None
            if model_id != service.model.name:
                raise model_not_found(model_id)
            return JSONResponse(service.model_card())

        return await answer(request, one, has_body=False)

    return router


async def fit_max_tokens(
    service: OpenAIService, body: dict[str, Any], bank: BankVersion | None, client: Request
) -> None:
    """Refuse (400) or, with ``allow_auto_truncate``, shrink a ``max_new_tokens`` that does
    not fit in the context after the prompt.  Cheap unless it might not fit: the prompt
    takes at least its bank prefix; only past that is the prompt counted (by the engine,
    which also caches it for the request that follows)."""
    model = service.model
    assert model is not None
    params = body["sampling_params"]
    wanted = params.get("max_new_tokens")
    if wanted is None or model.context_length is None:
        return
    context = model.context_length
    floor = bank.prefix_tokens if bank is not None and bank.prefix_tokens is not None else 0
    if wanted + floor <= context:
        return  # the engine checks the exact prompt length
    if not service.options.allow_auto_truncate:
        raise ServeError(
            f"max_tokens is too large: the prompt takes at least {floor} tokens and "
            f"{wanted} more do not fit in the model's context length of {context} tokens",
            param="max_tokens",
        )
    count = {k: body[k] for k in ("text", "image_data") if k in body}
    count["sampling_params"] = {"max_new_tokens": 0}
    results = as_list(await _unless_gone(client, model.generator.generate(count, client)))
    longest = max(int(r["meta_info"]["prompt_tokens"]) for r in results)
    params["max_new_tokens"] = max(0, min(wanted, context - longest))


async def run(
    service: OpenAIService,
    client: Request,
    body: dict[str, Any],
    h: ResponseHead,
    bank: BankVersion | None,
    num_choices: int,
    streaming: tuple[bool, bool],
    prompt_text: str | list[str],
) -> Response:
    """Send ``body`` and answer with the whole response or, ``streaming`` = (stream,
    include_usage), its event stream."""
    stream, include_usage = streaming
    model = service.model
    assert model is not None
    headers = {"x-request-id": h.id}
    if service.bank is not None:
        headers["x-ted-bank-version"] = str(bank.version) if bank is not None else "none"

    def done(metas: list[dict[str, Any]]) -> None:
        if service.on_served is not None:
            service.on_served(h.id, bank, metas, h.n)

    if stream:
        events = await _unless_gone(client, _open_stream(model.generator, body, client))
        chunks = event_stream(h, events, num_choices, include_usage, on_done=done)
        return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)
    results = as_list(await _unless_gone(client, model.generator.generate(body, client)))
    if len(results) != num_choices:
        raise ServeError(f"the engine returned {len(results)} results, not {num_choices}", 502)
    response = completion_body(h, results)
    done([r["meta_info"] for r in results])
    if service.options.echo_prompt:
        response["ted"] = {"bank_version": bank and bank.version, "prompt": prompt_text}
    return JSONResponse(response, headers=headers)


async def _unless_gone(client: Request, work: Awaitable[T]) -> T:
    """``work`` (an engine request), cancelled when the client disconnects first: a 499
    that nobody reads."""
    try:
        return await until_disconnect(work, client.receive)
    except ClientGone:
        raise ServeError("the client went away", 499) from None


class _Peeked:
    """An event stream whose first event was read already."""

    def __init__(self, first: dict[str, Any], stream: EventStream, rest: AsyncIterator) -> None:
        self.first, self.stream, self.rest = first, stream, rest

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        yield self.first
        async for event in self.rest:
            yield event

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _open_stream(generator: Generator, body: dict[str, Any], client: Request) -> EventStream:
    """The engine's stream once its first event came: an engine that reports a bad
    request as the stream's first event (SGLang does) still gets an HTTP error status."""
    stream = await generator.stream(body, client)
    events = stream.events()
    try:
        first = await anext(events)
    except StopAsyncIteration:
        await stream.aclose()
        raise ServeError("the engine ended the stream before any result", 502) from None
    except BaseException:
        await stream.aclose()
        raise
    return _Peeked(first, stream, events)
