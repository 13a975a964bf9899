"""What a route does first, in this order: authenticate, read a bounded body, parse it,
validate it.  Each step fails with a :class:`ServeError` in OpenAI's shape.

Bodies are parsed with orjson, which refuses what the engine could not be sent: lone
UTF-16 surrogates, numbers beyond a double's range, nesting deeper than 1024 levels.
"""

from __future__ import annotations

import hmac
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from ted_sglang.serve.errors import ServeError, validation_message
from ted_sglang.serve.settings import DEFAULT_MAX_BODY_BYTES

Model = TypeVar("Model", bound=BaseModel)


def has_key(request: Request, keys: tuple[str, ...]) -> bool:
    """Whether ``request`` carries ``Authorization: Bearer <one of keys>``.

    Compared as bytes in constant time (a header of any bytes is a wrong key, never an
    error), every key checked."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = token.strip().encode("latin-1")  # the header's own bytes (Starlette decodes latin-1)
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode("utf-8"))
    return scheme.lower() == "bearer" and found


def require_key(request: Request, keys: tuple[str, ...], what: str) -> None:
    """Raise a 401 unless ``keys`` is empty or the request carries one of them."""
    if keys and not has_key(request, keys):
        raise ServeError(
            f"a valid {what} is needed: send 'Authorization: Bearer <{what}>'",
            401,
            code="invalid_api_key",
        )


async def read_json(request: Request, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Any:
    """The request's JSON body; 413 past ``max_bytes`` (checked before reading it all),
    400 when it is not JSON that can be sent on."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise ServeError(f"the request body is not valid JSON: {exc}") from None


def validate(model: type[Model], data: Any) -> Model:
    """``data`` as ``model``; a 400 naming the first bad parameter otherwise."""
    if not isinstance(data, dict):
        raise ServeError(f"the request body must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors(include_input=False)))
        raise ServeError(message, 400, param=param) from None


def _too_large(max_bytes: int) -> ServeError:
    return ServeError(
        f"the request body is larger than {max_bytes} bytes", 413, code="request_too_large"
    )
