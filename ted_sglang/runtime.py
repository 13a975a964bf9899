"""Where programs run: an SGLang-API server at a URL, or one launched for the run.

A URL may point at SGLang, an SGLang router or the reference engine; they all speak
the same native API, and several student URLs make several workers (scale-out).
With no URL, the run launches a server itself: SGLang when a CUDA GPU and a working
SGLang server install are present, else the reference engine on the CPU (or several
of them, ``workers``).  Launched servers are stopped when the run ends, on Ctrl-C, on SIGTERM
and at interpreter exit.

    with open_runtime(student_url=None) as rt:       # launches the embedded default
        state = student_rollouts.run(..., backend=rt.student.backend)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ted_sglang.chat_templates import chat_templates

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_REQUEST_TIMEOUT = 600.0
# Compact JSON under json_schema: a small model otherwise pads documents with whitespace.
SERVER_ARGS = ("--constrained-json-disable-any-whitespace",)
LaunchKind = Literal["sglang", "engine"]


@dataclass
class Endpoint:
    """A server the programs talk to, and what it told us about its model."""

    url: str
    model_path: str
    chat_template: str
    takes_images: bool
    model_info: dict[str, Any]
    backend: Any = field(repr=False)  # sgl.RuntimeEndpoint


@dataclass(frozen=True)
class Placement:
    """Where the student and the teacher run: URLs, or a server to launch
    (``launch``: its kind, ``model``: what it serves); ``teacher_url=None`` means the
    teacher is the student."""

    student_url: str | None
    teacher_url: str | None
    launch: LaunchKind | None
    model: str | None


def plan_placement(
    student_url: str | None,
    teacher_url: str | None,
    model: str | None,
    *,
    has_cuda: bool,
    has_sglang_server: bool,
) -> Placement:
    """Decide what runs where (pure; see :func:`open_runtime`)."""
    student_url = normalize_url(student_url) if student_url else None
    teacher_url = normalize_url(teacher_url) if teacher_url else None
    if student_url is not None:
        if model is not None:
            raise ValueError(
                "--model picks the model of a launched server; with --student the server at "
                "that URL decides the model (drop --model, or drop --student to launch one)"
            )
        return Placement(student_url, teacher_url or student_url, None, None)
    kind: LaunchKind = "sglang" if has_cuda and has_sglang_server else "engine"
    return Placement(None, teacher_url, kind, model or DEFAULT_MODEL)


def normalize_url(url: str) -> str:
    """``host:port`` or a URL -> ``http://host:port`` without a trailing slash."""
    url = url.strip().rstrip("/")
    if not url:
        raise ValueError("a server URL must not be empty")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"server URL {url!r} must use http:// or https://")
    return url


# ---- talking to a server ------------------------------------------------------------


def fetch_model_info(url: str, timeout: float = 30.0) -> dict[str, Any]:
    """``/get_model_info`` (or ``/model_info``) of the server at ``url``."""
    last: Exception | None = None
    for route in ("/get_model_info", "/model_info"):
        try:
            with urllib.request.urlopen(url + route, timeout=timeout) as response:
                info = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            last = exc
            if exc.code == 404:
                continue
            break
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
            last = exc
            break
        if not isinstance(info, dict) or not isinstance(info.get("model_path"), str):
            raise ValueError(f"{url}{route} did not return model information with model_path")
        return info
    raise ValueError(f"cannot reach an SGLang-API server at {url}: {last}")


def pick_chat_template(model_info: dict[str, Any], override: str | None = None) -> str:
    """The frontend chat template for a server's model.

    ``override`` (``--chat-template``) wins; else the template the server names
    (the reference engine reports ``chat_template_name``); else SGLang's own choice
    from the model path.  A name SGLang does not know is an error.
    """
    templates = chat_templates()
    name = override or model_info.get("chat_template_name")
    if name:
        if name not in templates.chat_template_registry:
            known = ", ".join(sorted(templates.chat_template_registry))
            raise ValueError(f"unknown chat template {name!r}; SGLang knows: {known}")
        return name
    name = templates.get_chat_template_by_model_path(model_info["model_path"]).name
    if name == "default":  # SGLang's regexes know no such path: read the model's own files
        name = template_from_files(model_info["model_path"]) or name
    return name


