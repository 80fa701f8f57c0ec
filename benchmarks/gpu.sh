#!/usr/bin/env bash
# The GPU check of issue 41 in one call of the device tool (what it measures: benchmarks/gpu.py; about 8
# minutes on one H200): the default's train step (cached top 9 and all blocks, bf16), one table-3 cell end
# to end, predict rows/s, serve rows/s, FSDP2 through accelerate equal to no FSDP.
#   here, once:  benchmarks/gpu.sh --prepare   # gpu_carry/ (git-ignored, ~15 MB): Gemma 3 270M's config and
#                                              # tokenizer, Amazon snippets as CSV, wheels the GPU image lacks
#   there:       run(command="benchmarks/gpu.sh", carry=["gpu_carry"], timeout_s=600)
#   here, check: benchmarks/gpu.sh --dry-run   # every step on this CPU with the tiny model (a few minutes)
# Writes $OUT/gpu.json and $OUT/gpu.md (default benchmarks/results/); copy them into benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(mapie==1.6.0 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 pydantic==2.14.4 pydantic-core==2.50.5
  annotated-types==0.8.0 typing-inspection==0.4.5)

case "${1:-}" in
  --prepare)
    grep -qx 'gpu_carry/' .git/info/exclude 2>/dev/null || echo 'gpu_carry/' >>.git/info/exclude
    .venv/bin/python benchmarks/gpu.py --prepare
    # the device machine reaches no registry: its image has torch, transformers, accelerate, peft, pandas,
    # scikit-learn..., and lacks these (for its Python 3.12)
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d gpu_carry/wheels "${WHEELS[@]}"
    du -sh gpu_carry
    exit 0
    ;;
  --dry-run)
    shift
    exec .venv/bin/python benchmarks/gpu.py --dry-run --out "${OUT:-/tmp/raftlm-gpu-dry}" "$@"
    ;;
esac

fail() { echo "benchmarks/gpu.sh: $1" >&2; exit 2; }
command -v nvidia-smi >/dev/null && nvidia-smi -L ||
  fail "no CUDA GPU here (nvidia-smi): run it through the device tool, or check the script with --dry-run"
python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' ||
  fail "python3's torch sees no CUDA GPU"
[ -d gpu_carry/wheels ] || fail "gpu_carry/ is missing: run benchmarks/gpu.sh --prepare here and carry it"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  gpu_carry/wheels/*.whl
export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec timeout 570 python3 benchmarks/gpu.py "$@"
