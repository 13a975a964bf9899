"""Run the server in a background thread of this process (tests, notebooks, benchmarks).

with ServeThread(settings) as url:
    client = openai.OpenAI(base_url=url + "/v1", api_key="-")
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ted_sglang.serve.settings import ServeSettings


class ServeThread:
    """uvicorn serving ``create_app(settings)`` on ``settings.host:port`` in a daemon thread;
    a context manager whose value is the base URL."""

    def __init__(self, settings: ServeSettings, startup_timeout_s: float = 180.0) -> None:
        import uvicorn

        from ted_sglang.serve.app import create_app

        self.settings = settings
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.url = f"http://{settings.host}:{settings.port}"
        self.startup_timeout_s = startup_timeout_s
        self._thread = threading.Thread(target=self._run, name="ted-serve", daemon=True)

    def _run(self) -> None:
        with contextlib.suppress(SystemExit):  # uvicorn's answer to a failed startup
            self.server.run()

    def start(self) -> str:
        """Start serving; returns the base URL once the app has started (raises
        RuntimeError if it failed to start)."""
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                why = self.app.state.ctx.startup_error or "see the log above"
                raise RuntimeError(f"the server failed to start: {why}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start within {self.startup_timeout_s} s")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
