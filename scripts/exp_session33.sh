#!/usr/bin/env bash
# Session 33's device calls (docs/perf-notes.md, session 33). One section a call:
#   bash scripts/exp_session33.sh tests   the backward writing dQ itself (launch.HOPPER_BWD_DQ_CONVERT) forced on at
#                                         D = 64 and 128 at any length: the GPU test files that run the Gluon backward
#                                         (launch cache in check mode)
#   bash scripts/exp_session33.sh ab      its paired A/B at D = 128, 1k-8k, non-causal, on ({128: None}) / off ({}),
#                                         two rounds
# (half needs docs/patches/s33-varlen-half.patch applied: not kept)
#   bash scripts/exp_session33.sh half    a packed tile's half-used last key block first (launch.HOPPER_FWD_VARLEN_HALF)
#                                         at D = 64 and 128: the varlen GPU test files with it on, then scripts/ab_varlen.py
#                                         pub-defer (the default) against half, `bench varlen`'s case, both mask settings
#   bash scripts/exp_session33.sh bench   `bench attention --graph` at D = 64 / 128, 1k / 2k (where DQ_CONVERT acts and the
#                                         D = 64 forward's 1.5x-FA2 line is missed), with FlexAttention compiled (the whole
#                                         grid: DIMS=64,128,256 SEQ=1024,...,16384 GQA=" " PLOT=1)
#   bash scripts/exp_session33.sh peer    scripts/paired_peer.py --clocks: the D = 128 non-causal forward against SDPA cuDNN
#                                         at 2k / 4k / 16k (4k read 709 TF/s in `bench`, 640 in session 28, same kernels)
#   bash scripts/exp_session33.sh sanitize  the backward's memcheck and racecheck tests with DQ_CONVERT on by default
#                                         (their D = 128 non-causal cases now write dQ in the kernel)
#   bash scripts/exp_session33.sh paired  `bench attention --paired` (new): its GPU tests, then one shape against cuDNN
# Writes under $OUT (default ./out). Carry .gpu-wheels (pytest-xdist, execnet).
source "$(dirname "$0")/device_env.sh"  # (strict mode, the root, $OUT, the card; exits without the root)
case "${1:-}" in
  tests)
    FK_SWITCHES="HOPPER_BWD_DQ_CONVERT={64: None, 128: None}" gpu_pytest "${T1:-450}" 14 tests-dq-convert-on.txt \
      -p pytest_switch tests/test_hopper_bwd.py tests/test_cuda_graphs.py tests/test_eager_path.py tests/test_gpu.py \
      tests/test_memory.py ${TK:+-k "$TK"} ;;
  ab)
    for r in 1 2; do
      echo "## round $r" | tee -a "$OUT/ab-dq-convert.txt"
      timeout "${TA:-250}" python scripts/ab_attention.py --gluon --paired "${N:-12}" --switch HOPPER_BWD_DQ_CONVERT \
        --on "{128: None}" --off "{}" --modes bwd --head-dims 128 --seqlens "${SEQ:-1024,2048,4096,8192}" --causal 0 \
        2>&1 | tail -8 | tee -a "$OUT/ab-dq-convert.txt"
    done ;;
  half)
    FK_SWITCHES="HOPPER_FWD_VARLEN_HALF=(64, 128)" gpu_pytest "${T1:-300}" 14 tests-varlen-half.txt -p pytest_switch \
      tests/test_hopper_fwd_varlen.py tests/test_hopper_bwd_varlen.py tests/test_alibi_sink_varlen.py ${TK:+-k "$TK"}
    timeout "${TA:-200}" python scripts/ab_varlen.py --paired "${N:-24}" --head-dims "${DIMS:-128,64}" \
      --variants pub-defer,half 2>&1 | tee -a "$OUT/ab-varlen-half.txt" ;;
  bench)
    timeout "${TA:-540}" python -m flashkernels bench attention --graph --head-dims "${DIMS:-64,128}" \
      --seqlens "${SEQ:-1024,2048}" --providers flashkernels,sdpa-cudnn,sdpa-flash,flex \
      ${GQA:---no-gqa} --csv "$OUT/attention-graph-flex.csv" ${PLOT:+--plot "$OUT/attention-graph-flex.png"} 2>&1 | grep -av "Warning\|warn" | tail -110 | tee -a "$OUT/attention-graph-flex.txt" ;;
  peer)
    timeout "${TA:-200}" python scripts/paired_peer.py --peer sdpa-cudnn --modes fwd --clocks \
      --shapes "128:4096:0,128:16384:0,128:2048:0" 2>&1 | tee -a "$OUT/paired-peer-fwd128.txt" ;;
  sanitize)
    gpu_pytest "${T1:-320}" 8 tests-sanitize.txt tests/test_hopper_bwd.py -k "memcheck or racecheck" ;;
  paired)
    timeout "${T1:-80}" python -m pytest -q -p no:warnings -m gpu tests/test_bench_ops.py -k bench_attention 2>&1 \
      | tail -4 | tee -a "$OUT/tests-bench-paired.txt"
    timeout "${TA:-90}" python -m flashkernels bench attention --paired "${N:-10}" --head-dims 128 --seqlens 4096 \
      --causal no --providers flashkernels,sdpa-cudnn 2>&1 | grep -av "Warning\|warn" | tail -8 \
      | tee -a "$OUT/bench-paired.txt" ;;
  *)
    echo "usage: $0 tests|ab|half|bench|peer|sanitize|paired" >&2
    exit 2 ;;
esac
