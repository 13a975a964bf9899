"""The ``ted-sglang`` command.

Each command group lives beside the code it drives, in a module that exposes
``register(subparsers)``; registering imports nothing heavy, so the command
starts fast.  A registered parser sets ``func(args) -> int | None``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "ted_sglang.bank.cli",
    "ted_sglang.engine.cli",
    "ted_sglang.engine.model_cli",
    "ted_sglang.data.cli",
    "ted_sglang.loop.cli",
    "ted_sglang.loop.demo",
    "ted_sglang.serve.cli",
    "ted_sglang.report.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ted-sglang",
        description="Training-Free Experience Distillation on SGLang.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
