"""The README's "Reproducing the paper on a GPU": every command in it parses (ours with
``ted-sglang``'s parser, SGLang's with the installed SGLang's own), the files the steps
hand each other match, and the same distill -> eval -> report pipeline runs on the
tiny model with only the sizes, data and URLs swapped."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from ted_sglang.bank import ExperienceBank
from ted_sglang.cli import build_parser, main
from ted_sglang.loop.steplog import default_log_path
from ted_sglang.report import PLOT_IDS

README = Path(__file__).parent.parent / "README.md"
SECTION = "## Reproducing the paper on a GPU"


def recipe_commands() -> list[list[str]]:
    """The commands of the section's ``sh`` blocks, as argument lists (environment
    assignments and a trailing ``&`` dropped; shell loops left out)."""
    text = README.read_text()
    assert SECTION in text, "the README lost its GPU recipe"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words.pop(0)
            if words and words[-1] == "&":
                words.pop()
            if words and words[0] not in ("until", "kill"):
                commands.append(words)
    return commands


def ours(name: str) -> list[list[str]]:
    return [c[1:] for c in recipe_commands() if c[0] == "ted-sglang" and c[1] == name]


def test_every_command_parses() -> None:
    commands = recipe_commands()
    parser = build_parser()
    launches = []
    for words in commands:
        if words[0] == "ted-sglang":
            parser.parse_args(words[1:])  # SystemExit (a failure) on a wrong option
        else:
            assert words[:3] == ["python", "-m", "sglang.launch_server"], words
            launches.append(words[3:])
    from sglang.srt.server_args import ServerArgs

    sglang_parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(sglang_parser)
    servers = [sglang_parser.parse_args(args) for args in launches]
    assert [Path(s.model_path).name for s in servers] == [
        "Qwen3-VL-8B-Instruct", "Qwen3-VL-32B-Instruct",
    ]  # fmt: skip
    urls = {f"http://{s.host}:{s.port}" for s in servers}
    for args in ours("distill") + ours("eval"):
        parsed = parser.parse_args(args)
        assert set(parsed.student) <= urls
        assert getattr(parsed, "teacher", None) in (None, *urls)
    text = README.read_text()
    assert "0.627 → 0.702" in text and "0.517 → 0.561" in text


def test_steps_hand_each_other_the_right_files() -> None:
    parser = build_parser()
    distills = [parser.parse_args(a) for a in ours("distill")]
    evals = [parser.parse_args(a) for a in ours("eval")]
    reports = [parser.parse_args(a) for a in ours("report") if "/tmp/" not in " ".join(a)]
    gpu = [d for d in distills if "/tmp/" not in str(d.bank)]
    assert len(gpu) == 2 and all(d.limit == 100 and d.rollouts == 5 for d in gpu)
    assert str(gpu[0].data).endswith("MathVision") and gpu[0].split == "testmini"
    for d, e, r in zip(gpu, [e for e in evals if "/tmp/" not in str(e.bank)], reports, strict=True):
        assert Path(e.bank) == d.bank and e.exclude_trained and e.data == d.data
        assert r.log == default_log_path(d.bank) and r.bank == d.bank and e.out in r.evals


def _shrink(args: list[str], swaps: dict[str, str]) -> list[str]:
    out = list(args)
    for i, word in enumerate(out[:-1]):
        if word in swaps:
            out[i + 1] = swaps[word]
    return out


def test_the_same_pipeline_on_the_tiny_model(
    sample_dir: Path, engine_url: str, tmp_path: Path
) -> None:
    """The MathVision commands themselves, with the tiny engine as student and teacher,
    the bundled sample set as data, tiny budgets and the files under ``tmp_path``."""
    runs = tmp_path / "runs"
    small = {
        "--student": engine_url, "--teacher": engine_url, "--data": str(sample_dir),
        "--rollouts": "2", "--student-max-tokens": "16", "--solution-max-tokens": "16",
        "--critique-max-tokens": "16", "--concurrency": "4",
    }  # fmt: skip
    fast = ["--limit", "2", "--no-progress", "--retries", "0"]

    def local(args: list[str]) -> list[str]:
        return [a.replace("runs/", f"{runs}/") for a in args]

    distill, evaluate, report = (ours(name)[0] for name in ("distill", "eval", "report"))
    assert "mathvision" in " ".join(distill + evaluate + report)
    distill = _shrink(local(distill), {**small, "--split": "train", "--limit": "2"})
    distill += ["--max-ops", "3", "--max-text-chars", "80", "--similarity", "text"]
    assert main([*distill, "--no-progress", "--retries", "0"]) == 0
    assert main([*_shrink(local(evaluate), {**small, "--split": "test"}), *fast]) == 0
    assert main(local(report)) == 0
    page = (runs / "mathvision" / "report.html").read_text()
    expected = set(PLOT_IDS)
    if ExperienceBank.load(runs / "mathvision" / "bank.json").version == 0:
        expected.remove("plot-bank")  # no operation applied: nothing to draw, and it says so
        assert 'id="plot-bank-missing"' in page
    assert set(re.findall(r'<figure class="plot" id="([^"]+)">', page)) == expected


@pytest.mark.parametrize("name", ["distill", "eval", "report"])
def test_cpu_rehearsal_matches_the_gpu_commands(name: str) -> None:
    """The CPU block runs the same commands: its options are the GPU ones' options, less
    what only a GPU run needs and plus the tiny budgets."""
    gpu, cpu = ours(name)[0], ours(name)[-1]
    assert "/tmp/" in " ".join(cpu) and "/tmp/" not in " ".join(gpu)
    options = {w for w in gpu if w.startswith("--")}
    left_out = {"--teacher", "--structured-chains", "--exclude-trained", "--concurrency",
                "--temperature", "--solution-max-tokens", "--critique-max-tokens"}  # fmt: skip
    assert options - left_out <= {w for w in cpu if w.startswith("--")}
