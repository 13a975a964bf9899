"""The OpenAI-compatible server: ``create_app(settings)``.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /v1/models/{id}`` (the OpenAI layer of :mod:`ted_sglang.serve.openai_routes`),
``POST /v1/feedback``, ``GET /health``, ``GET /metrics``, ``GET /openapi.json``, and,
when an admin token is set, ``POST /admin/reload`` and ``GET /admin/bank``.  Every route
authenticates before it looks at the body.  With an API key set, ``/metrics`` and
``/openapi.json`` (which name the endpoints) need it or the admin token, unless
``public_metrics``; ``/health`` stays open for probes.  Every failure answers
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
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ted_sglang.serve.backend import Endpoint
from ted_sglang.serve.context import ServeContext
from ted_sglang.serve.errors import ServeError, error_body, validation_message
from ted_sglang.serve.http_edge import read_json, require_key, validate
from ted_sglang.serve.metrics import CONTENT_TYPE, MetricsMiddleware
from ted_sglang.serve.openai_protocol import FeedbackRequest
from ted_sglang.serve.openai_routes import openai_router
from ted_sglang.serve.responses import JSONResponse
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

    app = FastAPI(
        title="ted-sglang serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.ctx = ctx
    app.add_middleware(MetricsMiddleware, metrics=ctx.metrics, routes=ROUTES)
    _add_error_handlers(app)
    app.include_router(openai_router(ctx.openai), prefix="/v1")

    api_keys = (settings.api_key,) if settings.api_key else ()
    # /metrics and /openapi.json: open as /v1 is, or the API key or the admin token
    info_keys = api_keys + _admin(settings) if api_keys and not settings.public_metrics else ()

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Response:
        require_key(request, api_keys, "API key")
        req = validate(FeedbackRequest, await read_json(request, settings.max_body_bytes))
        try:
            item = ctx.usage.record_feedback(req.request_id, req.correct)
        except UnknownRequest:
            raise ServeError(
                f"unknown request id {req.request_id[:200]!r} (not served with a bank here, "
                f"or older than the last {settings.max_tracked_requests} requests)",
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
    async def metrics(request: Request) -> Response:
        require_key(request, info_keys, "API key")
        return PlainTextResponse(ctx.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> Response:
        require_key(request, info_keys, "API key")
        return JSONResponse(app.openapi())

    if settings.admin_token is not None:
        _add_admin_routes(app, ctx)
    return app


def _admin(settings: ServeSettings) -> tuple[str, ...]:
    return (settings.admin_token,) if settings.admin_token else ()


def _add_admin_routes(app: FastAPI, ctx: ServeContext) -> None:
    tokens = _admin(ctx.settings)

    @app.post("/admin/reload")
    async def admin_reload(request: Request) -> Response:
        require_key(request, tokens, "admin token")
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
        require_key(request, tokens, "admin token")
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
