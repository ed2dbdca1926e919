#!/usr/bin/env bash
# Session 32's device calls (docs/perf-notes.md, session 32). One section a call:
#   bash scripts/exp_session32.sh host    scripts/exp_host_bwd.py: an eager backward's host time at the 1k shapes against
#                                         its GPU time, with a cProfile of D = 128 causal; then exp_host_1k.py (forward, the same)
#   bash scripts/exp_session32.sh pieces  scripts/exp_bwd_pieces.py: the eager backward at the 1k shapes, host time inside each
#                                         launch function and the GPU's kernel times (torch.profiler)
#   bash scripts/exp_session32.sh plans   the eager backward's launch plans (launch.HOPPER_BWD_PLANS): exp_host_bwd.py with them
#                                         off and on, then the backward's GPU tests (launch cache in check mode; TK: their -k),
#                                         and with BENCH=1 `bench attention`'s eager backward at 1k / 2k
# (delta needs docs/patches/s32-delta-zero.patch applied: not kept)
#   bash scripts/exp_session32.sh delta   scripts/exp_delta_zero.py: the dQ accumulator's memset and the Delta kernel, apart
#                                         and fused (attn_bwd_preprocess_kernel ZERO_ACC), timed alone in alternating replays
#   bash scripts/exp_session32.sh after   exp_host_bwd.py (plans off / on) and exp_bwd_pieces.py with the plans landed
#   bash scripts/exp_session32.sh broad   the other GPU test files that run the backward (CUDA graphs, the eager path, features,
#                                         test_gpu.py, the launch cache), with the plans landed
#   bash scripts/exp_session32.sh scripts short runs of exp_host_bwd.py, exp_bwd_pieces.py, exp_host_1k.py after the review
#   bash scripts/exp_session32.sh convert the backward writing dQ itself (launch.HOPPER_BWD_DQ_CONVERT, off): its GPU test and the
#                                         plan tests, then the paired A/B at D = 64 / 128, 1k / 2k, non-causal (run with the
#                                         switch a tuple of head dims then, "(64, 128)" / "()")
#   bash scripts/exp_session32.sh peer    scripts/paired_peer.py --clocks: ours against SDPA cuDNN where the two timing
#                                         methods disagreed in session 31 (backward D = 128 non-causal 4k / 16k, D = 256
#                                         4k; forward D = 128 16k), each call alone too, and the SM clock
# Writes under $OUT (default ./out). Carry .gpu-wheels (pytest-xdist, execnet).
source "$(dirname "$0")/device_env.sh"  # (strict mode, the root, $OUT, the card; exits without the root)
# host_plans FILE: exp_host_bwd.py with the backward plans off, then on, its rows appended to $OUT/FILE
host_plans() {
  for p in --no-plans ""; do
    echo "## exp_host_bwd.py $p" | tee -a "$OUT/$1"
    timeout "${TA:-150}" python scripts/exp_host_bwd.py $p 2>&1 | grep -a "^D=\|Error" | tee -a "$OUT/$1"
  done
}
case "${1:-}" in
  host)
    lscpu | grep -a "Model name" | tee -a "$OUT/host-cpu.txt"
    timeout 60 python scripts/exp_launch_overhead.py 2>&1 | tail -8 | tee -a "$OUT/host-cpu.txt"
    timeout "${TA:-240}" python scripts/exp_host_bwd.py --profile "${NPROF:-200}" > "$OUT/host-bwd.txt" 2>&1
    grep -a "^D=\|Error" "$OUT/host-bwd.txt"
    timeout "${TB:-120}" python scripts/exp_host_1k.py --profile "${NPROF:-200}" > "$OUT/host-fwd.txt" 2>&1
    grep -a "^D=\|Error" "$OUT/host-fwd.txt" ;;
  pieces)
    timeout "${TA:-300}" python scripts/exp_bwd_pieces.py 2>&1 | tee -a "$OUT/bwd-pieces.txt" ;;
  plans)
    host_plans host-bwd-plans.txt
    gpu_pytest "${T1:-330}" 12 tests-bwd-plans.txt tests/test_hopper_bwd.py tests/test_hopper_bwd_varlen.py \
      tests/test_memory.py ${TK:+-k "$TK"}
    if [ -n "${BENCH:-}" ]; then  # (the eager backward at 1k / 2k against SDPA's, plans on)
      timeout "${TB:-200}" python -m flashkernels bench attention --modes bwd --seqlens 1024,2048 --no-gqa \
        --providers flashkernels,sdpa-cudnn,sdpa-flash --csv "$OUT/attention-bwd-eager.csv" 2>&1 | tail -16 \
        | tee -a "$OUT/attention-bwd-eager.txt"
    fi ;;
  delta)
    timeout "${TA:-200}" python scripts/exp_delta_zero.py 2>&1 | tee -a "$OUT/delta-zero.txt" ;;
  after)
    host_plans host-bwd-after.txt
    timeout "${TB:-200}" python scripts/exp_bwd_pieces.py 2>&1 | grep -av "Warning\|warn" | tee -a "$OUT/bwd-pieces-after.txt" ;;
  broad)
    gpu_pytest "${T1:-480}" 14 tests-broad.txt tests/test_cuda_graphs.py tests/test_eager_path.py \
      tests/test_alibi_sink_varlen.py tests/test_attention_features.py tests/test_gpu.py tests/test_launch_cache.py ;;
  scripts)  # (the scripts after the review's refactor, short runs)
    timeout "${TA:-120}" python scripts/exp_host_bwd.py --dims 128 --profile 20 2>&1 | grep -a "^D=\|Error\|function calls" \
      | tee -a "$OUT/scripts-check.txt"
    timeout "${TB:-120}" python scripts/exp_bwd_pieces.py --dims 128 --calls 30 2>&1 | grep -av "Warning\|warn" \
      | tee -a "$OUT/scripts-check.txt"
    timeout "${TC:-120}" python scripts/exp_host_1k.py --profile 20 2>&1 | grep -a "^D=\|Error\|function calls" \
      | tee -a "$OUT/scripts-check.txt" ;;
  convert)  # (kernels/bwd_hopper.py DQ_CONVERT, launch.HOPPER_BWD_DQ_CONVERT: its GPU test, then the A/B)
    gpu_pytest "${T1:-150}" 8 tests-dq-convert.txt tests/test_hopper_bwd.py -k "dq_convert or plans_cuda"
    timeout "${TA:-150}" python scripts/ab_attention.py --gluon --paired "${N:-16}" --switch HOPPER_BWD_DQ_CONVERT \
      --on "{64: None, 128: None}" --off "{}" --modes bwd --head-dims 64,128 --seqlens 1024,2048 --causal 0 2>&1 | tail -10 \
      | tee -a "$OUT/ab-dq-convert.txt" ;;
  peer)
    timeout "${TA:-240}" python scripts/paired_peer.py --peer sdpa-cudnn --modes bwd --clocks \
      --shapes "128:4096:0,128:16384:0,256:4096:0" 2>&1 | tee -a "$OUT/paired-peer-clocks.txt"
    timeout "${TB:-120}" python scripts/paired_peer.py --peer sdpa-cudnn --modes fwd --clocks \
      --shapes "128:16384:0" 2>&1 | tee -a "$OUT/paired-peer-clocks.txt" ;;
  *)
    echo "usage: $0 host|pieces|plans|delta|after|broad|scripts|convert|peer" >&2
    exit 2 ;;
esac
