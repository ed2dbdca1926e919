#!/usr/bin/env bash
# Session 29's device calls (docs/perf-notes.md, session 29). One section a call:
# (bwdsplit and abonly need docs/patches/s29-bwd-split-tail.patch applied to 577fe08: the split inside one kernel, not kept)
#   bash scripts/exp_session29.sh bwdsplit   the plain non-causal backward's last round split (launch.HOPPER_BWD_SPLIT_TAIL,
#                                            D = 128): its GPU test with the backward's plain / dQ-path / CTA-order ones and
#                                            the forward's split-tail test (its 4k case's first GPU run; the launch cache
#                                            in check mode), then scripts/ab_attention.py --paired (on / off) at 1k / 4k / 16k
#                                            (1k with the key floor off)
#   bash scripts/exp_session29.sh abonly     the same A/B with the SPLIT_TAIL build launched without a split tile
#                                            (launch.HOPPER_BWD_SPLIT_BUILD_ONLY: the build's cost alone), then with the split
#   bash scripts/exp_session29.sh tail       the plain non-causal backward's last rows of tiles as a tail launch of parts by
#                                            programmatic dependent launch (launch.HOPPER_BWD_TAIL, D = 128): its GPU test
#                                            with the backward's plain / dQ-path / CTA-order / layout ones and the memory
#                                            estimate's (the launch cache in check mode), then scripts/ab_attention.py
#                                            --paired (on / off) at 1k / 4k / 16k (1k with the key floor off)
#   bash scripts/exp_session29.sh tail64     the same at D = 64 (its 128-row build): the tail's GPU tests at D = 64 and 128,
#                                            then the A/B at D = 64 (on: HOPPER_BWD_TAIL (64, 128), off: (128,))
#   bash scripts/exp_session29.sh final      the landed defaults (HOPPER_BWD_TAIL = (64, 128)): `bench attention --graph`'s
#                                            non-causal backward at D = 64 / 128, 4k / 16k, with SDPA cuDNN / flash, then
#                                            test_hopper_bwd.py's and test_memory.py's GPU tests (launch cache in check mode)
#   bash scripts/exp_session29.sh grid       `flashkernels bench attention --graph` over the README's grid with SDPA cuDNN and
#                                            SDPA flash in the same process (issue 3's ratios on this card)
# Writes under $OUT (default ./out). Carry .gpu-wheels (pytest-xdist, execnet).
source "$(dirname "$0")/device_env.sh"  # (strict mode, the root, $OUT, the card; exits without the root)
case "${1:-}" in
  bwdsplit)
    gpu_pytest "${T1:-240}" 12 tests-bwd-split.txt tests/test_hopper_bwd.py tests/test_hopper_fwd.py \
      -k "split_tail or test_hopper_bwd_cuda or dq_paths or cta_orders or block_m_cuda"
    timeout "${TA:-240}" python scripts/ab_attention.py --gluon --paired "${N:-20}" --switch HOPPER_BWD_SPLIT_TAIL \
      --on "(128,)" --off "()" --also "HOPPER_BWD_SPLIT_TAIL_MIN_KEYS=0" --modes bwd --head-dims 128 \
      --seqlens "${SEQLENS:-1024,4096,16384}" --causal 0 2>&1 | tail -10 | tee -a "$OUT/ab-bwd-split.txt" ;;
  abonly)
    for ALSO in "HOPPER_BWD_SPLIT_BUILD_ONLY=True" "HOPPER_BWD_SPLIT_BUILD_ONLY=False"; do
      timeout "${TA:-200}" python scripts/ab_attention.py --gluon --paired "${N:-20}" --switch HOPPER_BWD_SPLIT_TAIL \
        --on "(128,)" --off "()" --also "HOPPER_BWD_SPLIT_TAIL_MIN_KEYS=0;$ALSO" --modes bwd --head-dims 128 \
        --seqlens "${SEQLENS:-4096,16384}" --causal 0 2>&1 | tail -7 | tee -a "$OUT/ab-bwd-split-only.txt"
    done ;;
  tail)
    gpu_pytest "${T1:-240}" 12 tests-bwd-tail.txt tests/test_hopper_bwd.py tests/test_memory.py \
      -k "tail_cuda or test_hopper_bwd_cuda or dq_paths or cta_orders or block_m_cuda or layouts_cuda or estimate"
    timeout "${TA:-240}" python scripts/ab_attention.py --gluon --paired "${N:-20}" --switch HOPPER_BWD_TAIL \
      --on "(128,)" --off "()" --also "HOPPER_BWD_TAIL_MIN_KEYS=0" --modes bwd --head-dims 128 \
      --seqlens "${SEQLENS:-1024,4096,16384}" --causal 0 2>&1 | tail -10 | tee -a "$OUT/ab-bwd-tail.txt" ;;
  tail64)
    gpu_pytest "${T1:-200}" 6 tests-bwd-tail64.txt tests/test_hopper_bwd.py -k "tail_cuda"
    timeout "${TA:-240}" python scripts/ab_attention.py --gluon --paired "${N:-20}" --switch HOPPER_BWD_TAIL \
      --on "(64, 128)" --off "(128,)" --also "HOPPER_BWD_TAIL_MIN_KEYS=0" --modes bwd --head-dims 64 \
      --seqlens "${SEQLENS:-1024,4096,16384}" --causal 0 2>&1 | tail -10 | tee -a "$OUT/ab-bwd-tail64.txt" ;;
  final)
    timeout "${TB:-200}" python -m flashkernels bench attention --graph --modes bwd --head-dims 64,128 \
      --seqlens 4096,16384 --causal no --no-gqa --providers flashkernels,sdpa-cudnn,sdpa-flash \
      --csv "$OUT/attention-bwd-graph.csv" 2>&1 | tail -12 | tee -a "$OUT/attention-bwd-graph.txt"
    gpu_pytest "${T1:-300}" 8 tests-final.txt tests/test_hopper_bwd.py tests/test_memory.py ;;
  grid)
    timeout "${TG:-560}" python -m flashkernels bench attention --graph --providers flashkernels,sdpa-cudnn,sdpa-flash \
      --csv "$OUT/attention-graph.csv" --plot "$OUT/attention-graph.png" 2>&1 | tail -70 \
      | tee -a "$OUT/attention-graph.txt" ;;
  *) echo "usage: $0 bwdsplit|abonly|tail|tail64|final|grid"; exit 2 ;;
esac
