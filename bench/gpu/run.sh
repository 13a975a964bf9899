#!/usr/bin/env bash
# Every GPU figure of this project in one call, or a rehearsal of it here on the CPU.
#
#   bash bench/gpu/run.sh RESULTS_DIR             on the GPU machine, with the kit carried along
#   bash bench/gpu/run.sh --dry-run RESULTS_DIR   here: the same steps on the CPU, tiny shapes
#
# Installs the kit ($GPU_KIT, default .gpu-kit; `make gpu-kit` builds it) and the project into
# a temporary folder (no network), then runs each step under its own time limit, so that a slow
# step cannot lose the others' results: the kernel tests on CUDA, FlashInfer's JIT compile (in
# the background meanwhile), bench/kernels.py, the engine's forks benchmark, and a summary
# printed last. RESULTS_DIR gets 7 files: steps.log, kernel_tests.xml, kernels.json,
# kernels.png, engine.json, summary.json, summary.txt. Budgets on the GPU machine: at most
# 455 s in all. Exit status 0 when every step succeeded.
set -uo pipefail

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
if [ $# -ne 1 ]; then echo "usage: bash bench/gpu/run.sh [--dry-run] RESULTS_DIR" >&2; exit 2; fi
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$1" && RESULTS=$(cd "$1" && pwd) || exit 2
KIT=$(realpath -m "${GPU_KIT:-$ROOT/.gpu-kit}")  # both relative to the caller's folder
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
LOG=$RESULTS/steps.log
STATUS=$WORK/status.tsv
rm -f "$RESULTS"/{steps.log,kernel_tests.xml,kernels.json,kernels.png,engine.json,summary.*}
export DRY KIT PY RESULTS WORK PYTHONPATH=$WORK/site PYTHONUNBUFFERED=1
if [ "$DRY" = 1 ]; then
  # Packages this environment has and the GPU machine lacks (its image's list): a dry run
  # fails their import as it would fail there (sitecustomize runs first in every python).
  mkdir -p "$WORK/absent"
  cat >"$WORK/absent/sitecustomize.py" <<'PY'
import sys
for name in ("xgrammar", "fastapi", "uvicorn", "starlette", "pydantic", "gguf", "orjson",
             "sglang", "sgl_kernel", "openai", "jsonschema"):
    sys.modules[name] = None  # import name -> ImportError
PY
  PYTHONPATH=$WORK/absent:$PYTHONPATH
fi
export FLASHINFER_WORKSPACE_BASE=$WORK MAX_JOBS=${MAX_JOBS:-$(nproc)} TOKENIZERS_PARALLELISM=false

# step NAME BUDGET_S COMMAND...: COMMAND under a time limit, output appended to $STEP_LOG.
step() {
  local name=$1 budget=$2 start=$SECONDS rc log=${STEP_LOG:-$LOG}
  shift 2
  echo "== $name: budget ${budget}s, started $(date -u +%T)" | tee -a "$log"
  timeout -k 10 "$budget" "$@" >>"$log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" $((SECONDS - start)) "$budget" >>"$STATUS"
  echo "== $name: exit $rc after $((SECONDS - start))s" | tee -a "$log"
  return $rc
}

install_kit() {
  set -e
  shopt -s nullglob
  test -f "$KIT/MANIFEST.json" || { echo "no GPU kit in $KIT: build it with make gpu-kit"; exit 1; }
  mkdir -p "$WORK/site"
  local wheels=("$KIT"/wheels/*.whl) archive
  if [ "$DRY" = 1 ]; then
    echo "dry run: the kit's wheels are for Python 3.12; this environment's packages stand in"
  elif [ ${#wheels[@]} -gt 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "${wheels[@]}"
  fi
  for archive in "$KIT"/*.tar.xz; do tar -xJf "$archive" -C "$WORK/site"; done
  # the project, laid out as pyproject.toml's package-dir says (no build: nothing written here)
  cp -r ted_sglang "$WORK/site/" && cp -r kernels "$WORK/site/ted_sglang/kernels"
  # -P (no current folder on sys.path), here and for pytest: the tree's ted_sglang/ has no
  # kernels/ inside; the installed copy has (pyproject.toml maps it)
  "$PY" -P -c 'import os, torch, triton, ted_sglang.kernels as k
site = os.path.join(os.environ["WORK"], "site")
assert k.__file__.startswith(site), f"{k.__file__}: not the copy in {site}"
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.cuda.is_available())'
  if [ "$DRY" = 0 ]; then nvidia-smi -L || true; nvcc --version | tail -1; fi
}

# tests/test_kernels_triton.py, plus every test marked gpu (their node ids, collected first).
kernel_tests() {
  local files nodes=() xdist=()
  if [ "$DRY" = 1 ]; then export TRITON_INTERPRET=1; fi
  mapfile -t files < <(grep -l 'pytest.mark.gpu' tests/test_*.py)
  if [ ${#files[@]} -gt 0 ]; then
    "$PY" -P -m pytest -q --collect-only -p no:cacheprovider -m gpu "${files[@]}" \
      >"$WORK/gpu_tests.txt"
    grep -v '::' "$WORK/gpu_tests.txt"  # the count, or collection errors
    mapfile -t nodes < <(grep '::' "$WORK/gpu_tests.txt")  # ids as they are: [params] kept
  fi
  if [ "$DRY" = 0 ] && "$PY" -c 'import xdist' 2>/dev/null; then xdist=(-n 8); fi
  # -v: each result is logged as it comes, so a time limit keeps them (the XML comes at the end)
  "$PY" -P -m pytest -v -rfEs -p no:cacheprovider --junitxml="$RESULTS/kernel_tests.xml" \
    "${xdist[@]}" tests/test_kernels_triton.py "${nodes[@]}"
}
export -f install_kit kernel_tests

if [ "$DRY" = 1 ]; then
  KERNEL_ENV=(TRITON_INTERPRET=1)
  KERNEL_ARGS=(--device cpu --forks 2,3 --prefixes 32 --suffix-len 16 --num-qo-heads 4
    --num-kv-heads 2 --head-dim 64 --runs 2)
  ENGINE_ARGS=(--shape tiny --device cpu --forks 2,4 --prefix-tokens 48 --new-tokens 4
    --max-prefill-tokens 32,64)
else
  KERNEL_ENV=()
  KERNEL_ARGS=()
  ENGINE_ARGS=(--forks 64,32,8 --prefix-tokens 4096 --new-tokens 128 --max-prefill-tokens 2048,8192)
fi

ok=0
step setup 30 bash -c install_kit || ok=1
if [ $ok = 0 ]; then
  STEP_LOG=$WORK/flashinfer.log step flashinfer-jit 190 "$PY" bench/gpu/flashinfer_warmup.py &
  jit=$!
  step kernel-tests 150 bash -c kernel_tests || ok=1
  wait $jit || { ok=1; KERNEL_ARGS+=(--no-flashinfer); }  # no second compile in its budget
  cat "$WORK/flashinfer.log" >>"$LOG"
  step kernels 80 env "${KERNEL_ENV[@]}" "$PY" bench/kernels.py \
    --out "$RESULTS/kernels.json" "${KERNEL_ARGS[@]}" || ok=1
  step engine 135 "$PY" bench/gpu/engine_forks.py --tokenizer "$KIT/tokenizer" --work "$WORK" \
    --out "$RESULTS/engine.json" "${ENGINE_ARGS[@]}" || ok=1
fi
summary_args=("$RESULTS" "$STATUS")
if [ "$DRY" = 1 ]; then summary_args+=(--dry-run); fi
step summary 20 "$PY" bench/gpu/summary.py "${summary_args[@]}" || ok=1
cat "$RESULTS/summary.txt" 2>/dev/null
exit $ok
