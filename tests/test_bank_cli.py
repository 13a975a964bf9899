"""``ted-sglang bank ...`` on real files, in a subprocess and in-process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ted_sglang.bank import ExperienceBank
from ted_sglang.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ted_sglang.cli", "bank", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def big_bank(tmp_path_factory):
    """200 entries built over 25 versions of 8 adds, with some usage."""
    path = tmp_path_factory.mktemp("cli") / "bank.json"
    bank = ExperienceBank(student_model="tiny-student")
    for v in range(25):
        ops = [
            {"op": "add", "text": f"Experience {v * 8 + i}: check case {i} of step {v} twice."}
            for i in range(8)
        ]
        report = bank.apply({"operations": ops}, step=v, meta={"source": "teacher"})
        assert report.ok
    bank.record_shown(bank.ids, step=30)
    bank.record_cited(helpful=["E5"], harmful=["E9", "E10"], step=30)
    bank.meta.add_training_samples([f"s{i}" for i in range(25)])
    bank.save(path)
    return bank, path


def test_stats_on_200_entries(big_bank):
    bank, path = big_bank
    done = run_cli("stats", str(path))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "version: 25" in out and "entries: 200" in out
    assert "student model: tiny-student" in out and "training samples: 25" in out
    assert "versions by source: teacher 25" in out
    low = out.split("lowest utility:")[1]
    assert low.lstrip().startswith("[E10]") or low.lstrip().startswith("[E9]")

    done = run_cli("stats", str(path), "--json")
    figures = json.loads(done.stdout)
    assert figures["entries"] == 200 and figures["rendered_chars"] == len(bank.render())
    assert figures["usage_totals"]["shown"] == 200
    assert {row["id"] for row in figures["lowest_utility"][:2]} == {"E9", "E10"}
    assert figures["highest_utility"][0]["id"] == "E5"


def test_show_and_diff(big_bank, capsys):
    bank, path = big_bank
    done = run_cli("show", str(path))
    assert done.returncode == 0 and done.stdout == bank.render()

    assert main(["bank", "show", str(path), "--version", "1"]) == 0
    assert capsys.readouterr().out == bank.at_version(1).render()

    assert main(["bank", "show", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [e["id"] for e in shown["entries"]] == bank.ids

    assert main(["bank", "diff", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("version 24 -> 25: 8 added, 0 removed, 0 changed")
    assert "+ [E200]" in out and "[E192]" not in out

    assert main(["bank", "diff", str(path), "0", "2"]) == 0
    assert "16 added" in capsys.readouterr().out


def test_validate_schema_and_damaged_files(tmp_path, capsys):
    path = tmp_path / "b.json"
    bank = ExperienceBank()
    bank.apply({"operations": [{"op": "add", "text": "Check the units first."}]})
    bank.save(path)
    bank.apply({"operations": [{"op": "add", "text": "Draw a diagram first."}]})
    bank.save(path)

    assert main(["bank", "validate", str(path)]) == 0
    assert capsys.readouterr().out.count("ok: ") == 2

    assert main(["bank", "schema", str(path)]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == bank.operations_schema()

    path.write_bytes(path.read_bytes()[:40])
    assert main(["bank", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"bad: {path}" in out and "ok: " in out

    done = run_cli("show", str(path))
    assert done.returncode == 2 and str(path) in done.stderr and "--recover" in done.stderr
    assert "Traceback" not in done.stderr
    done = run_cli("show", str(path), "--recover")
    assert done.returncode == 0 and done.stdout == "[E1] Check the units first.\n"
