"""``ted-sglang bank show|diff|stats|validate|schema FILE``: inspect a bank file;
``ted-sglang bank merge A B -o C``: merge banks distilled separately."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ted_sglang.bank.bank import ExperienceBank


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bank`` command group."""
    parser = subparsers.add_parser(
        "bank", help="inspect an experience bank file", description="Inspect an experience bank."
    )
    actions = parser.add_subparsers(dest="bank_command", metavar="ACTION", required=True)

    show = _action(actions, "show", _show, "print the rendered bank (the student's prefix)")
    show.add_argument("--version", type=int, help="show this version (default: the last)")
    show.add_argument("--json", action="store_true", help="entries, usage and meta as JSON")

    diff = _action(actions, "diff", _diff, "entries added, removed and changed between versions")
    diff.add_argument("version_a", type=int, nargs="?", help="default: the version before B")
    diff.add_argument("version_b", type=int, nargs="?", help="default: the last version")

    stats = _action(actions, "stats", _stats, "sizes, usage and the least/most useful entries")
    stats.add_argument("--top", type=int, default=5, help="entries listed at each end (5)")
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")

    _action(actions, "validate", _validate, "check the file (and its backup); exit 1 if bad")
    _action(actions, "schema", _schema, "print the JSON Schema of an operations document")
    _merge_parser(actions)


def _merge_parser(actions: Any) -> None:
    text = "merge banks distilled separately into one (fresh ids, summed usage)"
    merge = actions.add_parser(
        "merge",
        help=text,
        description="Merge banks distilled separately: exact and near-duplicate entries become "
        "one (usage summed), training samples are united, and conflicts are reported "
        "(near-duplicates whose texts differ, different student models, training samples "
        "seen by more than one bank). With --teacher, a teacher writes one text for each "
        "group of near-duplicates; without, a group keeps the text of its first entry.",
    )
    merge.add_argument("files", nargs="+", type=Path, help="bank files (two or more)")
    merge.add_argument("-o", "--out", required=True, type=Path, help="the merged bank's file")
    merge.add_argument(
        "--threshold", type=float, default=0.9, help="near-duplicate similarity (0.9)"
    )
    merge.add_argument(
        "--similarity",
        choices=("embedding", "text"),
        default="embedding",
        help="sentence embeddings (all-MiniLM-L6-v2; text if not installed) or text",
    )
    merge.add_argument("--teacher", metavar="URL", help="SGLang-API server that merges texts")
    merge.add_argument("--chat-template", help="the teacher's chat template (default: detected)")
    merge.add_argument("--force", action="store_true", help="overwrite --out")
    merge.add_argument("--recover", action="store_true", help="read FILE.bak if FILE is corrupt")
    merge.add_argument("--json", action="store_true", help="print the outcome as JSON")
    merge.set_defaults(func=_merge)


def _action(actions: Any, name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=help_text, description=help_text.capitalize() + ".")
    parser.add_argument("file", help="bank file (JSON)")
    if name != "validate":
        parser.add_argument(
            "--recover", action="store_true", help="read FILE.bak if FILE is corrupt"
        )
    parser.set_defaults(func=func)
    return parser


def _load(args: argparse.Namespace, version: int | None = None) -> ExperienceBank:
    from ted_sglang.bank.bank import ExperienceBank

    return ExperienceBank.load(args.file, version=version, recover=args.recover)


def _show(args: argparse.Namespace) -> int:
    bank = _load(args, args.version)
    if args.json:
        data = bank.to_dict()
        out = {k: data[k] for k in ("version", "next_id", "meta", "limits", "entries")}
        print(json.dumps(out, ensure_ascii=False, indent=1))
    else:
        print(bank.render(), end="")
    return 0


def _diff(args: argparse.Namespace) -> int:
    bank = _load(args)
    print(bank.diff(args.version_a, args.version_b).summary())
    return 0


