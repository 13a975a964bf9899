"""Build the GPU kit: what a bare GPU machine lacks to run ``bench/gpu/run.sh``.

The machine (see bench/README.md, "Measuring on a GPU machine") has Python 3.12,
torch, Triton, transformers and pytest but no network, and takes the working tree
plus named ignored folders, at most 64 MiB in all. The kit is one ignored folder
(``.gpu-kit/`` by default) holding:

* ``wheels/``: wheels for CPython 3.12 on manylinux x86-64, installed there with
  ``pip --no-index --target`` (FlashInfer's needs: ``apache-tvm-ffi``, ``dill``);
* ``flashinfer-python-<version>.tar.xz``: FlashInfer's wheel, trimmed (no
  ``__pycache__``, no sub-folders of ``data/csrc/``, no non-``.py`` file over 1 MiB
  outside ``data/{include,cutlass,cccl}``: kernels of other chips and features) and
  repacked; its JIT compiles the cascade kernels there from what is left;
* ``tokenizer/``: SmolLM2's tokenizer, read from the demo model's GGUF file (the
  engine benchmark makes random weights of a real model's shape there);
* ``MANIFEST.json``: every file with its size, and what was trimmed.

Downloads go through pip into a cache folder outside the kit, so a rebuild is offline.
The total (kit + working tree) is checked against the limit, and the command to run
there is printed. Run from the repository root: ``python bench/gpu/build_kit.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_KIT = ROOT / ".gpu-kit"
LIMIT_BYTES = 64 * 1024 * 1024
WHEELS = ("apache-tvm-ffi==0.1.11", "dill==0.4.1")  # installed as they are
FLASHINFER = "flashinfer-python==0.7.2"  # trimmed and repacked
TARGET = [  # the GPU machine's interpreter and platform
    "--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
    "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
    "--platform", "manylinux_2_28_x86_64",
]  # fmt: skip
TRIM_OVER_BYTES = 1024 * 1024
KEEP_LARGE = ("flashinfer/data/include/", "flashinfer/data/cutlass/", "flashinfer/data/cccl/")
TOKENIZER_MODEL = "smollm2-135m"  # the demo model, whose tokenizer is SmolLM2's
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
RUN_TIMEOUT_S = 540


def wheel(spec: str, cache: Path, download: bool) -> Path | None:
    """The cached wheel of ``name==version`` for the target, downloaded with pip when missing."""
    name, version = spec.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found and download:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *TARGET]
        subprocess.run([*cmd, "-d", str(cache), spec], check=True)
        found = sorted(cache.glob(pattern))
        if not found:
            raise RuntimeError(f"pip downloaded no {pattern} into {cache}")
    return found[-1] if found else None


def trimmed(name: str, size: int) -> bool:
    """Whether a wheel member of FlashInfer stays out of the kit."""
    if "__pycache__/" in name:
        return True
    if name.startswith("flashinfer/data/csrc/") and "/" in name[len("flashinfer/data/csrc/") :]:
        return True
    large = size > TRIM_OVER_BYTES and not name.endswith(".py")
    return large and not name.startswith(KEEP_LARGE)


def repack_flashinfer(whl: Path, dest: Path) -> dict:
    """Write the kept members of FlashInfer's wheel to ``dest`` (.tar.xz); returns counts."""
    kept = dropped = kept_bytes = dropped_bytes = 0
    with zipfile.ZipFile(whl) as zf, tarfile.open(dest, "w:xz") as tar:
        for info in zf.infolist():
            if info.is_dir():
                continue
            if trimmed(info.filename, info.file_size):
                dropped, dropped_bytes = dropped + 1, dropped_bytes + info.file_size
                continue
            member = tarfile.TarInfo(info.filename)
            member.size, member.mode = info.file_size, 0o644
            member.mtime = int(time.mktime((*info.date_time, 0, 0, -1)))
            with zf.open(info) as src:
                tar.addfile(member, src)
            kept, kept_bytes = kept + 1, kept_bytes + info.file_size
    return {
        "wheel": whl.name,
        "wheel_bytes": whl.stat().st_size,
        "kept_files": kept,
        "kept_bytes": kept_bytes,
        "dropped_files": dropped,
        "dropped_bytes": dropped_bytes,
    }


