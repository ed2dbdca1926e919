#!/usr/bin/env bash
# Session 26's device calls (docs/perf-notes.md, session 26). One section a call:
#   bash scripts/exp_session26.sh chain   the persistent varlen forward chained (run with
#                                         docs/patches/s26-varlen-chain.patch applied: launch.HOPPER_FWD_VARLEN_CHAIN,
#                                         kernels/fwd_hopper._ws_consumer_dyn_chain; not kept): the bitwise test
#                                         against the grid launch, the varlen GPU suites with it on at D = 128
#                                         (-p pytest_switch), then scripts/ab_varlen.py (persistent / chain / grid /
#                                         dense, paired CUDA-graph replays) at D = 128
#   bash scripts/exp_session26.sh qsets   the same for two sets of Q buffers in the persistent varlen forward
#                                         (launch.HOPPER_FWD_VARLEN_QSETS): the bitwise test (grid, persistent,
#                                         qsets, sorted), the varlen suites with it on, ab_varlen.py
#   bash scripts/exp_session26.sh half    the same for the last key blocks half wide (run with
#                                         docs/patches/s26-varlen-half.patch applied: launch.HOPPER_FWD_VARLEN_HALF,
#                                         kernels/fwd_hopper._ws_half_last; not kept): the bitwise test (grid,
#                                         persistent, qsets, half, sorted), the varlen suites with it on,
#                                         ab_varlen.py (qsets / half / sorted / sorted-outer / dense)
#   bash scripts/exp_session26.sh final   the committed defaults: the launch cache's GPU test, the varlen GPU suites
#                                         (forward, ALiBi / sink, backward), bench varlen and bench varlen --paired,
#                                         then the Gluon kernels' memcheck / racecheck
# Writes under $OUT (default ./out). Carry .gpu-wheels (pytest-xdist, execnet). The sections ran on the
# commits docs/gpu-test-log.md's session-26 rows name.
source "$(dirname "$0")/device_env.sh"  # (strict mode, the root, $OUT, the card; exits without the root)
case "${1:-}" in
  chain|qsets|half)
    V=$1
    case $V in
      chain) SW=${SW:-HOPPER_FWD_VARLEN_CHAIN=(128,)} ;;
      qsets) SW=${SW:-HOPPER_FWD_VARLEN_QSETS=(128,)} ;;
      half) SW=${SW:-HOPPER_FWD_VARLEN_HALF=(128,)}; VARIANTS=${VARIANTS:-qsets,half,sorted,sorted-outer} ;;
    esac
    timeout "${T1:-150}" python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short tests/test_hopper_fwd_varlen.py \
      -k persistent 2>&1 | tail -12 | tee -a "$OUT/tests-$V.txt"
    FK_SWITCHES="$SW" timeout "${T2:-200}" python -m pytest -q -p no:warnings -p pytest_switch -m gpu -n 8 \
      --tb=short tests/test_hopper_fwd_varlen.py tests/test_alibi_sink_varlen.py 2>&1 | tail -12 \
      | tee -a "$OUT/tests-$V-switch.txt"
    timeout "${TA:-200}" python scripts/ab_varlen.py --paired "${N:-24}" --head-dims "${DIMS:-128}" \
      --variants "${VARIANTS:-persistent,$V,grid}" 2>&1 | tail -12 | tee -a "$OUT/ab-varlen-$V.txt" ;;
  final)
    FLASHKERNELS_LAUNCH_CACHE=check timeout 100 python -m pytest -q -p no:warnings -m gpu --tb=short \
      tests/test_launch_cache.py 2>&1 | tail -4 | tee -a "$OUT/final.txt"
    timeout 200 python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short tests/test_hopper_fwd_varlen.py \
      tests/test_alibi_sink_varlen.py tests/test_hopper_bwd_varlen.py 2>&1 | tail -6 | tee -a "$OUT/final.txt"
    timeout 90 python -m flashkernels bench varlen --csv "$OUT/varlen.csv" 2>&1 | tail -8 | tee -a "$OUT/varlen.txt"
    timeout 100 python -m flashkernels bench varlen --paired "${N:-12}" --csv "$OUT/varlen-paired.csv" 2>&1 \
      | tail -12 | tee -a "$OUT/varlen-paired.txt"
    timeout "${TS:-180}" python -m pytest -q -p no:warnings -m gpu -n 2 --tb=short tests/test_hopper_bwd.py \
      -k "memcheck or racecheck" 2>&1 | tail -12 | tee -a "$OUT/final.txt" ;;
  *) echo "usage: $0 chain|qsets|half|final"; exit 2 ;;
esac