def _stats(args: argparse.Namespace) -> int:
    from ted_sglang.bank.compression import CompressionPolicy
    from ted_sglang.bank.render import approx_tokenize

    bank = _load(args)
    policy = CompressionPolicy()
    entries = bank.entries
    text = bank.render()
    totals = Counter()
    for e in entries:
        for name in ("shown", "correct", "wrong", "helpful", "harmful"):
            totals[name] += getattr(e.usage, name)
    sources = Counter(str(r.meta.get("source", "unknown")) for r in bank.history)
    ranked = sorted(entries, key=lambda e: (policy.utility(e), e.id))
    top = max(args.top, 0)
    figures = {
        "file": str(bank.loaded_from),
        "version": bank.version,
        "entries": len(entries),
        "next_id": bank.next_id,
        "rendered_chars": len(text),
        "rendered_tokens_estimate": len(approx_tokenize(text)),
        "student_model": bank.meta.student_model,
        "training_samples": len(bank.meta.training_sample_ids),
        "created_at": bank.meta.created_at,
        "usage_totals": dict(totals),
        "versions_by_source": dict(sorted(sources.items())),
        "lowest_utility": [_ranked(policy, e) for e in ranked[:top]],
        "highest_utility": [_ranked(policy, e) for e in reversed(ranked[-top:] if top else [])],
    }
    if args.json:
        print(json.dumps(figures, ensure_ascii=False, indent=1))
        return 0
    print(f"file: {figures['file']}")
    print(f"version: {bank.version} (next id {bank.next_id})")
    print(f"entries: {len(entries)}")
    print(f"rendered: {len(text)} characters, ~{figures['rendered_tokens_estimate']} tokens")
    print(f"student model: {bank.meta.student_model or '(not set)'}")
    print(f"training samples: {figures['training_samples']}")
    print(f"created at: {bank.meta.created_at}")
    print("usage totals: " + ", ".join(f"{k} {totals[k]}" for k in sorted(totals)))
    by_source = ", ".join(f"{k} {v}" for k, v in sorted(sources.items()))
    print(f"versions by source: {by_source or '(none)'}")
    for title in ("lowest_utility", "highest_utility"):
        if figures[title]:
            print(title.replace("_", " ") + ":")
            for row in figures[title]:
                print(f"  [{row['id']}] {row['utility']:.3f}  {_usage_text(row)}  {row['text']}")
    return 0


def _ranked(policy: Any, entry: Any) -> dict[str, Any]:
    text = entry.text if len(entry.text) <= 60 else entry.text[:57] + "..."
    return {
        "id": entry.id,
        "utility": round(policy.utility(entry), 4),
        "text": text,
        **entry.usage.to_dict(),
    }


def _usage_text(row: dict[str, Any]) -> str:
    return (
        f"shown {row['shown']} correct {row['correct']} wrong {row['wrong']} "
        f"helpful {row['helpful']} harmful {row['harmful']}"
    )


def _validate(args: argparse.Namespace) -> int:
    from ted_sglang.bank.bank import ExperienceBank
    from ted_sglang.bank.storage import BankFileError, backup_path

    code = 0
    backup = backup_path(args.file)
    for path in (args.file, backup) if backup.exists() else (args.file,):
        try:
            bank = ExperienceBank.load_file(path)
        except BankFileError as exc:
            print(f"bad: {exc}")
            code = 1
            continue
        print(f"ok: {path}: version {bank.version}, {len(bank)} entries")
    return code


def _schema(args: argparse.Namespace) -> int:
    bank = _load(args)
    print(json.dumps(bank.operations_schema(), indent=1))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from ted_sglang.bank.bank import ExperienceBank
    from ted_sglang.bank.embedding import load_similarity
    from ted_sglang.bank.merge import build_merged_bank, plan_merge

    if len(args.files) < 2:
        raise ValueError("bank merge needs at least two bank files")
    if args.out.exists() and not args.force:
        raise ValueError(f"{args.out} already exists: pass --force to overwrite it")
    banks = [ExperienceBank.load(path, recover=args.recover) for path in args.files]
    similarity, _ = load_similarity(args.similarity)
    # Names recorded in the merged bank: a byte that is not UTF-8 becomes U+FFFD.
    labels = [os.fsencode(path).decode("utf-8", "replace") for path in args.files]
    plan = plan_merge(banks, labels, similarity=similarity, threshold=args.threshold)
    texts: dict[int, str] = {}
    notes: dict[int, str] = {}
    if args.teacher and plan.near_duplicate_groups:
        # The teacher step lives outside the bank package: plan -> texts -> build.
        from ted_sglang.loop.config import GenerationConfig
        from ted_sglang.loop.merging import merge_groups
        from ted_sglang.runtime import connect

        teacher = connect(args.teacher, args.chat_template)
        texts, notes, _ = merge_groups(teacher.backend, plan, banks[0].limits, GenerationConfig())
    merged = build_merged_bank(plan, banks, texts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    merged.save(args.out, new_file=not args.force)  # under the lock: no race with the check
    counts = merged.meta.extra["merge"]["counts"]
    if args.json:
        out = {
            "out": str(args.out),
            "counts": counts,
            "conflicts": plan.conflicts(),
            "teacher_notes": {str(k): v for k, v in notes.items()},
            "student_model": merged.meta.student_model,
            "training_samples": len(merged.meta.training_sample_ids),
        }
        print(json.dumps(out, ensure_ascii=False, indent=1))
        return 0
    print(plan.summary())
    for index, note in sorted(notes.items()):
        print(f"group {index}: kept its first text; {note}", file=sys.stderr)
    print(
        f"wrote {args.out}: {len(merged)} entries ({counts['teacher_texts']} written by the "
        f"teacher), {len(merged.meta.training_sample_ids)} training samples, student model "
        f"{merged.meta.student_model or '(none: the banks differ or name none)'}"
    )
    return 0
