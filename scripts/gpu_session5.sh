#!/usr/bin/env bash
# Session 5 device call: the Gluon kernels' GPU tests (and the varlen-vs-dense test), then the FA3
# grid through `flashkernels bench attention` (flashkernels, SDPA cuDNN, SDPA flash; fwd and bwd;
# D 64/128/256; S 1k-16k; causal or not; GQA), CSV and plot under $OUT.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
python -m pip install --no-deps -q .gpu-wheels/*.whl 2>/dev/null
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 240 python -m pytest tests/test_hopper_bwd.py tests/test_hopper_fwd.py \
  "tests/test_alibi_sink_varlen.py::test_varlen_gpu_bf16_matches_dense_per_sequence" -m gpu -q -p no:cacheprovider \
  -rfE -n 8 > "$OUT/pytest.log" 2>&1
tail -4 "$OUT/pytest.log"
timeout 320 python -m flashkernels bench attention --providers flashkernels,sdpa-cudnn,sdpa-flash \
  --seqlens 1024,2048,4096,8192,16384 --head-dims 64,128,256 --csv "$OUT/bench.csv" --plot "$OUT/bench.png" \
  > "$OUT/bench.txt" 2>&1
echo "bench rc=$?"; grep -A80 "^shape" "$OUT/bench.txt" | head -75
