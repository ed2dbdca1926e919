#!/usr/bin/env bash
# One device call for the Gluon backward: its GPU tests and the forward's (sanitizers included),
# then the backward through the public API beside cuDNN, with and without the Gluon kernel.
#   scripts/diag_hopper_bwd.sh            (writes under $OUT)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
python -m pip install --no-deps -q .gpu-wheels/*.whl 2>/dev/null
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv > "$OUT/gpu.txt"
timeout 330 python -m pytest tests/test_hopper_bwd.py tests/test_hopper_fwd.py -m gpu -q -p no:cacheprovider -rfE -n 8 \
  > "$OUT/pytest.log" 2>&1
tail -8 "$OUT/pytest.log"
B="python -m flashkernels bench attention --providers flashkernels,sdpa-cudnn --head-dims 128 --seqlens 4096,16384 --modes bwd --causal both"
timeout 100 $B --csv "$OUT/bench_gluon.csv" > "$OUT/bench_gluon.txt" 2>&1
FLASHKERNELS_HOPPER_BWD=0 timeout 100 $B --no-gqa --csv "$OUT/bench_triton.csv" > "$OUT/bench_triton.txt" 2>&1
tail -9 "$OUT/bench_gluon.txt"; tail -7 "$OUT/bench_triton.txt"