def template_from_files(model_path: str) -> str | None:
    """The frontend template matching a local model directory's own chat template
    (``chat_template.jinja`` or ``tokenizer_config.json``), if it can be told."""
    from ted_sglang.engine.model_loader import chat_template_name

    path = Path(model_path)
    try:
        config = json.loads((path / "config.json").read_text())
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()
        else:
            template = json.loads((path / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, ValueError):
        return None
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        template = " ".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    if not isinstance(template, str) or not isinstance(config, dict):
        return None
    name = chat_template_name(str(config.get("model_type", "")), template, None)
    return None if name == "default" else name


def takes_images(model_info: dict[str, Any]) -> bool:
    """Whether the server's model reads images (SGLang's ``has_image_understanding``)."""
    return bool(model_info.get("has_image_understanding"))


def connect(url: str, chat_template: str | None = None) -> Endpoint:
    """An :class:`Endpoint` for the SGLang-API server at ``url``."""
    import sglang as sgl

    url = normalize_url(url)
    info = fetch_model_info(url)
    template = pick_chat_template(info, chat_template)
    if template == "default":
        logger.warning(
            "no chat template is known for %s; using SGLang's 'default' (SYSTEM:/USER:). "
            "Pass --chat-template NAME if the model expects another one",
            info["model_path"],
        )
    backend = sgl.RuntimeEndpoint(url, chat_template_name=template)
    return Endpoint(url, info["model_path"], template, takes_images(info), info, backend)


def server_cache_stats(url: str) -> dict[str, Any] | None:
    """The prefix cache figures a server reports in ``/server_info`` (the reference
    engine's ``cache``: prompt, cached and computed tokens, hit rate), if any."""
    try:
        with urllib.request.urlopen(url + "/server_info", timeout=10) as response:
            info = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    cache = info.get("cache") if isinstance(info, dict) else None
    return cache if isinstance(cache, dict) and "hit_rate" in cache else None


def set_request_timeout(seconds: float | None) -> None:
    """Bound every frontend request (SGLang's frontend sets no timeout of its own).

    This sets the process-wide default socket timeout, which the frontend's HTTP
    client uses; ``None`` waits forever.
    """
    if seconds is not None and seconds <= 0:
        raise ValueError("the request timeout must be positive")
    socket.setdefaulttimeout(seconds)


# ---- launching a server --------------------------------------------------------------


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def sglang_server_available(timeout: float = 180.0) -> bool:
    """Whether SGLang's server can start here: its kernel package must load (it needs
    libcuda), which is probed in a child process."""
    import importlib.util

    if importlib.util.find_spec("sgl_kernel") is None:
        return False
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import sgl_kernel, sglang.srt.server_args"],
            capture_output=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def launch_sglang(
    model: str,
    *,
    port: int | None = None,
    extra_args: Sequence[str] = SERVER_ARGS,
    log_path: str | os.PathLike[str] | None = None,
    timeout: float = 1200.0,
) -> Any:
    """Run ``python -m sglang.launch_server`` on ``model`` and wait for ``/health``.

    Returns a :class:`~ted_sglang.engine.launcher.LaunchedEngine` (``url``, ``close()``);
    the server dies with this process (its process group is signalled on close and,
    on Linux, it gets SIGTERM when its parent dies).
    """
    from ted_sglang.engine.launcher import free_port, start_server

    port = port or free_port()
    cmd = [
        sys.executable, "-m", "sglang.launch_server", "--model-path", model,
        "--host", "127.0.0.1", "--port", str(port), *extra_args,
    ]  # fmt: skip
    return start_server(
        cmd, f"http://127.0.0.1:{port}", "the SGLang server", log_path, timeout,
        poll_interval=1.0, preexec_fn=_die_with_parent,
    )  # fmt: skip


def _die_with_parent() -> None:
    """In the child before exec: ask Linux for SIGTERM when the parent dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch(
    kind: LaunchKind,
    model: str,
    log_dir: Path | None = None,
    index: int = 0,
    count: int = 1,
    extra_args: Sequence[str] = (),
) -> Any:
    """Launch the embedded server of ``kind`` on ``model``; returns it running.  When
    ``count`` reference engines share the machine, each gets ``1/count`` of its CPU
    threads (``index`` names its log).  ``extra_args``: more server flags (both kinds
    take ``--allow-auto-truncate``)."""
    name = kind if count == 1 else f"{kind}-{index}"
    log_path = None if log_dir is None else log_dir / f"{name}.log"
    if kind == "engine":
        from ted_sglang.engine.launcher import launch_engine

        extra = [*SERVER_ARGS, *extra_args]
        if count > 1:
            extra += ["--num-threads", str(max(1, (os.cpu_count() or 1) // count))]
        return launch_engine(model, extra_args=extra, log_path=log_path)
    from ted_sglang.engine.model_loader import KNOWN_MODELS, resolve_model

    path = str(resolve_model(model)) if model in KNOWN_MODELS or Path(model).exists() else model
    return launch_sglang(path, extra_args=[*SERVER_ARGS, *extra_args], log_path=log_path)


# ---- the runtime of one command ----------------------------------------------------


@dataclass
class Runtime:
    """The student and teacher endpoints of a run, and the servers it launched.

    ``students`` holds every student endpoint (several for scale-out; ``student`` is
    the first); ``teacher`` is the teacher's endpoint (the first student's when no
    teacher URL was given, see ``placement.teacher_url``)."""

    student: Endpoint
    teacher: Endpoint
    placement: Placement
    servers: list[Any] = field(default_factory=list)
    students: list[Endpoint] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.students:
            self.students = [self.student]
        assert self.students[0] is self.student

    def close(self) -> None:
        for server in reversed(self.servers):
            server.close()
        self.servers.clear()


def split_urls(urls: str | Sequence[str] | None) -> list[str]:
    """URLs given as one string, a list, repeated options or comma-separated lists,
    normalised and in order (each once)."""
    if urls is None:
        return []
    items = [urls] if isinstance(urls, str) else list(urls)
    out = [normalize_url(u) for item in items for u in item.split(",") if u.strip()]
    if items and not out:
        raise ValueError("a server URL must not be empty")
    return list(dict.fromkeys(out))


@contextlib.contextmanager
def open_runtime(
    student_url: str | Sequence[str] | None = None,
    teacher_url: str | None = None,
    *,
    model: str | None = None,
    chat_template: str | None = None,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    log_dir: Path | None = None,
    workers: int = 1,
) -> Iterator[Runtime]:
    """Connect to the given servers, launching the embedded default when there is no
    student URL (see :func:`plan_placement`); launched servers stop on exit.

    ``student_url`` may name several servers (a list, or comma-separated): each is a
    student endpoint, and all must serve the same model.  With no URL, ``workers``
    reference engines are launched (each with its share of the CPU threads).
    """
    urls = split_urls(student_url)
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers!r}")
    if urls and workers not in (1, len(urls)):
        raise ValueError(
            f"--workers {workers} with {len(urls)} --student URL(s): every URL is one worker; "
            "drop --workers, or drop the URLs to launch that many engines"
        )
    cuda = not urls and has_cuda()
    placement = plan_placement(
        urls[0] if urls else None, teacher_url, model,
        has_cuda=cuda, has_sglang_server=cuda and sglang_server_available(),
    )  # fmt: skip
    if placement.launch == "sglang" and workers > 1:
        raise ValueError(
            "--workers launches reference engines on the CPU; with a GPU, start SGLang with "
            "--dp-size N (or an SGLang router) and pass its URL with --student"
        )
    previous_timeout = socket.getdefaulttimeout()
    set_request_timeout(request_timeout)
    servers: list[Any] = []
    with _stop_on_signals():
        try:
            if not urls:
                assert placement.launch is not None and placement.model is not None
                print(
                    f"launching {workers} x the {placement.launch} on {placement.model} ...",
                    file=sys.stderr,
                )
                for n in range(workers):
                    servers.append(launch(placement.launch, placement.model, log_dir, n, workers))
                urls = [server.url for server in servers]
            students = [connect(url, chat_template) for url in urls]
            models = {e.model_path for e in students}
            if len(models) > 1:
                raise ValueError(
                    f"the student servers serve different models ({', '.join(sorted(models))}); "
                    "every worker must serve the same one"
                )
            teacher_at = placement.teacher_url or urls[0]
            teacher = next((e for e in students if e.url == teacher_at), None)
            teacher = teacher or connect(teacher_at, chat_template)
            yield Runtime(students[0], teacher, placement, servers, students)
        finally:
            for server in reversed(servers):
                server.close()
            socket.setdefaulttimeout(previous_timeout)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt in the main thread, so that the
    ``finally`` blocks that stop launched servers run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
