"""The distillation report: one self-contained HTML page from a run's files.

    from ted_sglang.report import write_report

    write_report("report.html", "bank.log.jsonl", bank_path="bank.json",
                 eval_paths=["eval.json"])

Built from the log, the bank and ``eval --out`` reports alone, so it works on a run
in progress, after a crash and after ``--resume``.
"""

from ted_sglang.report.build import PLOT_IDS, build_report, write_report

__all__ = ["PLOT_IDS", "build_report", "write_report"]
