#!/usr/bin/env bash
# Session 30's device calls (docs/perf-notes.md, session 30). One section a call:
#   bash scripts/exp_session30.sh tail256    the D = 256 backward's tail launch (built in session 29, off): the tail's GPU
#                                            tests at D = 64 / 128 / 256 (launch cache in check mode), then
#                                            scripts/ab_attention.py --paired with HOPPER_BWD_TAIL naming 256 or not, at
#                                            1k / 4k / 16k (key floor off)
# Writes under $OUT (default ./out). Carry .gpu-wheels (pytest-xdist, execnet).
source "$(dirname "$0")/device_env.sh"  # (strict mode, the root, $OUT, the card; exits without the root)
case "${1:-}" in
  tail256)
    FLASHKERNELS_LAUNCH_CACHE=check timeout "${T1:-240}" python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short \
      tests/test_hopper_bwd.py -k "tail_cuda" 2>&1 | tail -12 | tee -a "$OUT/tests-bwd-tail256.txt"
    timeout "${TA:-300}" python scripts/ab_attention.py --gluon --paired "${N:-20}" --switch HOPPER_BWD_TAIL \
      --on "(64, 128, 256)" --off "(64, 128)" --also "HOPPER_BWD_TAIL_MIN_KEYS=0" --modes bwd --head-dims 256 \
      --seqlens "${SEQLENS:-1024,4096,16384}" --causal 0 2>&1 | tail -10 | tee -a "$OUT/ab-bwd-tail256.txt" ;;
  *) echo "usage: $0 tail256"; exit 2 ;;
esac
