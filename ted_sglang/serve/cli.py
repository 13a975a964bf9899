"""``ted-sglang serve``: the experience-augmented model behind an OpenAI-compatible API;
``ted-sglang serve-usage``: what serving counted, folded into the bank on request."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ted_sglang.serve.settings import (
    ADMIN_TOKEN_ENV,
    API_KEY_ENV,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_PORT,
    DEFAULT_RESERVE_TOKENS,
)

if TYPE_CHECKING:
    from ted_sglang.engine.launcher import LaunchedEngine
    from ted_sglang.serve.settings import ServeSettings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the model with a bank over an OpenAI-compatible API",
        description="OpenAI-compatible /v1/chat/completions and /v1/completions over any "
        "SGLang-API endpoint, with the bank as the system prompt (hot-swapped when the file "
        f"changes). {ADMIN_TOKEN_ENV} turns the /admin routes on; {API_KEY_ENV} makes the "
        "/v1 routes require 'Authorization: Bearer <key>', and /metrics and /openapi.json "
        "too (or the admin token) unless --public-metrics.",
    )
    parser.add_argument("--bank", required=True, type=Path, help="bank file to serve")
    parser.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="URL",
        help="SGLang-API server or router (repeat to balance several); default: launch one",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model of the launched server when there is no --endpoint (default smollm2-135m)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--chat-template", default=None, metavar="NAME", help="SGLang chat template override"
    )
    parser.add_argument("--served-model-name", default=None, help="model id the API reports")
    parser.add_argument(
        "--usage-file", type=Path, default=None, help="usage counts (default <bank>.usage.json)"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=1.0, help="seconds between bank file checks"
    )
    parser.add_argument(
        "--echo-prompt",
        action="store_true",
        help="add the prompt sent to the engine to each response (debugging)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    parser.add_argument(
        "--public-metrics",
        action="store_true",
        help=f"/metrics and /openapi.json without a key even when {API_KEY_ENV} is set",
    )
    parser.add_argument(
        "--accept-any-model",
        action="store_true",
        help="serve requests that name another model (default: 404 model_not_found)",
    )
    parser.add_argument(
        "--allow-auto-truncate",
        action="store_true",
        help="fit a max_tokens beyond the context to the room left (default: 400, as SGLang); "
        "a launched engine gets the flag too",
    )
    parser.add_argument(
        "--bank-reserve-tokens",
        type=int,
        default=DEFAULT_RESERVE_TOKENS,
        metavar="N",
        help="context tokens a bank version must leave for the conversation, or it is "
        f"refused (default {DEFAULT_RESERVE_TOKENS})",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        metavar="N",
        help=f"larger request bodies get 413 (default {DEFAULT_MAX_BODY_BYTES})",
    )
    parser.set_defaults(func=run)

    usage = subparsers.add_parser(
        "serve-usage",
        help="show serving's usage counts; --apply folds them into the bank",
        description="Print the usage file that 'serve' keeps beside the bank (requests per "
        "version, feedback per entry). --apply adds the counts not applied yet to the bank's "
        "usage statistics and saves the bank (its version and rendering do not change).",
    )
    usage.add_argument("--bank", required=True, type=Path)
    usage.add_argument("--usage-file", type=Path, default=None)
    usage.add_argument("--apply", action="store_true", help="fold the counts into the bank")
    usage.set_defaults(func=run_usage)


def run(args: argparse.Namespace) -> int:
    import logging

    from ted_sglang.bank import ExperienceBank

    if args.endpoint and args.model:
        raise ValueError("--model picks the model of a launched server; drop it with --endpoint")
    ExperienceBank.load(args.bank)  # refuse a bad bank before launching anything
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request at INFO
    server = None
    endpoints = list(args.endpoint)
    try:
        if not endpoints:
            server = _launch_default(args.model, args.allow_auto_truncate)
            endpoints = [server.url]
        settings = _settings(args, endpoints)
        asyncio.run(_check_start(settings))  # a bank it cannot serve: a clear error, exit 2
        serve(settings)
    finally:
        if server is not None:
            server.close()
    return 0


async def _check_start(settings: ServeSettings) -> None:
    """Connect and check the bank as the server will, before it binds its port."""
    from ted_sglang.serve.context import ServeContext

    ctx = ServeContext(settings)
    try:
        await ctx.connect()
    finally:
        await ctx.stop()


def serve(settings: ServeSettings) -> None:
    """Run the server until interrupted (SIGINT / SIGTERM)."""
    import uvicorn

    from ted_sglang.serve.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        timeout_graceful_shutdown=10,
    )


def _settings(args: argparse.Namespace, endpoints: list[str]) -> ServeSettings:
    from ted_sglang.serve.settings import ServeSettings

    return ServeSettings.from_env(
        bank_path=args.bank,
        endpoints=endpoints,
        host=args.host,
        port=args.port,
        chat_template=args.chat_template,
        served_model_name=args.served_model_name,
        usage_path=args.usage_file,
        poll_interval_s=args.poll_interval,
        echo_prompt=args.echo_prompt,
        log_level=args.log_level,
        public_metrics=args.public_metrics,
        accept_any_model=args.accept_any_model,
        allow_auto_truncate=args.allow_auto_truncate,
        bank_reserve_tokens=args.bank_reserve_tokens,
        max_body_bytes=args.max_body_bytes,
    )


def _launch_default(model: str | None, allow_auto_truncate: bool = False) -> LaunchedEngine:
    """The embedded default server (SGLang on a GPU, else the reference engine)."""
    from ted_sglang import runtime

    kind = "sglang" if runtime.has_cuda() and runtime.sglang_server_available() else "engine"
    model = model or runtime.DEFAULT_MODEL
    print(f"launching the {kind} on {model} ...", file=sys.stderr)
    extra = ("--allow-auto-truncate",) if allow_auto_truncate else ()
    return runtime.launch(kind, model, extra_args=extra)


def run_usage(args: argparse.Namespace) -> int:
    from ted_sglang.bank import ExperienceBank
    from ted_sglang.serve.usage_log import apply_usage, usage_entries

    path = args.usage_file or args.bank.with_name(args.bank.name + ".usage.json")
    try:
        usage = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (has 'serve' run with this bank?)") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except RecursionError:
        raise ValueError(f"{path}: not a usage file (JSON nested too deeply)") from None
    except ValueError as exc:  # not JSON, not UTF-8
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    try:
        usage_entries(usage)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not args.apply:
        print(json.dumps(usage, indent=1))
        return 0

    def fold(bank: ExperienceBank) -> tuple[int, int]:
        return apply_usage(bank, usage), bank.version

    # Read, fold and write under the bank's lock: a concurrent writer (distill) loses nothing.
    added, version = ExperienceBank.update_file(args.bank, fold)
    print(f"added {added} counts to {args.bank} (version {version})")
    return 0
