"""One error shape for every failure: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

# OpenAI answers a bad key (401, code invalid_api_key) and an unknown model or route (404)
# with type invalid_request_error too.
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class ServeError(Exception):
    """A failure answered to the client with ``status`` and OpenAI's error body."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        *,
        param: str | None = None,
        code: str | None = None,
        err_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.err_type = err_type or error_type(status)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.status, self.param, self.code, self.err_type)


def error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    if status in _TYPES:
        return _TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(
    message: str,
    status: int = 400,
    param: str | None = None,
    code: str | None = None,
    err_type: str | None = None,
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": err_type or error_type(status),
            "param": param,
            "code": code,
        }
    }


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A readable message and the first bad parameter from pydantic's ``errors()``."""
    parts, first = [], None
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc) or "body"
        first = first or (where if loc else None)
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request", first
