"""SGLang's native HTTP API over the engine (FastAPI).

Routes: ``/generate`` (JSON or server-sent events), SGLang's OpenAI routes
(``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``: see
:mod:`ted_sglang.engine.openai_mount`), ``/model_info`` (and
``/get_model_info``), ``/server_info`` (and ``/get_server_info``),
``/flush_cache``, ``/health``, ``/health_generate``, ``/ready``,
``/start_profile`` and ``/stop_profile``. Every failure answers
``{"error": {"message", "type", "param", "code"}}``; framework validation errors
are 400s, as in SGLang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ted_sglang.engine.client_watch import stream_error, wait_finished
from ted_sglang.engine.config import EngineConfig
from ted_sglang.engine.errors import ContractError, RequestError
from ted_sglang.engine.limits import BodySizeLimit, find_lone_surrogate
from ted_sglang.engine.profiler import ProfileSettings, parse_profile_request
from ted_sglang.engine.protocol import (
    GenerateItem,
    GenerateRequest,
    parse_abort,
    parse_generate,
)
from ted_sglang.engine.sampling_params import SamplingParams
from ted_sglang.engine.server_info import ServerInfo
from ted_sglang.engine.server_info import model_info as build_model_info
from ted_sglang.engine.streaming import StreamChunks

if TYPE_CHECKING:
    from ted_sglang.engine.engine import Engine
    from ted_sglang.engine.sequence import Sequence

logger = logging.getLogger("ted_sglang.engine")
HEALTH_TIMEOUT_S = 20.0


def error_response(message: str, status_code: int = 400, err_type: str | None = None) -> Response:
    if err_type is None:
        phrase = HTTPStatus(status_code).phrase.replace(" ", "")
        err_type = phrase if phrase.endswith("Error") else phrase + "Error"
    body = {"error": {"message": message, "type": err_type, "param": None, "code": status_code}}
    return json_response(body, status_code)


def json_response(obj: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status_code, media_type="application/json")


def create_app(config: EngineConfig, engine: Engine | None = None) -> FastAPI:
    """The FastAPI app serving ``config.model`` (loads it unless ``engine`` is given)."""
    from sglang.api.v1 import api_types  # noqa: F401  (so the first request does not import it)

    if engine is None:
        from ted_sglang.engine.engine import Engine

        engine = Engine(config)
    eng: Engine = engine
    prep_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="engine-prep")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            eng.shutdown()
            prep_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="ted-sglang reference engine", lifespan=lifespan)
    app.state.engine = eng
    app.add_middleware(BodySizeLimit, max_bytes=config.max_request_bytes)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(f"{exc.errors()}", 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(f"internal error: {exc}", 500)

    def prepare(body: Any) -> tuple[GenerateRequest, list[Sequence]]:
        req = parse_generate(body)
        return req, eng.make_sequences(req.items, req.stream)

    async def run_generate(body: Any, request: Request | None = None) -> Response:
        """Answer a decoded ``/generate`` body; ``request`` (when given) is watched so that a
        client who leaves has its request aborted."""
        loop = asyncio.get_running_loop()
        try:  # off the event loop: a large body costs seconds that /health must not wait
            req, seqs = await loop.run_in_executor(prep_pool, prepare, body)
        except ContractError as exc:  # SGLang's generate_request: the contract's message
            return json_response({"error": str(exc)}, exc.status_code)
        except RequestError as exc:
            if _wants_stream(body):
                return stream_error(str(exc), exc.status_code, _sse)
            return error_response(str(exc), exc.status_code, exc.err_type)
        events: asyncio.Queue[tuple[int, int, bool]] = asyncio.Queue()
        for index, seq in enumerate(seqs):
            seq.on_update = _notifier(loop, events, index)
        eng.submit(seqs)
        if req.stream:
            batched = not req.is_single
            return StreamingResponse(
                _stream(eng, seqs, events, batched), media_type="text/event-stream"
            )
        try:
            stayed = await wait_finished(events, len(seqs), request and request.receive)
        finally:
            unfinished = [s for s in seqs if not s.is_finished]
            if unfinished:
                eng.abort(unfinished, "the client went away")
        if not stayed:
            return Response(status_code=499)  # nobody reads it
        for seq in seqs:
            reason = seq.finish_reason or {}
            if reason.get("type") == "abort" and reason.get("status_code") is not None:
                status = reason["status_code"]
                return error_response(reason["message"], status, reason.get("err_type"))
        outs = [eng.outputs.response(seq, eng.outputs.final_text(seq)) for seq in seqs]
        return json_response(outs[0] if req.is_single else outs)

    async def read_json(request: Request, blank_is_none: bool = False) -> Any:
        """The decoded body, or a 400 response; decoded off the event loop (and not behind
        grammar compiles in ``prep_pool``: an ``/abort_request`` must get through)."""
        raw = await request.body()
        if blank_is_none and not raw.strip():
            return None
        return await asyncio.get_running_loop().run_in_executor(None, _decode_json, raw)

    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(request: Request) -> Response:
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        return await run_generate(body, request)

    info = ServerInfo(config, eng)
    profile_dir = Path(
        config.profile_dir or os.environ.get("SGLANG_TORCH_PROFILER_DIR") or tempfile.gettempdir()
    )

    @app.get("/model_info")
    @app.get("/get_model_info")
    async def model_info() -> dict[str, Any]:
        return build_model_info(eng, info.server_args)

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def server_info() -> dict[str, Any]:
        return info.build()

    @app.get("/ready")
    async def ready() -> Response:
        return Response(status_code=200 if eng.is_ready else 503)

    @app.api_route("/start_profile", methods=["GET", "POST"])
    async def start_profile(request: Request) -> Response:
        body = await read_json(request, blank_is_none=True)
        if isinstance(body, Response):
            return body
        try:
            settings = parse_profile_request(body, profile_dir)
        except RequestError as exc:
            return error_response(str(exc), exc.status_code, exc.err_type)
        return await run_profile(settings, "Start profiling.\n")

    @app.api_route("/stop_profile", methods=["GET", "POST"])
    async def stop_profile() -> Response:
        return await run_profile(None, "Stop profiling. This will take some time.\n")

    async def run_profile(settings: ProfileSettings | None, done_text: str) -> Response:
        loop = asyncio.get_running_loop()
        try:
            ok, message = await loop.run_in_executor(None, eng.profile, settings)
        except TimeoutError:
            return error_response("the engine did not answer the profile request", 503)
        if not ok:
            return error_response(message, 400)
        return PlainTextResponse(done_text)

    @app.post("/abort_request")
    async def abort_request(request: Request) -> Response:
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        try:
            rid, abort_all, message = parse_abort(body)
        except RequestError as exc:
            return error_response(str(exc), exc.status_code, exc.err_type)
        if rid or abort_all:  # SGLang ignores an empty rid without abort_all
            eng.abort_requests(rid, abort_all, message)
        return Response(status_code=200)

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> Response:
        ok, message = await asyncio.get_running_loop().run_in_executor(None, eng.flush_cache)
        return PlainTextResponse(message, status_code=200 if ok else 400)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if eng.is_alive else 503)

    @app.get("/health_generate")
    async def health_generate() -> Response:
        item = GenerateItem(
            rid=f"HEALTH_CHECK_{uuid.uuid4().hex}",
            text=None,
            input_ids=[0],
            image_data=None,
            sampling=SamplingParams(max_new_tokens=1, top_k=1),
        )
        try:
            response = await asyncio.wait_for(run_generate_item(item), HEALTH_TIMEOUT_S)
        except TimeoutError:
            return Response(status_code=503)
        return Response(status_code=200 if response else 503)

    async def run_generate_item(item: GenerateItem) -> bool:
        loop = asyncio.get_running_loop()
        seqs = await loop.run_in_executor(prep_pool, eng.make_sequences, [item], False)
        events: asyncio.Queue[tuple[int, int, bool]] = asyncio.Queue()
        seqs[0].on_update = _notifier(loop, events, 0)
        eng.submit(seqs)
        await events.get()
        return (seqs[0].finish_reason or {}).get("type") != "abort"

    # SGLang's /v1 OpenAI routes: serve's OpenAI layer over run_generate, without a bank
    from ted_sglang.engine.openai_mount import add_openai_routes

    add_openai_routes(app, config, run_generate, model_info)
    return app


def _decode_json(raw: bytes) -> Any:
    """The decoded body, or a 400 response saying why it is not JSON the engine takes."""
    try:
        body = json.loads(raw)
    except RecursionError:
        return error_response("the request body is nested too deeply", 400)
    except (ValueError, UnicodeDecodeError) as exc:  # also integers of over 4300 digits
        return error_response(f"the request body is not valid JSON: {exc}", 400)
    where = find_lone_surrogate(body)
    if where is not None:
        return error_response(f"{where} holds a lone surrogate: not valid Unicode", 400)
    return body


def _wants_stream(body: Any) -> bool:
    return isinstance(body, dict) and body.get("stream") is True


def _notifier(loop: asyncio.AbstractEventLoop, events: asyncio.Queue, index: int):
    """Callback for the scheduler thread: hand ``(index, num_tokens, finished)`` to the loop."""

    def notify(seq: Sequence) -> None:
        event = (index, seq.num_output_tokens, seq.is_finished)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
            loop.call_soon_threadsafe(events.put_nowait, event)

    return notify


# Line breaks that JSON leaves raw but some line readers split on (str.splitlines does).
_RAW_BREAKS = (
    (b"\xc2\x85", b"\\u0085"),
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
)


def _sse(obj: Any) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line; one physical line always."""
    data = orjson.dumps(obj)
    for raw, escaped in _RAW_BREAKS:
        data = data.replace(raw, escaped)
    return b"data: " + data + b"\n\n"


async def _stream(
    eng: Engine, seqs: list[Sequence], events: asyncio.Queue, batched: bool
) -> AsyncIterator[bytes]:
    """Server-sent events per sequence (see ``streaming``), then ``data: [DONE]``."""
    config = eng.config
    chunks = [
        StreamChunks(eng.outputs, s, config.incremental_streaming_output, config.stream_interval)
        for s in seqs
    ]
    done: set[int] = set()
    try:
        while len(done) < len(seqs):
            latest = {}
            event = await events.get()
            while True:  # coalesce what piled up: only the newest state of each matters
                latest[event[0]] = event
                try:
                    event = events.get_nowait()
                except asyncio.QueueEmpty:
                    break
            for index, num_tokens, finished in latest.values():
                if index in done:
                    continue
                if finished:  # an abort too: SGLang streams its finish_reason, then [DONE]
                    done.add(index)
                    chunk = chunks[index].final()
                else:
                    chunk = chunks[index].partial(num_tokens)
                    if chunk is None:
                        continue
                if batched:
                    chunk["index"] = index
                yield _sse(chunk)
        yield b"data: [DONE]\n\n"
    finally:
        unfinished = [s for s in seqs if not s.is_finished]
        if unfinished:
            eng.abort(unfinished, "the client went away")
