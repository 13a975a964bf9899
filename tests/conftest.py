"""Shared fixtures: tiny random models on disk and reference engines serving them.

Engines are real processes on loopback ports, started once per test session
and stopped (with their process groups) when it ends. They constrain JSON
without free whitespace (``--constrained-json-disable-any-whitespace``): a
random model would otherwise fill ``json_schema`` output with whitespace.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

ENGINE_ARGS = ("--constrained-json-disable-any-whitespace",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama-style text model with a ChatML byte-level BPE tokenizer."""
    from ted_sglang.engine.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-text"), seed=0)


@pytest.fixture(scope="session")
def tiny_vision_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LLaVA-style model (``<image>`` = 16 tokens of a 32x32 image)."""
    from ted_sglang.engine.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-vision"), vision=True, seed=0)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample set (20 samples, seed 0) written once for the session."""
    from ted_sglang.data import write_sample_set

    out = tmp_path_factory.mktemp("samples")
    write_sample_set(out, count=20, seed=0)
    return out


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample set, 36 samples of seed 1 (the distill subprocess tests)."""
    from ted_sglang.data import write_sample_set

    out = tmp_path_factory.mktemp("samples-36")
    write_sample_set(out, count=36, seed=1)
    return out


def _launch(model_dir: Path, log_dir: Path, *extra: str):
    from ted_sglang.engine.launcher import launch_engine

    return launch_engine(
        model_dir,
        extra_args=(*ENGINE_ARGS, *extra),
        log_path=log_dir / "engine.log",
        timeout=180,
    )


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A reference engine (:class:`LaunchedEngine`) on the tiny text model, shared by tests."""
    engine = _launch(tiny_model_dir, tmp_path_factory.mktemp("engine-text"))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def engine_url(tiny_engine) -> str:
    """Base URL of the shared engine on the tiny text model."""
    return tiny_engine.url


@pytest.fixture(scope="session")
def vision_engine(tiny_vision_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    engine = _launch(tiny_vision_model_dir, tmp_path_factory.mktemp("engine-vision"))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def vision_engine_url(vision_engine) -> str:
    """Base URL of the shared engine on the tiny vision model."""
    return vision_engine.url


@pytest.fixture(scope="session")
def failing_url(engine_url: str) -> Iterator[str]:
    """A loopback server that describes the tiny engine's model but fails every
    ``/generate`` with HTTP 500 (a server that cannot serve a request)."""
    import http.server
    import threading
    import urllib.request

    with urllib.request.urlopen(engine_url + "/get_model_info", timeout=10) as response:
        info = response.read()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path in ("/get_model_info", "/model_info")
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(info if ok else b"{}")

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"error": {"message": "out of memory", "code": 500}}'
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def second_engine_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Base URL of a second engine on the tiny text model (scale-out tests)."""
    engine = _launch(tiny_model_dir, tmp_path_factory.mktemp("engine-text-2"))
    yield engine.url
    engine.close()


@pytest.fixture(scope="session")
def profile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the incremental engine writes ``/start_profile`` traces."""
    return tmp_path_factory.mktemp("profiles")


@pytest.fixture(scope="session")
def incremental_engine_url(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, profile_dir: Path
) -> Iterator[str]:
    """An engine on the tiny text model started the way SGLang's own CI starts the server
    for its frontend test programs (``--incremental-streaming-output``), with the other
    SGLang options this engine has turned on.

    It streams every 16th token: SGLang's frontend keeps only the newest chunk's
    ``meta_info`` when two chunks arrive before its reader wakes
    (``StreamExecutor._execute_gen``), which on two busy CPU cores happens now and then
    at one chunk per step (and rarely at one per 4 steps) and breaks
    ``test_stream_logprobs``'s count of entries.
    """
    engine = _launch(
        tiny_model_dir,
        tmp_path_factory.mktemp("engine-incremental"),
        "--incremental-streaming-output",
        "--stream-interval",
        "16",
        "--enable-return-hidden-states",
        "--enable-priority-scheduling",
        "--profile-dir",
        str(profile_dir),
    )
    yield engine.url
    engine.close()
