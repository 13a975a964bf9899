"""``ted-sglang engine``: serve SGLang's native HTTP API from the reference engine."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

from ted_sglang.engine.config import (
    ATTENTION_BACKENDS,
    DEFAULT_CACHE_TOKENS,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_PREFILL_TOKENS,
    DEFAULT_PORT,
    EngineConfig,
)
from ted_sglang.engine.limits import DEFAULT_MAX_REQUEST_BYTES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "engine",
        help="serve SGLang's native HTTP API on the CPU (the reference engine)",
        description="Serve a model over SGLang's native HTTP API (/generate, /model_info, "
        "/server_info, /flush_cache, /health, /ready, /start_profile, /stop_profile) with a "
        "radix prefix cache and xgrammar.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="model directory, .gguf file, or known name (smollm2-135m)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--cache-tokens",
        type=int,
        default=DEFAULT_CACHE_TOKENS,
        help="radix cache budget in tokens (0 disables the cache)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        help="requests in flight per step",
    )
    parser.add_argument(
        "--max-prefill-tokens",
        type=int,
        default=DEFAULT_MAX_PREFILL_TOKENS,
        help="prompt tokens computed per step (longer prompts go in chunks)",
    )
    parser.add_argument(
        "--attention-backend",
        default="shared-prefix",
        choices=ATTENTION_BACKENDS,
        help="shared-prefix: cached prefix KV stored once (in the radix cache) and read "
        "once per step by all requests decoding over it; per-request: a copy each",
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16"),
        help="default: float32 on the CPU, bfloat16 on CUDA",
    )
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--random-seed", type=int, default=0)
    parser.add_argument(
        "--constrained-json-disable-any-whitespace",
        action="store_true",
        help="compact JSON under json_schema (no free whitespace)",
    )
    parser.add_argument(
        "--constrained-json-max-whitespace-cnt",
        type=int,
        default=None,
        help="at most this many consecutive whitespace chars in JSON output",
    )
    add_sglang_arguments(parser)
    add_limit_arguments(parser)
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error", "critical")
    )
    parser.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)


def add_sglang_arguments(parser: argparse.ArgumentParser) -> None:
    """Server arguments that mean what SGLang's arguments of the same names mean."""
    parser.add_argument(
        "--incremental-streaming-output",
        action="store_true",
        help="stream chunks carry only their new text, output ids and output logprobs "
        "(default: cumulative, as SGLang)",
    )
    parser.add_argument(
        "--stream-interval",
        type=int,
        default=1,
        help="tokens between stream chunks (a request's sampling_params.stream_interval wins)",
    )
    parser.add_argument(
        "--enable-priority-scheduling",
        action="store_true",
        help="admit waiting requests by their 'priority' (higher first), then by arrival",
    )
    parser.add_argument(
        "--schedule-low-priority-values-first",
        action="store_true",
        help="with --enable-priority-scheduling: lower priority values first",
    )
    parser.add_argument(
        "--enable-return-hidden-states",
        action="store_true",
        help="allow requests with return_hidden_states",
    )
    parser.add_argument(
        "--profile-dir",
        default=None,
        help="where /start_profile writes traces, and the only place a request's output_dir "
        "may point (default: $SGLANG_TORCH_PROFILER_DIR, else the system temp dir)",
    )


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """Bounds on what clients may send (``ted_sglang.engine.limits``)."""
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="larger request bodies get 413 before they are parsed (default: 32 MiB)",
    )
    parser.add_argument(
        "--allow-auto-truncate",
        action="store_true",
        help="cut an input or max_new_tokens that passes the context down to fit, "
        "instead of answering 400 (as SGLang's flag)",
    )
    parser.add_argument(
        "--allow-local-images",
        metavar="DIR",
        default=None,
        help="image_data may name files inside DIR (symlinks resolved; at most 16 MiB "
        "each); by default no path is read, only base64 and data URIs",
    )


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=args.model,
        host=args.host,
        port=args.port,
        cache_tokens=args.cache_tokens,
        max_batch_size=args.max_batch_size,
        max_prefill_tokens=args.max_prefill_tokens,
        attention_backend=args.attention_backend,
        device=args.device,
        dtype=args.dtype,
        num_threads=args.num_threads,
        random_seed=args.random_seed,
        json_any_whitespace=not args.constrained_json_disable_any_whitespace,
        json_max_whitespace_cnt=args.constrained_json_max_whitespace_cnt,
        log_level=args.log_level,
        incremental_streaming_output=args.incremental_streaming_output,
        stream_interval=args.stream_interval,
        enable_priority_scheduling=args.enable_priority_scheduling,
        schedule_low_priority_values_first=args.schedule_low_priority_values_first,
        enable_return_hidden_states=args.enable_return_hidden_states,
        profile_dir=args.profile_dir,
        max_request_bytes=args.max_request_bytes,
        allow_auto_truncate=args.allow_auto_truncate,
        allow_local_images=args.allow_local_images,
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.parent_pid:
        _exit_with_parent(args.parent_pid)
    serve(config)
    return 0


def serve(config: EngineConfig) -> None:
    """Load the model and serve until interrupted."""
    import logging

    import uvicorn

    from ted_sglang.engine.server import create_app

    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(config)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        access_log=config.log_level == "debug",
        timeout_graceful_shutdown=5,
    )


def _exit_with_parent(pid: int) -> None:
    """Leave when the process that launched us is gone (so no engine outlives its owner)."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                print("engine: parent process exited; shutting down", file=sys.stderr)
                os._exit(0)
            except PermissionError:
                pass

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ted_sglang.engine")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
