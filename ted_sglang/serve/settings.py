"""What ``ted-sglang serve`` is configured with: one small dataclass, checked on creation."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ted_sglang.runtime import normalize_url

ADMIN_TOKEN_ENV = "TED_ADMIN_TOKEN"
API_KEY_ENV = "TED_API_KEY"
DEFAULT_PORT = 8000
DEFAULT_EMBEDDED_MODEL = "smollm2-135m"
DEFAULT_RESERVE_TOKENS = 1024  # context a bank must leave for a question and an answer
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # as the engine's: room for an inline image


@dataclass
class ServeSettings:
    """Settings of the OpenAI-compatible server.

    ``endpoints``: base URLs of SGLang-API servers (an SGLang server, an SGLang router, or
    the reference engine); several are balanced by least outstanding requests.
    ``chat_template``: an SGLang frontend chat template name (``chatml``, ``qwen2-vl``...)
    that overrides the one chosen from the endpoint's model.  ``admin_token`` turns the
    ``/admin`` routes on; ``api_key`` makes the ``/v1`` routes require
    ``Authorization: Bearer <api_key>``, and then ``/metrics`` and ``/openapi.json`` too
    (the API key or the admin token) unless ``public_metrics``.  ``usage_path``: the
    sidecar file where served counts and feedback are kept (default
    ``<bank>.usage.json``).  ``echo_prompt`` adds the prompt text sent to the engine to
    each non-streaming response (debugging only).  ``accept_any_model``: serve requests
    that name another model (default: 404 ``model_not_found``, as OpenAI).
    ``allow_auto_truncate``: fit a ``max_tokens`` beyond the context to the room left
    (default: 400, as SGLang).  ``bank_reserve_tokens``: context tokens a bank version
    must leave for the conversation, or it is refused.
    """

    bank_path: Path
    endpoints: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    chat_template: str | None = None
    admin_token: str | None = None
    api_key: str | None = None
    served_model_name: str | None = None
    usage_path: Path | None = None
    poll_interval_s: float = 1.0
    usage_flush_interval_s: float = 5.0
    max_tracked_requests: int = 100_000
    request_timeout_s: float = 600.0
    max_connections: int = 512
    echo_prompt: bool = False
    log_level: str = "info"
    public_metrics: bool = False
    accept_any_model: bool = False
    allow_auto_truncate: bool = False
    bank_reserve_tokens: int = DEFAULT_RESERVE_TOKENS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        self.bank_path = Path(self.bank_path)
        if self.usage_path is None:
            self.usage_path = self.bank_path.with_name(self.bank_path.name + ".usage.json")
        self.usage_path = Path(self.usage_path)
        self.endpoints = [normalize_url(u) for u in self.endpoints]  # "host:port" → URL
        if not self.endpoints:
            raise ValueError("at least one endpoint URL is needed (e.g. http://127.0.0.1:30000)")
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError(f"endpoint URLs repeat: {self.endpoints}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        for name in ("poll_interval_s", "usage_flush_interval_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_tracked_requests < 1 or self.max_connections < 1:
            raise ValueError("max_tracked_requests and max_connections must be at least 1")
        if self.bank_reserve_tokens < 0:
            raise ValueError(f"bank_reserve_tokens must be >= 0, got {self.bank_reserve_tokens}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        for name in ("admin_token", "api_key"):
            value = getattr(self, name)
            if value and not value.strip():
                raise ValueError(f"{name} is only whitespace: give a key, or none to turn it off")
            # HTTP trims a header value, so surrounding whitespace could never be sent.
            setattr(self, name, (value or "").strip() or None)

    @classmethod
    def from_env(cls, **kwargs: object) -> ServeSettings:
        """Settings with ``admin_token`` / ``api_key`` read from ``TED_ADMIN_TOKEN`` /
        ``TED_API_KEY`` unless given."""
        kwargs.setdefault("admin_token", os.environ.get(ADMIN_TOKEN_ENV) or None)
        kwargs.setdefault("api_key", os.environ.get(API_KEY_ENV) or None)
        return cls(**kwargs)  # type: ignore[arg-type]
