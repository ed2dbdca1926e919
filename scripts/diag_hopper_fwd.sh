#!/usr/bin/env bash
# One device call: the Gluon forward's GPU tests (racecheck and its control included), then the
# forward through the public API (SDPA layout) beside cuDNN, with and without the Gluon kernel.
#   scripts/diag_hopper_fwd.sh            (writes under $OUT)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
python -m pip install --no-deps -q .gpu-wheels/*.whl 2>/dev/null
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > "$OUT/gpu.txt"
timeout 300 python -m pytest tests/test_hopper_fwd.py -m gpu -q -p no:cacheprovider -rfE -n 8 > "$OUT/pytest.log" 2>&1
tail -5 "$OUT/pytest.log"
B="python -m flashkernels bench attention --providers flashkernels,sdpa-cudnn --head-dims 128 --seqlens 4096,16384 --modes fwd --causal both"
timeout 120 $B --csv "$OUT/bench_gluon.csv" > "$OUT/bench_gluon.txt" 2>&1
FLASHKERNELS_HOPPER_FWD=0 timeout 120 $B --csv "$OUT/bench_triton.csv" > "$OUT/bench_triton.txt" 2>&1
tail -12 "$OUT/bench_gluon.txt"; tail -12 "$OUT/bench_triton.txt"
