#!/usr/bin/env bash
# Session 30's device calls (docs/perf-notes.md, session 30). One section a call:
#   bash scripts/exp_session30.sh tail256    the D = 256 backward's tail launch (built in session 29, off): the tail's GPU
#                                            tests at D = 64 / 128 / 256 (launch cache in check mode), then
#                                            scripts/ab_attention.py --paired with HOPPER_BWD_TAIL naming 256 or not, at
#                                            1k / 4k / 16k (key floor off)
#   bash scripts/exp_session30.sh final      the landed default (HOPPER_BWD_TAIL = (64, 128, 256)): test_hopper_bwd.py's and
#                                            test_memory.py's GPU tests (launch cache in check mode)
#   bash scripts/exp_session30.sh bwdbench   `bench attention --graph`'s non-causal backward at D = 128 (8k) and 256 (4k / 16k),
#                                            with SDPA cuDNN / flash, after D = 256 took the tail launch
# (decode needs docs/patches/s30-decode-combine-pdl.patch applied to 8b63fba: not kept)
#   bash scripts/exp_session30.sh decode     the split decode's combine by programmatic dependent launch (kvcache
#                                            launch.COMBINE_PDL): the kvcache GPU tests, then scripts/ab_decode_pdl.py (paired
#                                            on / off, B = 1 128k contiguous / paged, B = 4 32k, B = 16 8k)
# (half needs docs/patches/s30-fwd-half-diag.patch applied to 8b63fba: not kept)
#   bash scripts/exp_session30.sh half       the causal chained forward's half diagonal (launch.HOPPER_FWD_HALF_DIAG, off):
#                                            its GPU test, the forward's causal chained / short tests with it on at D = 64
#                                            and 128, then scripts/ab_attention.py --paired on / off at 1k / 2k / 4k / 8k
# Writes under $OUT (default ./out). Carry .gpu-wheels (pytest-xdist, execnet).
source "$(dirname "$0")/device_env.sh"  # (strict mode, the root, $OUT, the card; exits without the root)
case "${1:-}" in
  tail256)
    gpu_pytest "${T1:-240}" 12 tests-bwd-tail256.txt tests/test_hopper_bwd.py -k "tail_cuda"
    timeout "${TA:-300}" python scripts/ab_attention.py --gluon --paired "${N:-20}" --switch HOPPER_BWD_TAIL \
      --on "(64, 128, 256)" --off "(64, 128)" --also "HOPPER_BWD_TAIL_MIN_KEYS=0" --modes bwd --head-dims 256 \
      --seqlens "${SEQLENS:-1024,4096,16384}" --causal 0 2>&1 | tail -10 | tee -a "$OUT/ab-bwd-tail256.txt" ;;
  half)
    gpu_pytest "${T1:-200}" 12 tests-half-diag.txt tests/test_hopper_fwd.py -k "half_diag"
    FK_SWITCHES="HOPPER_FWD_HALF_DIAG=(64, 128)" timeout "${T2:-200}" python -m pytest -q -p no:warnings -m gpu -n 8 \
      --tb=short -p pytest_switch tests/test_hopper_fwd.py -k "causal and (short or persistent or chain or pairs)" \
      2>&1 | tail -12 | tee -a "$OUT/tests-half-diag-switch.txt"
    timeout "${TA:-300}" python scripts/ab_attention.py --gluon --paired "${N:-20}" --switch HOPPER_FWD_HALF_DIAG \
      --on "(64, 128)" --off "()" --modes fwd --head-dims "${DIMS:-64,128}" --seqlens "${SEQLENS:-1024,2048,4096,8192}" \
      --causal 1 2>&1 | tail -14 | tee -a "$OUT/ab-half-diag.txt" ;;
  final)
    gpu_pytest "${T1:-400}" 8 tests-final.txt tests/test_hopper_bwd.py tests/test_memory.py ;;
  bwdbench)
    for dims_s in "256:4096,16384" "128:8192"; do
      timeout "${TB:-200}" python -m flashkernels bench attention --graph --modes bwd --head-dims "${dims_s%%:*}" \
        --seqlens "${dims_s##*:}" --causal no --no-gqa --providers flashkernels,sdpa-cudnn,sdpa-flash \
        --csv "$OUT/attention-bwd-graph.csv" 2>&1 | tail -6 | tee -a "$OUT/attention-bwd-graph.txt"
    done ;;
  decode)
    gpu_pytest "${T1:-240}" 8 tests-decode-pdl.txt tests/test_kvcache.py tests/test_kvcache_paths.py
    timeout "${TA:-240}" python scripts/ab_decode_pdl.py --reps "${N:-40}" 2>&1 | tail -8 | tee -a "$OUT/ab-decode-pdl.txt" ;;
  *) echo "usage: $0 tail256|final|bwdbench|decode|half"; exit 2 ;;
esac
