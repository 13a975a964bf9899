"""serve in this process in front of the test engines, shared by the serving tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ted_sglang.engine.launcher import free_port
from ted_sglang.serve.settings import ServeSettings
from ted_sglang.serve.thread import ServeThread


def serve_thread(bank_path: Path, *endpoints: str, **settings: Any) -> ServeThread:
    """serve of ``bank_path`` in front of ``endpoints`` on a free loopback port, the model
    named ``tiny``; ``settings``: further :class:`ServeSettings` fields."""
    return ServeThread(
        ServeSettings(
            bank_path=bank_path,
            endpoints=list(endpoints),
            port=free_port(),
            served_model_name="tiny",
            **settings,
        )
    )
