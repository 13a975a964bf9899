"""Calls to an engine's native ``/generate`` shared by the HTTP tests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx


def engine_client(url: str) -> Iterator[httpx.Client]:
    """An ``httpx.Client`` on ``url`` (for module-scoped fixtures to yield from)."""
    with httpx.Client(base_url=url, timeout=120) as client:
        yield client


def generate(client: httpx.Client, **body) -> dict | list:
    """``POST /generate`` with ``body``; the response must be a 200."""
    response = client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def error_message(response: httpx.Response) -> str:
    """The message of an engine error: ``{"error": {"message": ...}}``, or SGLang's
    ``{"error": "..."}`` for a body that breaks its JSON contract."""
    error = response.json()["error"]
    return error["message"] if isinstance(error, dict) else error