def save_tokenizer(dest: Path) -> None:
    """Copy the tokenizer files of :data:`TOKENIZER_MODEL` into ``dest``."""
    from ted_sglang.engine.model_loader import resolve_model

    model_dir = resolve_model(TOKENIZER_MODEL)
    dest.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, dest / name)
    if not (dest / "tokenizer.json").is_file():
        raise RuntimeError(f"{model_dir} has no tokenizer.json")


def tree_bytes() -> int | None:
    """Bytes of the files that travel as the working tree (tracked + untracked, not ignored)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "-co", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    paths = (ROOT / p.decode() for p in out.split(b"\0") if p)
    return sum(p.stat().st_size for p in paths if p.is_file())


def folder_files(folder: Path) -> dict[str, int]:
    """Every file below ``folder`` (its path there) with its size in bytes."""
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def is_kit(folder: Path) -> bool:
    """Whether ``folder`` holds an earlier kit and nothing else: each of its files is
    its ``MANIFEST.json`` or listed there."""
    try:
        listed = json.loads((folder / "MANIFEST.json").read_text())["files"]
        return set(folder_files(folder)) <= {*listed, "MANIFEST.json"}
    except (OSError, ValueError, KeyError, TypeError):
        return False


def build(kit: Path, cache: Path, download: bool) -> dict:
    """Build the kit in ``kit`` (replacing an earlier kit there); returns its manifest."""
    if kit.exists() or kit.is_symlink():
        if kit.is_symlink() or not kit.is_dir() or (any(kit.iterdir()) and not is_kit(kit)):
            raise SystemExit(f"{kit} exists and is not a GPU kit: not touching it")
        shutil.rmtree(kit)
    (kit / "wheels").mkdir(parents=True)
    missing = []
    for spec in WHEELS:
        whl = wheel(spec, cache, download)
        if whl is None:
            missing.append(spec)
        else:
            shutil.copy2(whl, kit / "wheels" / whl.name)
    flashinfer = None
    fi_wheel = wheel(FLASHINFER, cache, download)
    if fi_wheel is None:
        missing.append(FLASHINFER)
    else:
        name, version = FLASHINFER.split("==")
        flashinfer = repack_flashinfer(fi_wheel, kit / f"{name}-{version}.tar.xz")
    save_tokenizer(kit / "tokenizer")
    manifest = {
        "target": "CPython 3.12, manylinux x86-64",
        "wheels": list(WHEELS),
        "flashinfer": FLASHINFER,
        "flashinfer_trim": flashinfer,
        "tokenizer": TOKENIZER_MODEL,
        "missing": missing,  # not in the cache and --skip-downloads given
        "files": folder_files(kit),
    }
    (kit / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    from ted_sglang.engine.model_loader import cache_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_KIT, help="the kit folder")
    parser.add_argument("--cache", type=Path, default=cache_dir() / "gpu-kit", help="wheels")
    parser.add_argument(
        "--skip-downloads", action="store_true", help="use only wheels already in --cache"
    )
    args = parser.parse_args(argv)
    kit = args.out.absolute()
    manifest = build(kit, args.cache, download=not args.skip_downloads)
    kit_bytes = sum(folder_files(kit).values())
    tree = tree_bytes()
    total = kit_bytes + (tree or 0)
    mib = 1024 * 1024
    print(f"kit {kit}: {kit_bytes / mib:.1f} MiB")
    for path, size in manifest["files"].items():
        print(f"  {size / mib:8.2f} MiB  {path}")
    if manifest["missing"]:
        print(f"  not in the kit (no download asked for): {', '.join(manifest['missing'])}")
    tree_text = "unknown (not a git checkout)" if tree is None else f"{tree / mib:.1f} MiB"
    print(f"working tree {tree_text}; total {total / mib:.1f} of {LIMIT_BYTES / mib:.0f} MiB")
    if total > LIMIT_BYTES:
        print("over the limit: the GPU machine would refuse this tree", file=sys.stderr)
        return 1
    try:
        carry = str(kit.relative_to(ROOT))
    except ValueError:
        carry = str(kit)
        print(f"note: {kit} is outside the repository; only a folder inside it travels")
    print("\nOn the GPU machine, one call (results come back from $OUT, at most 8 files):")
    print(f'  command:   GPU_KIT={carry} bash bench/gpu/run.sh "$OUT"')
    print(f"  carry:     {json.dumps([carry])}")
    print(f"  timeout_s: {RUN_TIMEOUT_S}")
    print("Here, the same steps on the CPU: bash bench/gpu/run.sh --dry-run DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
