"""The engine's refusal of a request, with the HTTP status to answer it with."""

from __future__ import annotations


class RequestError(ValueError):
    """A request the engine refuses; ``status_code`` is the HTTP status to answer with."""

    def __init__(self, message: str, status_code: int = 400, err_type: str = "BadRequestError"):
        super().__init__(message)
        self.status_code = status_code
        self.err_type = err_type


class ContractError(RequestError):
    """A body that breaks SGLang's JSON contract (a type error): 400 even when streaming,
    where SGLang answers other refusals with an in-stream error event."""
