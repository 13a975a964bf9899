"""OpenAI-compatible serving of the experience-augmented model.

    from ted_sglang.serve import ServeSettings, create_app

    app = create_app(ServeSettings(bank_path="bank.json", endpoints=["http://127.0.0.1:30000"]))
    uvicorn.run(app, port=8000)

Every chat prompt starts with the bank's system turn, byte-identical to the student
prompt of distillation and evaluation, so it is computed once per bank version in the
server's prefix cache.  See :mod:`ted_sglang.serve.app` for the routes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ted_sglang.serve.settings import ServeSettings

if TYPE_CHECKING:
    from fastapi import FastAPI


def create_app(settings: ServeSettings) -> FastAPI:
    """The FastAPI app (see :func:`ted_sglang.serve.app.create_app`); FastAPI is imported
    on first use, so importing this package stays light."""
    from ted_sglang.serve.app import create_app as _create_app

    return _create_app(settings)


__all__ = ["ServeSettings", "create_app"]
