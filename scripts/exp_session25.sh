#!/usr/bin/env bash
# Session 25's device calls (docs/perf-notes.md, session 25). One section a call:
#   bash scripts/exp_session25.sh varlen  the persistent varlen forward (launch.HOPPER_FWD_VARLEN_PERSISTENT, the
#                                         packed tiles by a dynamic scheduler): its bitwise test against the grid
#                                         launch, the varlen GPU suites with it on at D = 128 and 256
#                                         (-p pytest_switch), then scripts/ab_varlen.py (grid / persistent / dense,
#                                         paired CUDA-graph replays) at D = 128 and 256
#   bash scripts/exp_session25.sh sort    the same with the persistent launch's tiles longest first
#                                         (launch.HOPPER_FWD_VARLEN_SORT): the bitwise test (grid, persistent,
#                                         sorted), the suites with both switches on, ab_varlen.py's three variants
#   bash scripts/exp_session25.sh host    session 24's host changes on a GPU (the input checks' fast path, the
#                                         launch key's bools): the launch cache's GPU tests and the Gluon
#                                         forward's persistent / short ones with FLASHKERNELS_LAUNCH_CACHE=check,
#                                         then scripts/exp_host_1k.py (eager host time against GPU time)
#   bash scripts/exp_session25.sh bench   flashkernels bench varlen (the committed defaults)
#   bash scripts/exp_session25.sh final   the committed defaults: the launch cache's GPU test, ab_varlen.py's four
#                                         variants (grid, persistent, sorted heads innermost / head by head), the
#                                         varlen GPU suites (forward, ALiBi / sink, backward), bench varlen, then
#                                         the Gluon kernels' memcheck / racecheck (the persistent varlen forward on
#                                         3 SMs)
#   bash scripts/exp_session25.sh plans   the Gluon forward's launch plans (launch.HOPPER_FWD_PLANS): the plan
#                                         test and test_hopper_fwd.py's forward GPU tests with
#                                         FLASHKERNELS_LAUNCH_CACHE=check (every plan hit compared with the full
#                                         path), exp_host_1k.py, then bench varlen --paired
# Writes under $OUT (default ./out). Carry .gpu-wheels (pytest-xdist, execnet). The sections ran on the
# commits docs/gpu-test-log.md's session-25 rows name.
source "$(dirname "$0")/device_env.sh"  # (strict mode, the root, $OUT, the card; exits without the root)
SW=${SW:-HOPPER_FWD_VARLEN_PERSISTENT=(128, 256)}
case "${1:-}" in
  varlen)
    timeout "${T1:-150}" python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short tests/test_hopper_fwd_varlen.py \
      -k persistent 2>&1 | tail -12 | tee -a "$OUT/tests-persistent.txt"
    FK_SWITCHES="$SW" timeout "${T2:-200}" python -m pytest -q -p no:warnings -p pytest_switch -m gpu -n 8 \
      --tb=short tests/test_hopper_fwd_varlen.py tests/test_alibi_sink_varlen.py 2>&1 | tail -12 \
      | tee -a "$OUT/tests-switch.txt"
    timeout "${TA:-200}" python scripts/ab_varlen.py --paired "${N:-24}" --head-dims "${DIMS:-128,256}" 2>&1 \
      | tail -12 | tee -a "$OUT/ab-varlen.txt" ;;
  sort)
    timeout "${T1:-150}" python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short tests/test_hopper_fwd_varlen.py \
      -k persistent 2>&1 | tail -12 | tee -a "$OUT/tests-sort.txt"
    FK_SWITCHES="$SW;HOPPER_FWD_VARLEN_SORT=1" timeout "${T2:-200}" python -m pytest -q -p no:warnings \
      -p pytest_switch -m gpu -n 8 --tb=short tests/test_hopper_fwd_varlen.py tests/test_alibi_sink_varlen.py 2>&1 \
      | tail -12 | tee -a "$OUT/tests-sort-switch.txt"
    timeout "${TA:-200}" python scripts/ab_varlen.py --paired "${N:-24}" --head-dims "${DIMS:-128,256}" 2>&1 \
      | tail -12 | tee -a "$OUT/ab-varlen-sort.txt" ;;
  host)
    FLASHKERNELS_LAUNCH_CACHE=check timeout "${T1:-200}" python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short \
      tests/test_launch_cache.py tests/test_hopper_fwd.py -k "cache or persistent or short or chain" 2>&1 | tail -8 \
      | tee -a "$OUT/tests-host.txt"
    timeout "${TH:-150}" python scripts/exp_host_1k.py 2>&1 | tail -30 | tee -a "$OUT/host-1k.txt" ;;
  bench)
    timeout 200 python -m flashkernels bench varlen --csv "$OUT/varlen.csv" 2>&1 | tail -8 | tee -a "$OUT/varlen.txt" ;;
  final)
    FLASHKERNELS_LAUNCH_CACHE=check timeout 120 python -m pytest -q -p no:warnings -m gpu --tb=short \
      tests/test_launch_cache.py 2>&1 | tail -4 | tee -a "$OUT/final.txt"
    timeout 200 python scripts/ab_varlen.py --paired "${N:-24}" --head-dims 128,256 2>&1 | tail -12 \
      | tee -a "$OUT/ab-varlen-final.txt"
    timeout 170 python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short tests/test_hopper_fwd_varlen.py \
      tests/test_alibi_sink_varlen.py tests/test_hopper_bwd_varlen.py 2>&1 | tail -6 | tee -a "$OUT/final.txt"
    timeout 120 python -m flashkernels bench varlen --csv "$OUT/varlen.csv" 2>&1 | tail -8 | tee -a "$OUT/varlen.txt"
    timeout "${TS:-180}" python -m pytest -q -p no:warnings -m gpu -n 2 --tb=short tests/test_hopper_bwd.py \
      -k "memcheck or racecheck" 2>&1 | tail -12 | tee -a "$OUT/final.txt" ;;
  plans)
    FLASHKERNELS_LAUNCH_CACHE=check timeout "${T1:-240}" python -m pytest -q -p no:warnings -m gpu -n 8 \
      --tb=short tests/test_hopper_fwd.py tests/test_launch_cache.py \
      -k "plans or cache or persistent or short or chain or softcap or alibi or window or sink" 2>&1 | tail -8 \
      | tee -a "$OUT/tests-plans.txt"
    timeout "${TH:-120}" python scripts/exp_host_1k.py 2>&1 | tail -8 | tee -a "$OUT/host-1k-plans.txt"
    timeout 150 python -m flashkernels bench varlen --paired "${N:-12}" --csv "$OUT/varlen-paired.csv" 2>&1 \
      | tail -12 | tee -a "$OUT/varlen-paired.txt" ;;
  *) echo "usage: $0 varlen|sort|host|bench|final|plans"; exit 2 ;;
esac
