"""Noticing that an HTTP client went away, and SGLang's in-stream error events.

A request whose client disconnected must not keep generating: a non-streaming
``/generate`` waits for its results *or* the ASGI ``http.disconnect`` message,
whichever comes first (a streaming one is cancelled by Starlette on disconnect).
``serve`` runs its upstream requests under :func:`until_disconnect` for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi.responses import StreamingResponse

Receive = Callable[[], Awaitable[dict[str, Any]]]
T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the work done for it finished."""


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has disconnected (the request body was read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(work: Awaitable[T], receive: Receive) -> T:
    """``work``'s result, unless the client disconnects first: then ``work`` is cancelled
    (its cleanup has run when this returns) and :class:`ClientGone` is raised."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        if not gone.cancelled():
            gone.exception()  # a broken connection is a client gone as well
        raise ClientGone
    finally:
        pending = {t for t in (task, gone) if not t.done()}
        for t in pending:
            t.cancel()
        if pending:  # not suppressing CancelledError: a cancel of the caller goes through
            await asyncio.wait(pending)


async def wait_finished(events: asyncio.Queue, count: int, receive: Receive | None) -> bool:
    """Wait for ``count`` finished events ``(index, num_tokens, finished)`` from ``events``;
    False if the client disconnected first (``receive`` None: no client to watch)."""
    gone = asyncio.ensure_future(wait_for_disconnect(receive)) if receive else None
    getter: asyncio.Future | None = None
    try:
        while count:
            getter = asyncio.ensure_future(events.get())
            waiting = {getter} if gone is None else {getter, gone}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                return False
            count -= getter.result()[2]
        return True
    finally:
        for task in (getter, gone):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def stream_error(message: str, status_code: int, sse: Callable[[Any], bytes]) -> StreamingResponse:
    """SGLang's answer to a streamed request that fails before generating: HTTP 200, one
    ``data: {"error": ...}`` event, then ``data: [DONE]`` (``http_server.py``); ``sse``
    encodes one event."""
    error = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "code": status_code,
            "retryable": False,
        }
    }

    async def events() -> AsyncIterator[bytes]:
        yield sse(error)
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
