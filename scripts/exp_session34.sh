#!/usr/bin/env bash
# Session 34's device calls (docs/perf-notes.md, session 34). One section a call:
#   bash scripts/exp_session34.sh first   `bench attention --paired` (session 33's, not yet run on a GPU): its GPU test
#                                         and one shape against cuDNN; then scripts/exp_chain_probe.py at D = 64's short
#                                         causal forwards (1k, 2k; and 1k non-causal, D = 128 1k causal): where the
#                                         kernel's time goes against its steps, boundaries and tile ends
#   bash scripts/exp_session34.sh global  the same probe with %globaltimer too (launch.HOPPER_FWD_PROBE_GLOBAL): when
#                                         each warpgroup starts and ends against the kernel's time
# (dyn, dyn2, dynprobe: docs/patches/s34-fwd-dyn-causal.patch applied; rot: docs/patches/s34-fwd-causal-rot.patch)
#   bash scripts/exp_session34.sh dyn     the causal chained forward's pairs by a dynamic scheduler
#                                         (launch.HOPPER_FWD_DYN_CAUSAL): its GPU test, the forward's causal,
#                                         persistent, plan and graph tests with it on at D = 64 and 128, then its
#                                         paired A/B (causal, 1k-4k). Its first form: the consumers' tile loop a
#                                         while loop (ptxas copied P's operand)
#   bash scripts/exp_session34.sh dyn2    its second form (a for loop of the static share + DYN_SLACK tiles; the
#                                         next ticket taken a pair ahead): its GPU test, then the paired A/B
#                                         (causal, 1k-8k)
#   bash scripts/exp_session34.sh dynprobe  the second form clocked (exp_chain_probe.py --global-timer --dyn): do
#                                         the warpgroups' ends even out with the dynamic scheduler?
#   bash scripts/exp_session34.sh rot     the causal chained forward's pairs in a rotated order
#                                         (launch.HOPPER_FWD_CAUSAL_ROT): its GPU test, the paired A/B (causal,
#                                         1k-8k), and the D = 64 1k causal probe (--global-timer) without and with it
#   bash scripts/exp_session34.sh final   the final tree's GPU tests: every file but test_hopper_bwd.py (its 424 ran in
#                                         session 33 and no backward code changed since), then test_hopper_fwd.py
# Writes under $OUT (default ./out). Carry .gpu-wheels (pytest-xdist, execnet).
source "$(dirname "$0")/device_env.sh"  # (strict mode, the root, $OUT, the card; exits without the root)
case "${1:-}" in
  first)
    timeout "${T1:-90}" python -m pytest -q -p no:warnings -m gpu tests/test_bench_ops.py -k bench_attention 2>&1 \
      | tail -4 | tee -a "$OUT/tests-bench-paired.txt"
    timeout "${TA:-90}" python -m flashkernels bench attention --paired "${N:-10}" --head-dims 128 --seqlens 4096 \
      --causal no --providers flashkernels,sdpa-cudnn 2>&1 | grep -av "Warning\|warn" | tail -8 \
      | tee -a "$OUT/bench-paired.txt"
    timeout "${TP:-150}" python scripts/exp_chain_probe.py --cases "${CASES:-64:1024:1,64:1024:0,64:2048:1}" --defer 1 \
      2>&1 | tee -a "$OUT/chain-probe.txt"
    timeout 100 python scripts/exp_chain_probe.py --cases "128:1024:1" --defer 0 2>&1 | tee -a "$OUT/chain-probe.txt" ;;
  global)
    timeout "${TP:-200}" python scripts/exp_chain_probe.py --cases "${CASES:-64:1024:1,64:1024:0,64:2048:1}" --defer 1 \
      --global-timer 2>&1 | tee -a "$OUT/chain-probe-global.txt"
    timeout 100 python scripts/exp_chain_probe.py --cases "128:1024:1,128:1024:0" --defer 0 --global-timer 2>&1 \
      | tee -a "$OUT/chain-probe-global.txt" ;;
  dyn)
    gpu_pytest "${T1:-230}" 12 tests-dyn.txt tests/test_hopper_fwd.py -k "dyn_causal"
    FK_SWITCHES="HOPPER_FWD_DYN_CAUSAL=(64, 128)" gpu_pytest "${T2:-200}" 12 tests-dyn-on.txt -p pytest_switch \
      tests/test_hopper_fwd.py tests/test_cuda_graphs.py tests/test_eager_path.py \
      -k "${TK:-causal or persistent or chain or short or plan or graph or eager}"
    timeout "${TA:-250}" python scripts/ab_attention.py --gluon --paired "${N:-16}" --switch HOPPER_FWD_DYN_CAUSAL \
      --on "(64, 128)" --off "()" --modes fwd --head-dims "${DIMS:-64,128}" --seqlens "${SEQ:-1024,2048,4096}" \
      --causal 1 2>&1 | tail -9 | tee -a "$OUT/ab-dyn.txt" ;;
  dyn2)
    gpu_pytest "${T1:-200}" 12 tests-dyn2.txt tests/test_hopper_fwd.py -k "dyn_causal"
    timeout "${TA:-300}" python scripts/ab_attention.py --gluon --paired "${N:-16}" --switch HOPPER_FWD_DYN_CAUSAL \
      --on "(64, 128)" --off "()" --modes fwd --head-dims "${DIMS:-64,128}" --seqlens "${SEQ:-1024,2048,4096,8192}" \
      --causal 1 2>&1 | tail -10 | tee -a "$OUT/ab-dyn2.txt" ;;
  dynprobe)
    timeout 120 python scripts/exp_chain_probe.py --cases "64:1024:1" --defer 1 --global-timer --dyn 2>&1 \
      | grep -a "globaltimer" | tee -a "$OUT/chain-probe-dyn.txt"
    timeout 120 python scripts/exp_chain_probe.py --cases "128:2048:1" --defer 0 --global-timer --dyn 2>&1 \
      | grep -a "globaltimer" | tee -a "$OUT/chain-probe-dyn.txt" ;;
  rot)
    gpu_pytest "${T1:-200}" 12 tests-rot.txt tests/test_hopper_fwd.py -k "causal_rot"
    timeout "${TA:-300}" python scripts/ab_attention.py --gluon --paired "${N:-16}" --switch HOPPER_FWD_CAUSAL_ROT \
      --on "(64, 128)" --off "()" --modes fwd --head-dims "${DIMS:-64,128}" --seqlens "${SEQ:-1024,2048,4096,8192}" \
      --causal 1 2>&1 | tail -10 | tee -a "$OUT/ab-rot.txt"
    for set in "" "HOPPER_FWD_CAUSAL_ROT=(64, 128)"; do
      timeout 100 python scripts/exp_chain_probe.py --cases "64:1024:1" --defer 1 --global-timer --set "$set" 2>&1 \
        | grep -a "globaltimer\|^launch" | tee -a "$OUT/chain-probe-rot.txt"
    done ;;
  final)
    gpu_pytest "${T1:-210}" 8 tests-final-others.txt tests/test_gpu.py tests/test_hopper_fwd_varlen.py \
      tests/test_hopper_bwd_varlen.py tests/test_rms_norm.py tests/test_swiglu.py tests/test_kvcache.py \
      tests/test_transformers_integration.py tests/test_rope.py tests/test_memory.py tests/test_alibi_sink_varlen.py \
      tests/test_bench_ops.py tests/test_attention_features.py tests/test_cuda_graphs.py tests/test_launch_cache.py
    gpu_pytest "${T2:-270}" 8 tests-final-fwd.txt tests/test_hopper_fwd.py ;;
  *)
    echo "usage: $0 first|global|dyn|dyn2|dynprobe|rot|final" >&2
    exit 2 ;;
esac
