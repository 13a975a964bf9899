"""Bounds on what a client may send, checked before the work they would cost.

* Body bytes: :class:`BodySizeLimit` answers 413 when ``Content-Length`` or the bytes
  actually received pass the limit, before anything parses the body.
* Prompt characters: :func:`max_prompt_chars` bounds a text prompt from the model's
  context, so an over-long text is refused before it is tokenized.
* Images: encoded bytes and pixels (:data:`MAX_IMAGE_BYTES`, :data:`MAX_IMAGE_PIXELS`).
* Tokens: :func:`fit_context` checks input and ``max_new_tokens`` against the context.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson

from ted_sglang.engine.errors import RequestError

if TYPE_CHECKING:
    from ted_sglang.engine.prompt import Prompt

DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
MAX_IMAGE_BYTES = 16 * 1024 * 1024  # one image's encoded bytes (a file, or decoded base64)
MAX_IMAGE_PIXELS = 40_000_000  # checked from the header, before the pixels are decoded

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before the app sees it.

    The body is read here (at most ``max_bytes`` of it) and handed to the app as one
    message; later ``receive`` calls go to the server, so the app still learns when
    the client disconnects.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is None:
            await _refuse(send, 400, "the Content-Length header is not a number")
            return
        if declared > self.max_bytes:
            await _refuse(send, 413, self._too_large(f"{declared} bytes"))
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                await self.app(scope, _replay(message, receive), send)
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await _refuse(send, 413, self._too_large(f"over {self.max_bytes} bytes"))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self, size: str) -> str:
        return (
            f"the request body ({size}) is larger than this engine's limit of "
            f"{self.max_bytes} bytes (--max-request-bytes)"
        )


def max_prompt_chars(vocab: dict[str, int] | Any, context_length: int) -> int:
    """Characters a text prompt may have: no token spells more characters than the
    longest entry of ``vocab`` (byte-level BPE entries spell one character per byte),
    so a longer text cannot fit ``context_length`` tokens."""
    longest = max((len(token) for token in vocab), default=1)
    return context_length * max(longest, 1)


def _content_length(scope: Scope) -> int | None:
    """The declared body length (0 when not declared), or None when it is not a number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() and len(text) <= 20 else None
    return 0


def _replay(first: Message, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return first
        return await receive()

    return replay


async def _refuse(send: Send, status: int, message: str) -> None:
    err_type = "PayloadTooLargeError" if status == 413 else "BadRequestError"
    body = orjson.dumps(
        {"error": {"message": message, "type": err_type, "param": None, "code": status}}
    )
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def fit_context(
    prompt: Prompt,
    max_new_tokens: int,
    explicit: bool,
    context_length: int,
    allow_auto_truncate: bool,
) -> tuple[Prompt, int]:
    """The prompt and ``max_new_tokens`` a request runs with, checked against the context
    as SGLang's ``TokenizerManager._validate_one_request`` does: an input that fills the
    context, or an explicit ``max_new_tokens`` that does not fit after it, is refused
    unless ``allow_auto_truncate`` (then the input keeps its head and ``max_new_tokens``
    shrinks). An unset ``max_new_tokens`` (default 128) shrinks to fit, as in SGLang."""
    num = len(prompt.input_ids)
    if num >= context_length:
        if not allow_auto_truncate:
            raise RequestError(
                f"The input ({num} tokens) is longer than the model's context length "
                f"({context_length} tokens)."
            )
        prompt = prompt.truncated(context_length - 1)  # one token of room to generate
        num = len(prompt.input_ids)
    if explicit and max_new_tokens + num > context_length and not allow_auto_truncate:
        raise RequestError(
            "Requested token count exceeds the model's maximum context length "
            f"of {context_length} tokens. You requested a total of {max_new_tokens + num} "
            f"tokens: {num} tokens from the input messages and "
            f"{max_new_tokens} tokens for the completion. Please reduce the number "
            "of tokens in the input messages or the completion to fit within the limit."
        )
    return prompt, min(max_new_tokens, context_length - num)


def find_lone_surrogate(value: Any) -> str | None:
    """Where in a decoded JSON value a string holds a lone surrogate (``\\ud800`` escapes
    decode to one, but no UTF-8 encoder takes it), as a path like ``body.stop[1]``; or None."""
    try:
        orjson.dumps(value)  # C speed; it refuses lone surrogates
        return None
    except orjson.JSONEncodeError:  # one, or what else orjson refuses (ints past 64 bits, depth)
        pass
    stack: list[tuple[Any, Any]] = [(("body",), value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if not _encodes(item):
                return "".join(_path(where))
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and not _encodes(key):
                    return "".join(_path(where)) + " (a key)"
                if isinstance(child, str | dict | list):
                    stack.append(((where, f".{key}"), child))
        elif isinstance(item, list):
            for i, child in enumerate(item):
                if isinstance(child, str | dict | list):
                    stack.append(((where, f"[{i}]"), child))
    return None


def _path(where: tuple) -> list[str]:
    parts: list[str] = []
    while len(where) == 2:
        where, part = where
        parts.append(part)
    parts.append(where[0])
    return parts[::-1]


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
