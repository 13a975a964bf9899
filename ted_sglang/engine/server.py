"""SGLang's native HTTP API over the engine (FastAPI).

Routes: ``/generate`` (JSON or server-sent events), ``/model_info`` (and
``/get_model_info``), ``/server_info`` (and ``/get_server_info``),
``/flush_cache``, ``/health`` and ``/health_generate``. Every failure answers
``{"error": {"message", "type", "param", "code"}}``; framework validation errors
are 400s, as in SGLang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ted_sglang.engine.config import EngineConfig
from ted_sglang.engine.protocol import GenerateItem, RequestError, SamplingParams, parse_generate

if TYPE_CHECKING:
    from ted_sglang.engine.engine import Engine
    from ted_sglang.engine.sequence import Sequence

logger = logging.getLogger("ted_sglang.engine")
SGLANG_API_VERSION = "0.5.23"
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

    async def run_generate(body: Any) -> Response:
        try:
            req = parse_generate(body)
            loop = asyncio.get_running_loop()
            seqs = await loop.run_in_executor(prep_pool, eng.make_sequences, req.items, req.stream)
        except RequestError as exc:
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
            remaining = len(seqs)
            while remaining:
                _, _, finished = await events.get()
                remaining -= finished
        finally:
            unfinished = [s for s in seqs if not s.is_finished]
            if unfinished:
                eng.abort(unfinished, "the client went away")
        for seq in seqs:
            reason = seq.finish_reason or {}
            if reason.get("type") == "abort":
                return error_response(reason["message"], reason.get("status_code") or 500)
        outs = [eng.outputs.response(seq, eng.outputs.final_text(seq)) for seq in seqs]
        return json_response(outs[0] if req.is_single else outs)

    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return error_response(f"the request body is not valid JSON: {exc}", 400)
        return await run_generate(body)

    @app.get("/model_info")
    @app.get("/get_model_info")
    async def model_info() -> dict[str, Any]:
        loaded = eng.loaded
        config_ = loaded.model.config
        return {
            "model_path": loaded.model_path,
            "served_model_name": loaded.model_path,
            "tokenizer_path": loaded.model_path,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "has_image_understanding": loaded.is_vision,
            "has_audio_understanding": False,
            "model_type": getattr(config_, "model_type", None),
            "architectures": getattr(config_, "architectures", None),
            "chat_template_name": loaded.chat_template_name,
            "context_length": loaded.context_length,
            "image_token": loaded.image_token,
            "vocab_size": eng.runner.vocab_size,
            "eos_token_ids": loaded.eos_token_ids,
        }

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def server_info() -> dict[str, Any]:
        from ted_sglang import __version__

        sched = eng.scheduler
        return {
            "model_path": eng.loaded.model_path,
            "tokenizer_path": eng.loaded.model_path,
            "host": config.host,
            "port": config.port,
            "device": eng.loaded.device,
            "dtype": str(eng.runner.dtype).removeprefix("torch."),
            "context_length": eng.loaded.context_length,
            "max_running_requests": config.max_batch_size,
            "chunked_prefill_size": config.max_prefill_tokens,
            "attention_backend": config.attention_backend,
            "max_total_num_tokens": config.cache_tokens,
            "random_seed": config.random_seed,
            "disable_radix_cache": config.cache_tokens == 0,
            "internal_states": [
                {
                    "num_running_reqs": sched.num_active,
                    "num_waiting_reqs": len(sched.waiting),
                    "num_steps": eng.num_steps,
                    "num_failed_steps": eng.num_failed_steps,
                }
            ],
            "cache": eng.cache_info(),
            "grammar_cache": eng.grammars.info(),
            "startup_time": eng.start_time,
            "version": __version__,
            "sglang_api_version": SGLANG_API_VERSION,
            "engine": "ted-sglang reference engine",
        }

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

    return app


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
    """Server-sent events with cumulative text per sequence, then ``data: [DONE]``."""
    sent = [""] * len(seqs)
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
                seq = seqs[index]
                if finished:
                    done.add(index)
                    reason = seq.finish_reason or {}
                    if reason.get("type") == "abort":
                        status = reason.get("status_code") or 500
                        err = {"message": reason["message"], "type": "abort", "code": status}
                        yield _sse({"error": err})
                        continue
                    text = eng.outputs.final_text(seq)
                    num_tokens = seq.num_output_tokens
                else:
                    text = eng.outputs.partial_text(seq, num_tokens)
                    if text == sent[index]:
                        continue
                sent[index] = text
                chunk = eng.outputs.response(seq, text, num_tokens)
                if batched:
                    chunk["index"] = index
                yield _sse(chunk)
        yield b"data: [DONE]\n\n"
    finally:
        unfinished = [s for s in seqs if not s.is_finished]
        if unfinished:
            eng.abort(unfinished, "the client went away")
