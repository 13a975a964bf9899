"""The OpenAI-compatible server: ``create_app(settings)``.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``POST /v1/feedback``, ``GET /health``, ``GET /metrics``, and, when an admin token is
set, ``POST /admin/reload`` and ``GET /admin/bank``.  Every failure answers
``{"error": {"message", "type", "param", "code"}}``; validation errors are 400s.
Each response says which bank version it was served with: the ``x-ted-bank-version``
header and ``system_fingerprint: "ted-bank-v<N>"``.

Chat prompts start with the bank's system turn (see :mod:`ted_sglang.serve.chat_format`;
a client's system message follows it as a second system turn).  Text completions get
the same system turn, byte for byte, in front of each prompt, so a raw prompt that
continues it (``<|im_start|>user ...`` for ChatML) is served with the experiences and
shares the cached prefix; ``"use_bank": false`` in a request body sends it without the
bank on either route (for A/B comparisons, or raw completions).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ted_sglang.serve.backend import Endpoint
from ted_sglang.serve.bank_state import BankVersion
from ted_sglang.serve.context import ServeContext
from ted_sglang.serve.errors import ServeError, error_body, validation_message
from ted_sglang.serve.metrics import CONTENT_TYPE, MetricsMiddleware
from ted_sglang.serve.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
)
from ted_sglang.serve.responses import (
    JSONResponse,
    Kind,
    ResponseHead,
    as_list,
    completion_body,
    event_stream,
)
from ted_sglang.serve.sampling import check_chat, check_completion, sampling_params
from ted_sglang.serve.settings import ServeSettings
from ted_sglang.serve.usage_log import AlreadyRated, UnknownRequest

logger = logging.getLogger("ted_sglang.serve")

ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/v1/feedback",
    "/health",
    "/metrics",
    "/admin/reload",
    "/admin/bank",
)


def create_app(settings: ServeSettings) -> FastAPI:
    """The FastAPI app serving ``settings.bank_path`` over ``settings.endpoints``."""
    ctx = ServeContext(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ctx.start()
        assert ctx.bank is not None
        tasks = [
            asyncio.create_task(ctx.bank.watch(settings.poll_interval_s)),
            asyncio.create_task(ctx.flush_usage()),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ctx.stop()

    app = FastAPI(title="ted-sglang serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.ctx = ctx
    app.add_middleware(MetricsMiddleware, metrics=ctx.metrics, routes=ROUTES)
    _add_error_handlers(app)

    def check_key(request: Request, key: str | None, what: str) -> None:
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), key):
            raise ServeError(
                f"a valid {what} is needed: send 'Authorization: Bearer <{what}>'",
                401,
                code="invalid_api_key",
            )

    def head(kind: Kind, bank: BankVersion | None, n: int) -> ResponseHead:
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        fingerprint = f"ted-bank-v{bank.version}" if bank is not None else "ted-no-bank"
        return ResponseHead(rid, int(time.time()), ctx.model_name, fingerprint, kind, n)

    def headers(rid: str, bank: BankVersion | None) -> dict[str, str]:
        version = str(bank.version) if bank is not None else "none"
        return {"x-ted-bank-version": version, "x-request-id": rid}

    def served(rid: str, bank: BankVersion | None, metas: list[dict[str, Any]], n: int) -> None:
        firsts = metas[::n]
        ctx.metrics.add_tokens(
            sum(m.get("prompt_tokens", 0) for m in firsts),
            sum(m.get("completion_tokens", 0) for m in metas),
            sum(m.get("cached_tokens", 0) or 0 for m in firsts),
        )
        if bank is not None:
            ctx.usage.record_request(rid, bank)

    async def run(
        body: dict[str, Any],
        h: ResponseHead,
        bank: BankVersion | None,
        num_choices: int,
        stream: bool,
        include_usage: bool,
        prompt_text: str | list[str],
    ) -> Response:
        assert ctx.backend is not None
        if stream:
            engine_stream = await ctx.backend.stream(body)
            chunks = event_stream(
                h, engine_stream, num_choices, include_usage,
                on_done=lambda metas: served(h.id, bank, metas, h.n),
            )  # fmt: skip
            return StreamingResponse(
                chunks, media_type="text/event-stream", headers=headers(h.id, bank)
            )
        results = as_list(await ctx.backend.generate(body))
        if len(results) != num_choices:
            raise ServeError(f"the engine returned {len(results)} results, not {num_choices}", 502)
        response = completion_body(h, results)
        served(h.id, bank, [r["meta_info"] for r in results], h.n)
        if settings.echo_prompt:
            response["ted"] = {"bank_version": bank and bank.version, "prompt": prompt_text}
        return JSONResponse(response, headers=headers(h.id, bank))

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
        check_key(request, settings.api_key, "API key")
        check_chat(req)
        assert ctx.bank is not None and ctx.chat is not None
        bank = ctx.bank.current if req.use_bank else None
        prompt = ctx.chat.prompt(
            req.messages,
            bank.system_prompt if bank else None,
            bank.prefix if bank else None,
        )
        body: dict[str, Any] = {
            "text": prompt.text,
            "sampling_params": sampling_params(req, ctx.chat.stop),
        }
        if prompt.image_data is not None:
            body["image_data"] = prompt.image_data
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        h = head("chat", bank, req.n)
        return await run(body, h, bank, req.n, req.stream, include_usage, prompt.text)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Response:
        check_key(request, settings.api_key, "API key")
        check_completion(req)
        assert ctx.bank is not None
        bank = ctx.bank.current if req.use_bank else None
        prefix = bank.prefix if bank is not None else ""
        if isinstance(req.prompt, str):
            text: str | list[str] = prefix + req.prompt
            num_prompts = 1
        else:
            text = [prefix + p for p in req.prompt]
            num_prompts = len(text)
        body = {"text": text, "sampling_params": sampling_params(req)}
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        h = head("text", bank, req.n)
        return await run(body, h, bank, num_prompts * req.n, req.stream, include_usage, text)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        check_key(request, settings.api_key, "API key")
        model = {
            "id": ctx.model_name,
            "object": "model",
            "created": int(ctx.metrics.started_at),
            "owned_by": "ted-sglang",
            "root": ctx.model_info.get("model_path"),
        }
        return JSONResponse({"object": "list", "data": [model]})

    @app.post("/v1/feedback")
    async def feedback(req: FeedbackRequest, request: Request) -> Response:
        check_key(request, settings.api_key, "API key")
        try:
            item = ctx.usage.record_feedback(req.request_id, req.correct)
        except UnknownRequest:
            raise ServeError(
                f"unknown request id {req.request_id!r} (not served with a bank here, or "
                f"older than the last {settings.max_tracked_requests} requests)",
                404,
                param="request_id",
            ) from None
        except AlreadyRated:
            raise ServeError(
                f"request {req.request_id!r} was rated already", 409, param="request_id"
            ) from None
        ctx.metrics.feedback["true" if req.correct else "false"] += 1
        return JSONResponse(
            {
                "request_id": req.request_id,
                "bank_version": item.version,
                "entries": len(item.ids),
                "correct": req.correct,
            }
        )

    @app.get("/health")
    async def health() -> Response:
        assert ctx.backend is not None and ctx.bank is not None
        endpoints = await ctx.backend.health()
        ok = any(endpoints.values())
        body = {"status": "ok" if ok else "unavailable", "bank_version": ctx.bank.current.version}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(ctx.metrics.render(), media_type=CONTENT_TYPE)

    if settings.admin_token is not None:
        _add_admin_routes(app, ctx, check_key)
    return app


def _add_admin_routes(app: FastAPI, ctx: ServeContext, check_key: Any) -> None:
    token = ctx.settings.admin_token

    @app.post("/admin/reload")
    async def admin_reload(request: Request) -> Response:
        check_key(request, token, "admin token")
        assert ctx.bank is not None
        result = await asyncio.to_thread(ctx.bank.reload)
        if result.outcome == "failed":
            raise ServeError(
                f"the bank file was refused; still serving version {result.version}: "
                f"{result.error}",
                409,
                code="bank_refused",
            )
        return JSONResponse(
            {"outcome": result.outcome, "version": result.version, "previous": result.previous}
        )

    @app.get("/admin/bank")
    async def admin_bank(request: Request) -> Response:
        check_key(request, token, "admin token")
        assert ctx.bank is not None and ctx.backend is not None and ctx.chat is not None
        bank = ctx.bank.current
        usage = ctx.usage
        return JSONResponse(
            {
                "path": str(ctx.bank.path),
                "version": bank.version,
                "entries": bank.num_entries,
                "ids": list(bank.ids),
                "student_model": bank.student_model,
                "loaded_at": bank.loaded_at,
                "swaps": ctx.bank.swaps,
                "swap_failures": ctx.bank.swap_failures,
                "last_error": ctx.bank.last_error,
                "chat_template": ctx.chat.name,
                "system_prompt": bank.system_prompt,
                "prefix": bank.prefix,
                "requests_by_version": {str(v): n for v, n in usage.requests_by_version.items()},
                "feedback": dict(usage.feedback),
                "tracked_requests": usage.num_tracked,
                "usage_path": str(usage.path),
                "endpoints": [_endpoint_info(e) for e in ctx.backend.endpoints],
            }
        )


def _endpoint_info(e: Endpoint) -> dict[str, Any]:
    return {
        "url": e.url,
        "outstanding": e.outstanding,
        "requests": e.requests,
        "failures": e.failures,
    }


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        message, param = validation_message(list(exc.errors()))
        return JSONResponse(error_body(message, 400, param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return JSONResponse(error_body(str(exc.detail), exc.status_code), exc.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(f"internal error: {exc!r}", 500), status_code=500)
