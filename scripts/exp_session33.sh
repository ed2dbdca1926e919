#!/usr/bin/env bash
# Session 33's device calls (docs/perf-notes.md, session 33). One section a call:
#   bash scripts/exp_session33.sh tests   the backward writing dQ itself (launch.HOPPER_BWD_DQ_CONVERT) forced on at
#                                         D = 64 and 128 at any length: the GPU test files that run the Gluon backward
#                                         (launch cache in check mode)
#   bash scripts/exp_session33.sh ab      its paired A/B at D = 128, 1k-8k, non-causal, MHA and the GQA shape's
#                                         grouping, on ({128: None}) / off ({})
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
  *)
    echo "usage: $0 tests|ab" >&2
    exit 2 ;;
esac
