"""``ted-sglang report``: built from a real tiny-model run (distill -> eval -> report), read
back as HTML, opened in headless Chromium, and fed damaged, resumed and hostile files."""

from __future__ import annotations

import base64
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from distill_checks import run_distill
from headless_chromium import find_chromium, view_page

from ted_sglang.bank import ExperienceBank
from ted_sglang.cli import main
from ted_sglang.loop.steplog import read_log
from ted_sglang.report import PLOT_IDS, build_report
from ted_sglang.report.sources import load_run_log

ARTIFACTS = Path(__file__).parent / "artifacts"
EVAL = ["--rollouts", "2", "--student-max-tokens", "16", "--no-progress", "--limit", "4"]
DATA_URL = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@dataclass(frozen=True)
class Run:
    bank: Path
    log: Path
    evals: list[Path]


@pytest.fixture(scope="module")
def run(sample_dir: Path, engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A real run on the tiny model: 4 samples in batches of 2 under a 2-entry budget
    (so compression is likely), then eval with the bank and without one."""
    work = tmp_path_factory.mktemp("report-run")
    bank = work / "bank.json"
    extra = ["--student", engine_url, "--no-skip-uniform", "--limit", "4", "--batch-size", "2"]
    extra += ["--temperature", "0", "--teacher-temperature", "0"]  # the same run every time
    assert run_distill(sample_dir, bank, *extra, "--max-entries", "2") == 0
    assert ExperienceBank.load(bank).version > 0, "the teacher applied no operation"
    evals = [work / "eval-bank.json", work / "eval-none.json"]
    for out, which in zip(evals, (str(bank), "none"), strict=True):
        args = ["eval", "--data", str(sample_dir), "--student", engine_url, "--bank", which]
        assert main([*args, *EVAL, "--out", str(out)]) == 0
    return Run(bank, work / "bank.log.jsonl", evals)


def report_args(run: Run, out: Path, *, bank: Path | None = None, log: Path | None = None):
    args = ["report", "--log", str(log or run.log), "-o", str(out)]
    args += ["--bank", str(bank or run.bank), "--eval", *map(str, run.evals)]
    return args


def plots_in(page: str) -> set[str]:
    return set(re.findall(r'<figure class="plot" id="([^"]+)">', page))


def test_report_from_a_real_run(run: Run, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report.html"
    assert main(report_args(run, out)) == 0
    assert f"report written to {out}" in capsys.readouterr().out
    page = out.read_text()
    assert plots_in(page) == set(PLOT_IDS)
    images = DATA_URL.findall(page)
    assert len(images) == len(PLOT_IDS)
    assert all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in images)
    # Self-contained: no script, nothing fetched from anywhere.
    assert "<script" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)
    bank = ExperienceBank.load(run.bank)
    rows = re.search(r'<table id="experiences">.*?</table>', page, re.S)
    assert rows and rows.group(0).count("<tr>") == len(bank) + 1
    records, _ = read_log(run.log)
    steps = [r for r in records if r["event"] == "step"]
    assert f"{len(steps)} of {len(steps)}" in page
    assert 'id="notes"' not in page  # a clean log needs no warning
    assert "eval-bank.json" in page and "eval-none.json" in page


def test_report_in_headless_chromium(run: Run, tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip(
            "chromium is not installed (Debian: apt-get install chromium; .ci/run installs it "
            "when it can)"
        )
    out = tmp_path / "report.html"
    assert main(report_args(run, out)) == 0
    view = view_page(out)
    shot = tmp_path / "report.png"
    shot.write_bytes(view.screenshot)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "report.png")
    assert view.errors == []
    assert view.scripts == 0
    assert {p["id"] for p in view.plots} == set(PLOT_IDS)
    for plot in view.plots:
        assert plot["loaded"] and plot["width"] >= 800 and plot["height"] >= 300, plot
    assert view.screenshot.startswith(b"\x89PNG") and view.height > 2000


def test_browser_check_sees_errors(tmp_path: Path) -> None:
    """The browser check is not blind: a broken image and a console error are caught."""
    if find_chromium() is None:
        pytest.skip("chromium is not installed")
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<figure class="plot" id="p"><img src="missing.png"></figure>'
        '<script>console.error("boom")</script>'
    )
    view = view_page(bad)
    assert view.plots == [{"id": "p", "loaded": False, "width": 0, "height": 0}]
    assert any("boom" in e for e in view.errors)
    assert any("missing.png" in e for e in view.errors)


def test_log_being_written_crashed_and_resumed(run: Run, tmp_path: Path) -> None:
    """A log with a cut last line, a batch with no batch line yet, repeated lines (a
    resumed run that did not reconcile) and failures still makes a report of what is
    committed, and says what it left out."""
    lines = run.log.read_bytes().splitlines(keepends=True)
    records = [json.loads(line) for line in lines]
    steps = [r for r in records if r["event"] == "step"]
    pending = {**steps[0], "sample_id": "new-1", "step": len(steps) + 1, "batch": 99}
    failed = {"event": "failed", "sample_id": steps[1]["sample_id"], "error": "timeout"}
    log = tmp_path / "bank.log.jsonl"
    log.write_bytes(
        json.dumps(failed).encode() + b"\n" + b"".join(lines) + lines[0] + lines[1]
        + json.dumps(pending).encode() + b"\n" + lines[2][: len(lines[2]) // 2]
    )  # fmt: skip
    parsed = load_run_log(log)
    assert [s.sample_id for s in parsed.steps] == [r["sample_id"] for r in steps]
    text = " ".join(parsed.notes)
    for expected in ("1 step line(s) of a batch with no batch line", "1 unreadable line",
                     "2 repeated line(s)", "1 failed attempt(s)", "1 of them retried"):  # fmt: skip
        assert expected in text, text
    page = build_report(log, run.bank, run.evals)
    assert plots_in(page) == set(PLOT_IDS)
    assert 'id="notes"' in page and "2 repeated line(s)" in page


def test_an_overlong_line_is_skipped_not_read(run: Run, tmp_path: Path, monkeypatch) -> None:
    from ted_sglang.report import sources

    lines = run.log.read_bytes().splitlines(keepends=True)
    limit = max(len(line) for line in lines)
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", limit)
    junk = json.dumps({"event": "step", "padding": "x" * (3 * limit)}).encode() + b"\n"
    log = tmp_path / "bank.log.jsonl"
    log.write_bytes(lines[0] + junk + b"".join(lines[1:]))
    parsed = sources.load_run_log(log)
    assert len(parsed.steps) == sum(b'"event": "step"' in line for line in lines)
    assert parsed.notes == ["1 unreadable line(s) (e.g. a last line being written)"]


def test_log_ahead_of_its_bank(run: Run, tmp_path: Path) -> None:
    """After a crash between the log write and the bank save, the bank (here: the backup
    of its previous version) lists fewer samples as done than the log: the report keeps
    to the bank's, as ``--resume`` would."""
    older = ExperienceBank.load_file(run.bank.with_name("bank.json.bak"))
    done = older.meta.extra["distill"]["done"]
    records, _ = read_log(run.log)
    assert len(done) < sum(r["event"] == "step" for r in records)
    parsed = load_run_log(run.log, done)
    assert [s.sample_id for s in parsed.steps] == done
    assert any("does not list as done" in note for note in parsed.notes)
    out = tmp_path / "r.html"
    assert main(report_args(run, out, bank=run.bank.with_name("bank.json.bak"))) == 0
    assert f"{len(done)} of " in out.read_text()


def test_untrusted_text_is_escaped(run: Run, tmp_path: Path) -> None:
    bank = ExperienceBank.load(run.bank)
    hostile = "<script>alert('x')</script> & \"quoted\" $\\frac{a}{b}$ <img src=x onerror=y>"
    report = bank.apply({"operations": [{"op": "add", "text": hostile}]}, step=99)
    assert report.ok, report.summary()
    bank_path = tmp_path / "bank.json"
    bank.save(bank_path)
    data = json.loads(run.evals[0].read_text())
    data["conditions"]["bank"]["by_category"] = {
        "$x^2$ <b>bold</b>": {"num_samples": 1, "pass_at_1": 1.0, "mean_at_n": 0.5},
        "a" * 500: {"num_samples": 1, "pass_at_1": 0.0, "mean_at_n": 0.0},
    }
    eval_path = tmp_path / "eval<x>.json"
    eval_path.write_text(json.dumps(data))
    page = build_report(run.log, bank_path, [eval_path])
    assert "<script" not in page and "<img src=x" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in page
    assert "$x^2$ &lt;b&gt;bold&lt;/b&gt;" in page and "eval&lt;x&gt;.json" in page
    assert plots_in(page) == set(PLOT_IDS)


def test_empty_log_and_bad_files(tmp_path: Path, run: Run, capsys) -> None:
    log = tmp_path / "empty.log.jsonl"
    log.write_bytes(b'{"event": "step", "step": 1, "sam')  # the first line, being written
    page = build_report(log)
    assert plots_in(page) == set()
    assert "No finished step in the log yet" in page and "1 unreadable line" in page
    out = str(tmp_path / "r.html")
    cases = [
        (["--log", str(tmp_path / "nope.jsonl")], "no such log file"),
        (["--log", str(log), "--bank", str(log)], "not valid JSON"),
        (["--log", str(log), "--eval", str(log)], "not a JSON eval report"),
        (["--log", str(log), "--eval", str(run.bank)], "not an eval report"),
        (["--log", str(log), "--eval", *[str(run.evals[0])] * 13], "at most 12 --eval reports"),
    ]
    for args, message in cases:
        assert main(["report", *args, "-o", out]) == 2
        assert message in capsys.readouterr().err


def hand_log(path: Path, *extra: str) -> Path:
    """A log of 4 steps in 2 committed batches, written by hand (each batch's count of
    dropped proposals too large for a float), then ``extra`` lines."""
    lines = []
    for i in range(4):
        lines.append(json.dumps({
            "event": "step", "step": i, "sample_id": f"s{i}", "batch": i // 2,
            "student_correct": 1, "student_total": 2,
            "tokens": {"student": {"prompt": 100, "cached": 50, "completion": 9}},
            "seconds": {"student": 1.0, "extraction": 0.5},
        }))  # fmt: skip
    for b in range(2):
        results = [{"op": "add", "status": "applied"}]
        lines.append(json.dumps({
            "event": "batch", "batch": b, "steps": [2 * b, 2 * b + 1], "bank_size": b + 1,
            "bank_version_before": b, "bank_version_after": b + 1, "seconds": 2.0,
            "operations": {"results": results}, "reconcile": {"dropped": 10**400},
        }))  # fmt: skip
    path.write_text("\n".join([*lines, *extra]) + "\n")
    return path


def test_hostile_numbers_and_shapes_make_a_report(tmp_path: Path, capsys) -> None:
    """Numbers too large for a float, NaN and infinity (Python's json reads them), a
    number of thousands of digits, deep nesting, mathtext, and fields of the wrong type
    in the log, an eval report or the bank's checkpoint: shown as missing, never a crash."""
    from bank_files import write_bank

    log = hand_log(
        tmp_path / "bank.log.jsonl",
        '{"event": "step", "step": ' + "9" * 5000 + "}",
        "[" * 100_000 + "]" * 100_000,
        json.dumps({"event": "step", "step": 10**400, "sample_id": "huge", "batch": 1,
                    "student_correct": 1, "student_total": 2}),
    )  # fmt: skip
    bank = write_bank(tmp_path / "bank.json", "Check the units before the final answer.")
    bank.meta.extra["distill"] = "not a checkpoint"
    bank.save(tmp_path / "bank.json")
    odd = {"pass_at_1": float("nan"), "mean_at_n": float("inf"), "num_samples": 2}
    report = {
        "conditions": {
            "no_bank": {**odd, "by_category": {"$\\frac{$": odd}},
            "bank": {"pass_at_1": 10**400, "mean_at_n": 0.5, "by_category": {"$\\frac{$": odd}},
        },
        "rollouts": [2],
        "delta": [1],
    }
    eval_path, other = tmp_path / "eval.json", tmp_path / "other.json"
    eval_path.write_text(json.dumps(report))
    other.write_text(json.dumps({**report, "rollouts": "$\\frac{$", "delta": {"pass_at_1": 1e999}}))
    page = build_report(log, tmp_path / "bank.json", [eval_path, other])
    assert plots_in(page) == set(PLOT_IDS)
    assert "nan%" not in page and "inf%" not in page
    assert "2 unreadable line(s)" in page and "1 line(s) without the fields" in page
    assert "mean@N" in page

    out = str(tmp_path / "r.html")
    for text in ("[" * 100_000, '{"conditions": {"a": {}}, "n": ' + "9" * 5000 + "}"):
        eval_path.write_text(text)
        assert main(["report", "--log", str(log), "--eval", str(eval_path), "-o", out]) == 2
        assert f"{eval_path}: not a JSON eval report" in capsys.readouterr().err


def test_eval_reports_are_bounded(tmp_path: Path, capsys) -> None:
    """An eval report of thousands of conditions or categories is refused or cut, not drawn
    for minutes."""
    from ted_sglang.report.build import MAX_CATEGORY_ROWS

    log = hand_log(tmp_path / "bank.log.jsonl")
    figures = {"pass_at_1": 0.5, "mean_at_n": 0.5, "num_samples": 1}
    by_category = {f"k{i:04d}": figures for i in range(MAX_CATEGORY_ROWS + 7)}
    conditions = {"no_bank": {**figures, "by_category": by_category}}
    eval_path = tmp_path / "eval.json"
    eval_path.write_text(json.dumps({"conditions": conditions}))
    page = build_report(log, None, [eval_path])
    rows = re.search(r'<table id="eval-categories">.*?</table>', page, re.S)
    assert rows and rows.group(0).count("<tr>") == MAX_CATEGORY_ROWS + 1
    assert "7 more categories not listed" in page

    many = {f"c{i}": {**figures, "by_category": {}} for i in range(1000)}
    eval_path.write_text(json.dumps({"conditions": many}))
    out = str(tmp_path / "r.html")
    assert main(["report", "--log", str(log), "--eval", str(eval_path), "-o", out]) == 2
    assert "1000 conditions, more than an eval report has" in capsys.readouterr().err
