#!/usr/bin/env bash
# GPU timings of benchmarks/speed.py in one short call of the device tool (one H200 here): the
# train-step rows (all weights / embeddings frozen) for both models and dtypes, then the inference
# rows for SmolLM2-135M, merged into a copy of benchmarks/results/speed_cuda.json under $OUT.
# gpu_cfgs/<model>/ holds config.json + tokenizer of the converted models (weights random: speed does
# not depend on them), made here with `raftlm.models.model_path` and copied without the safetensors.
set -u
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/speed_cuda}"
mkdir -p "$OUT"
cp benchmarks/results/speed_cuda.json "$OUT/speed_cuda.json"
common=(--device cuda --config-dir gpu_cfgs --batch 16 --words 60 --n 64 --repeats 5 --out "$OUT/speed_cuda")
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
for dtype in bf16 float32; do
  timeout 200 python3 benchmarks/speed.py "${common[@]}" --models gemma-3-270m smollm2-135m --dtypes $dtype \
    --cases train train-frozen 2>&1 | grep -v Warning | tail -n 14
done
timeout 150 python3 benchmarks/speed.py "${common[@]}" --models smollm2-135m --dtypes bf16 float32 \
  --cases infer multitoken bucket 2>&1 | tail -n 6
