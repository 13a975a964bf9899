"""The GPU kit (``bench/gpu/``): what it packs, its size, and a dry run of ``run.sh`` here.

The offline tests build the kit from a wheel cache holding a small stand-in for
FlashInfer's wheel (the trimming rules see real paths and sizes). The slow ones download
the real wheels (pip, cached across runs) and rehearse the GPU run on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "bench" / "gpu" / "build_kit.py"
RUN = ROOT / "bench" / "gpu" / "run.sh"
SUMMARY = ROOT / "bench" / "gpu" / "summary.py"
LIMIT = 64 * 1024 * 1024
MIB = 1024 * 1024


def run_build(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BUILD), "--out", str(out), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def build(out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = run_build(out, "--cache", str(cache), *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def tar_names(archive: Path) -> dict[str, int]:
    with tarfile.open(archive) as tar:
        return {m.name: m.size for m in tar.getmembers()}


def write_fake_flashinfer(cache: Path) -> None:
    """A wheel with FlashInfer's layout: what the kit keeps and what it drops."""
    members = {
        "flashinfer/__init__.py": b"__version__ = '0.7.2'\n",
        "flashinfer/__pycache__/cascade.cpython-312.pyc": b"\0" * 100,
        "flashinfer/big_table.py": b"#" * (2 * MIB),  # .py files stay whatever their size
        "flashinfer/cubins/sm100.bin": b"\1" * (2 * MIB),  # large non-.py: dropped
        "flashinfer/data/csrc/cascade.cu": b"// merge\n",
        "flashinfer/data/csrc/moe/sm100_kernel.cu": b"// other chips\n",
        "flashinfer/data/include/flashinfer/huge.cuh": b"/" * (2 * MIB),  # headers stay
        "flashinfer/data/cutlass/include/cute.hpp": b"/" * (2 * MIB),
        "flashinfer_python-0.7.2.dist-info/METADATA": b"Name: flashinfer-python\n",
    }
    cache.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(cache / "flashinfer_python-0.7.2-py3-none-any.whl", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_kit_build_trims_flashinfer_and_prints_the_call(tmp_path: Path) -> None:
    cache, kit = tmp_path / "cache", tmp_path / "kit"
    write_fake_flashinfer(cache)
    proc = build(kit, cache, "--skip-downloads")
    kept = tar_names(kit / "flashinfer-python-0.7.2.tar.xz")
    assert set(kept) == {
        "flashinfer/__init__.py",
        "flashinfer/big_table.py",
        "flashinfer/data/csrc/cascade.cu",
        "flashinfer/data/include/flashinfer/huge.cuh",
        "flashinfer/data/cutlass/include/cute.hpp",
        "flashinfer_python-0.7.2.dist-info/METADATA",
    }
    manifest = json.loads((kit / "MANIFEST.json").read_text())
    assert manifest["missing"] == ["apache-tvm-ffi==0.1.11", "dill==0.4.1"]
    assert manifest["flashinfer_trim"]["dropped_files"] == 3
    assert (kit / "tokenizer" / "tokenizer.json").stat().st_size > 1_000_000
    assert "bash bench/gpu/run.sh" in proc.stdout and '"$OUT"' in proc.stdout
    assert "carry:" in proc.stdout and "timeout_s: 540" in proc.stdout
    assert "of 64 MiB" in proc.stdout


def test_kit_build_replaces_its_own_kit(tmp_path: Path) -> None:
    cache, kit = tmp_path / "cache", tmp_path / "kit"
    write_fake_flashinfer(cache)
    build(kit, cache, "--skip-downloads")
    (kit / "flashinfer-python-0.7.2.tar.xz").write_bytes(b"stale")
    build(kit, cache, "--skip-downloads")
    assert "flashinfer/__init__.py" in tar_names(kit / "flashinfer-python-0.7.2.tar.xz")


NOT_KITS = {  # what a folder holds; --out names the folder, or its notes.txt
    "no manifest": ({}, ""),
    "another's manifest": ({"MANIFEST.json": '{"name": "theirs"}'}, ""),
    "a kit and more": (
        {"MANIFEST.json": '{"files": {"tokenizer/tokenizer.json": 2}}',
         "tokenizer/tokenizer.json": "{}"},
        "",
    ),
    "a file": ({}, "notes.txt"),
}  # fmt: skip


@pytest.mark.parametrize("layout", list(NOT_KITS))
def test_kit_build_refuses_a_folder_that_is_not_a_kit(tmp_path: Path, layout: str) -> None:
    files, out = NOT_KITS[layout]
    precious = tmp_path / "precious"
    for name, text in {**files, "notes.txt": "keep me"}.items():
        (precious / name).parent.mkdir(parents=True, exist_ok=True)
        (precious / name).write_text(text)
    proc = run_build(precious / out, "--skip-downloads")
    assert proc.returncode != 0 and "not a GPU kit" in proc.stderr
    assert (precious / "notes.txt").read_text() == "keep me"


def test_summary_table_keeps_its_columns_when_a_method_is_missing(tmp_path: Path) -> None:
    full = {"N": 16, "P": 8192, "S": 256, "shared_us": 10.0, "req-tri_us": 80.0,
            "req-sdpa_us": 90.0, "fi-casc_us": 12.0, "speedup_vs_req-tri": 8.0,
            "speedup_vs_req-sdpa": 9.0, "speedup_vs_fi-casc": 1.2, "bound": 11.3}  # fmt: skip
    only_shared = {"N": 4, "P": 2048, "S": 256, "shared_us": 5.0, "bound": 2.9}
    kernels = {"device": "a GPU", "rows": [full, only_shared]}
    (tmp_path / "kernels.json").write_text(json.dumps(kernels))
    proc = subprocess.run(
        [sys.executable, str(SUMMARY), str(tmp_path), str(tmp_path / "no-status.tsv")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("kernels (a GPU)")[1].splitlines()[1:4]  # head and two rows
    assert len({len(line) for line in table}) == 1, table
    assert "goal 0.70: met" in proc.stdout and "goal 1.00: met" in proc.stdout


def test_engine_benchmark_refuses_a_run_with_no_decode_step() -> None:
    script = ROOT / "bench" / "gpu" / "engine_forks.py"
    cmd = [sys.executable, str(script), "--tokenizer", "unused", "--new-tokens", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--new-tokens must be at least 2" in proc.stderr


@pytest.mark.slow
def test_real_kit_fits_and_its_flashinfer_has_the_cascade_sources(tmp_path: Path) -> None:
    """Downloads the real wheels (pip; cached in ~/.cache/ted-sglang/gpu-kit)."""
    from ted_sglang.engine.model_loader import cache_dir

    kit = tmp_path / "kit"
    build(kit, cache_dir() / "gpu-kit")
    files = [p for p in kit.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < LIMIT - 8 * MIB  # room for the tree
    wheels = sorted(p.name for p in (kit / "wheels").iterdir())
    assert wheels[0].startswith("apache_tvm_ffi-0.1.11-cp312") and "manylinux" in wheels[0]
    assert wheels[1].startswith("dill-0.4.1-")
    names = tar_names(kit / "flashinfer-python-0.7.2.tar.xz")
    assert "flashinfer/__init__.py" in names and "flashinfer/cascade.py" in names
    assert not [n for n in names if "__pycache__" in n]
    assert not [n for n in names if n.startswith("flashinfer/data/csrc/") and n.count("/") > 3]
    keep = ("flashinfer/data/include/", "flashinfer/data/cutlass/", "flashinfer/data/cccl/")
    assert not [
        n
        for n, size in names.items()
        if size > MIB and not n.endswith(".py") and not n.startswith(keep)
    ]
    site = tmp_path / "site"
    site.mkdir()
    with tarfile.open(kit / "flashinfer-python-0.7.2.tar.xz") as tar:
        tar.extractall(site, filter="data")
    env = dict(os.environ, PYTHONPATH=str(site), FLASHINFER_WORKSPACE_BASE=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu" / "flashinfer_warmup.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert f"from {site}" in proc.stdout and "missing: 0" in proc.stdout


@pytest.mark.slow
def test_dry_run_writes_every_result_file_and_the_summary(tmp_path: Path) -> None:
    kit, results = tmp_path / "kit", tmp_path / "results"
    build(kit, tmp_path / "empty-cache", "--skip-downloads")  # this environment's FlashInfer
    env = dict(os.environ, PYTHON=sys.executable, GPU_KIT=str(kit))
    proc = subprocess.run(
        ["bash", str(RUN), "--dry-run", str(results)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    names = sorted(p.name for p in results.iterdir())
    assert names == [
        "engine.json",
        "kernel_tests.xml",
        "kernels.json",
        "kernels.png",
        "steps.log",
        "summary.json",
        "summary.txt",
    ]  # the GPU machine returns at most 8 files
    summary = json.loads((results / "summary.json").read_text())
    steps = {s["step"]: s for s in summary["steps"]}
    assert list(steps) == ["setup", "flashinfer-jit", "kernel-tests", "kernels", "engine"]
    assert all(s["state"] == "ok" and s["seconds"] <= s["budget_s"] for s in steps.values())
    tests = summary["kernel_tests"]
    assert tests["passed"] >= 30 and tests["failures"] == tests["errors"] == 0
    assert tests["skipped"] >= 3  # the gpu-marked tests, collected and skipped here
    kernels = json.loads((results / "kernels.json").read_text())
    assert [(r["N"], r["P"]) for r in kernels["rows"]] == [(2, 32), (3, 32)]
    assert all(r["shared_max_abs_err"] < 0.05 and "req-tri_us" in r for r in kernels["rows"])
    engine = json.loads((results / "engine.json").read_text())
    runs = [(r["forks"], r["backend"], r["prefix_nodes"]) for r in engine["rows"]]
    assert runs == [
        (n, backend, nodes)
        for n in (2, 4)
        for backend, nodes in (("per-request", 2), ("shared-prefix", 2), ("shared-prefix", 1))
    ]
    assert summary["goals"]["kernel"]["status"] == "not measured"  # tiny shapes only
    text = (results / "summary.txt").read_text()
    assert text.startswith("GPU kit DRY RUN") and "goals:" in text
    assert proc.stdout.rstrip().endswith(text.rstrip())  # the table is printed last
