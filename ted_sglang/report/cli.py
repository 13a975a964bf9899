"""``ted-sglang report``: the HTML report of a distillation run."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` command."""
    parser = subparsers.add_parser(
        "report",
        help="one self-contained HTML page: accuracy, bank size, operations, cache, experiences",
        description="Build an HTML report (plots embedded, nothing fetched when it is opened) "
        "from a distillation log, optionally its bank and eval reports: student accuracy over "
        "the steps, bank size over versions, operations per batch, prompt vs cached tokens and "
        "seconds per phase, the experiences ranked by usage, and accuracy with and without the "
        "bank side by side for each --eval report. Works on a run in progress and after "
        "--resume.",
    )
    parser.add_argument("--log", required=True, type=Path, help="distill's log (BANK.log.jsonl)")
    parser.add_argument("--bank", type=Path, help="the bank file (experiences, every version)")
    parser.add_argument(
        "--eval",
        dest="evals",
        type=Path,
        nargs="+",
        action="extend",
        default=[],
        metavar="EVAL.json",
        help="reports of `eval --out`, shown side by side (repeatable)",
    )
    parser.add_argument("-o", "--out", required=True, type=Path, help="HTML file to write")
    parser.add_argument("--title", help="page title (default: from the log's name)")
    parser.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from ted_sglang.report.build import write_report

    path = write_report(args.out, args.log, args.bank, args.evals, args.title)
    print(f"report written to {path}")
    return 0
