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
  *) echo "usage: $0 chain|qsets|half"; exit 2 ;;
esac
