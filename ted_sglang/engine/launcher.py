"""Start the reference engine in a child process and wait until it answers.

>>> with launch_engine("smollm2-135m") as engine:  # doctest: +SKIP
...     print(engine.url)

The child runs in its own process group, is stopped (terminate, then kill) by
``close()``, at interpreter exit, and exits by itself when its parent is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LaunchedEngine:
    """A running engine process: ``url``, ``log_path``, ``close()``; a context manager."""

    def __init__(self, process: subprocess.Popen, url: str, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path
        atexit.register(self.close)

    @property
    def is_running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, num_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-num_chars:]
        except OSError:
            return ""

    def close(self, timeout: float = 15.0) -> None:
        """Stop the engine: SIGTERM to its process group, then SIGKILL after ``timeout``."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(timeout=timeout)
        atexit.unregister(self.close)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def __enter__(self) -> LaunchedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LaunchedEngine(url={self.url!r}, pid={self.process.pid})"


def launch_engine(
    model: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int | None = None,
    cache_tokens: int | None = None,
    extra_args: Sequence[str] = (),
    log_path: str | os.PathLike[str] | None = None,
    timeout: float = 600.0,
) -> LaunchedEngine:
    """Run ``python -m ted_sglang.engine`` on ``model`` and return once ``/health`` answers 200.

    ``port=None`` picks a free port; ``extra_args`` are more CLI flags (see
    ``ted-sglang engine --help``); the engine's output goes to ``log_path`` (a
    temporary file by default). Raises RuntimeError if the engine exits or is
    not up within ``timeout`` seconds, with the end of its log.
    """
    port = port or free_port(host)
    cmd = [
        sys.executable,
        "-m",
        "ted_sglang.engine",
        "--model",
        os.fspath(model),
        "--host",
        host,
        "--port",
        str(port),
        "--parent-pid",
        str(os.getpid()),
    ]
    if cache_tokens is not None:
        cmd += ["--cache-tokens", str(cache_tokens)]
    cmd += list(extra_args)
    return start_server(cmd, f"http://{host}:{port}", "the engine", log_path, timeout)


def start_server(
    cmd: Sequence[str],
    url: str,
    name: str,
    log_path: str | os.PathLike[str] | None = None,
    timeout: float = 600.0,
    poll_interval: float = 0.25,
    preexec_fn: Callable[[], None] | None = None,
    env: Mapping[str, str] | None = None,
    ready_route: str = "/health",
) -> LaunchedEngine:
    """Run ``cmd`` in its own process group, its output to ``log_path`` (a temporary
    file by default), and return once ``url + ready_route`` answers 200. Raises
    RuntimeError naming ``name`` if it exits or is not up within ``timeout`` seconds,
    with the end of its log."""
    if log_path is None:
        fd, tmp = tempfile.mkstemp(prefix="ted-sglang-server-", suffix=".log")
        os.close(fd)
        log_path = tmp
    log_file = Path(log_path)
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            list(cmd),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=preexec_fn,
            env=None if env is None else dict(env),
        )
    server = LaunchedEngine(process, url, log_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.is_running:
            server.close()
            raise RuntimeError(
                f"{name} exited with code {process.returncode}; its log ({log_file}) ends:\n"
                f"{server.log_tail()}"
            )
        if _answers(server.url + ready_route):
            return server
        time.sleep(poll_interval)
    server.close()
    raise RuntimeError(
        f"{name} did not answer within {timeout:.0f} s; its log ({log_file}) ends:\n"
        f"{server.log_tail()}"
    )


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False
