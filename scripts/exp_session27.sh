#!/usr/bin/env bash
# Session 27's device calls (docs/perf-notes.md, session 27). One section a call:
#   bash scripts/exp_session27.sh d64     the varlen forward at D = 64: scripts/ab_varlen.py's grid (the default: the
#                                         Triton kernel below 2048 rows, the three-warpgroup grid from there),
#                                         persistent (two warpgroups, launch.HOPPER_FWD_VARLEN_PERSISTENT) and qsets
#                                         (+ HOPPER_FWD_VARLEN_QSETS) on `bench varlen`'s lengths and on them x 4
#                                         (968-7908, max past D = 64's 2048-row floor), then the varlen GPU suites with
#                                         D = 64 persistent and two Q sets on (-p pytest_switch)
#   bash scripts/exp_session27.sh late    the persistent varlen forward's tile start: each tile's sequence published
#                                         by the producer (launch.HOPPER_FWD_VARLEN_PUB) and the output store waited
#                                         for after the next tile's decode (HOPPER_FWD_VARLEN_DEFER): the bitwise test
#                                         (grid, persistent, qsets, pub-defer, sorted), the varlen GPU suites with both
#                                         on at D = 64 and 128, then scripts/ab_varlen.py (qsets / pub / defer /
#                                         pub-defer / dense) at D = 128, and at D = 64 causal
#   bash scripts/exp_session27.sh rowsum  (run with docs/patches/s27-rowsum-mma-exp.patch applied; not kept) the
#                                         forward's row sums of P by the tensor cores (launch.HOPPER_FWD_ROWSUM, the
#                                         grid launches only): the D = 128 forward GPU tests with it on and
#                                         the persistent launch off, then scripts/ab_attention.py --paired (on / off, both
#                                         grid launches) at D = 128, 1k / 4k / 16k, and with softcap 30 at 4k
#   bash scripts/exp_session27.sh alibi   the causal forward's ALiBi with the split's "before" form on the diagonal's
#                                         blocks too (launch.HOPPER_FWD_ALIBI_CAUSAL_SPLIT; ran as a bool switch, now
#                                         head dims, on at 128 and 256): the ALiBi GPU tests with it on at all three, then scripts/ab_attention.py --alibi --paired (on / off) at
#                                         D = 64 / 128 / 256, 1k / 4k / 16k, causal
#   bash scripts/exp_session27.sh final   the committed defaults: the launch cache's GPU test, the varlen GPU suites
#                                         (forward, ALiBi / sink, backward), the ALiBi forward / backward tests, bench
#                                         varlen (and --paired), bench features --paired, the Gluon kernels' memcheck /
#                                         racecheck
# Writes under $OUT (default ./out). Carry .gpu-wheels (pytest-xdist, execnet). The sections ran on the
# commits docs/gpu-test-log.md's session-27 rows name (final with 120 / 110 s on its varlen suites and
# sanitizers, both too short: 200 / 180 s here. The steps' timeouts add up to 780 s, past one call's 600 s:
# on a cold machine split the section over two calls).
source "$(dirname "$0")/device_env.sh"  # (strict mode, the root, $OUT, the card; exits without the root)
case "${1:-}" in
  d64)
    for SC in ${SCALES:-1 4}; do
      timeout "${TA:-200}" python scripts/ab_varlen.py --paired "${N:-20}" --head-dims 64 --scale "$SC" \
        --variants "${VARIANTS:-grid,persistent,qsets}" 2>&1 | tail -8 | tee -a "$OUT/ab-varlen-d64-x$SC.txt"
    done
    FK_SWITCHES="HOPPER_FWD_VARLEN_PERSISTENT=(64, 128);HOPPER_FWD_VARLEN_QSETS=(64, 128)" timeout "${T2:-200}" \
      python -m pytest -q -p no:warnings -p pytest_switch -m gpu -n 8 --tb=short tests/test_hopper_fwd_varlen.py \
      tests/test_alibi_sink_varlen.py 2>&1 | tail -12 | tee -a "$OUT/tests-d64-switch.txt" ;;
  late)
    timeout "${T1:-150}" python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short tests/test_hopper_fwd_varlen.py \
      -k persistent 2>&1 | tail -12 | tee -a "$OUT/tests-late.txt"
    FK_SWITCHES="HOPPER_FWD_VARLEN_PUB=(64, 128);HOPPER_FWD_VARLEN_DEFER=(64, 128)" timeout "${T2:-200}" \
      python -m pytest -q -p no:warnings -p pytest_switch -m gpu -n 8 --tb=short tests/test_hopper_fwd_varlen.py \
      tests/test_alibi_sink_varlen.py 2>&1 | tail -12 | tee -a "$OUT/tests-late-switch.txt"
    timeout "${TA:-200}" python scripts/ab_varlen.py --paired "${N:-24}" --head-dims 128 \
      --variants "${VARIANTS:-qsets,pub,defer,pub-defer}" 2>&1 | tail -12 | tee -a "$OUT/ab-varlen-late.txt"
    timeout "${TA:-200}" python scripts/ab_varlen.py --paired "${N:-24}" --head-dims 64 --causal 1 \
      --variants qsets,pub-defer 2>&1 | tail -12 | tee -a "$OUT/ab-varlen-late-d64.txt" ;;
  rowsum)
    FK_SWITCHES="HOPPER_FWD_ROWSUM=(128,);HOPPER_FWD_PERSISTENT=False" timeout "${T2:-200}" python -m pytest -q \
      -p no:warnings -p pytest_switch -m gpu -n 8 --tb=line tests/test_hopper_fwd.py \
      -k "128 and not memcheck and not racecheck" 2>&1 | tail -25 | tee -a "$OUT/tests-rowsum.txt"
    timeout "${TA:-240}" python scripts/ab_attention.py --gluon --paired "${N:-20}" --switch HOPPER_FWD_ROWSUM \
      --on "(128,)" --off "()" --also "HOPPER_FWD_PERSISTENT=False" --modes fwd --seqlens 1024,4096,16384 \
      --head-dims 128 2>&1 | tail -14 | tee -a "$OUT/ab-rowsum.txt"
    timeout "${TA:-240}" python scripts/ab_attention.py --gluon --paired "${N:-20}" --switch HOPPER_FWD_ROWSUM \
      --on "(128,)" --off "()" --also "HOPPER_FWD_PERSISTENT=False" --modes fwd --seqlens 4096 --softcap 30 \
      --head-dims 128 2>&1 | tail -8 | tee -a "$OUT/ab-rowsum-softcap.txt" ;;
  alibi)
    FK_SWITCHES="HOPPER_FWD_ALIBI_CAUSAL_SPLIT=(64, 128, 256)" timeout "${T2:-220}" python -m pytest -q -p no:warnings \
      -p pytest_switch -m gpu -n 8 --tb=short tests/test_hopper_fwd.py tests/test_attention_features.py \
      tests/test_alibi_sink_varlen.py tests/test_hopper_bwd.py -k "alibi and not memcheck and not racecheck" 2>&1 \
      | tail -15 | tee -a "$OUT/tests-alibi.txt"
    timeout "${TA:-300}" python scripts/ab_attention.py --gluon --paired "${N:-20}" \
      --switch HOPPER_FWD_ALIBI_CAUSAL_SPLIT --on "(64, 128, 256)" --off "()" --alibi --modes fwd --seqlens 1024,4096,16384 \
      --head-dims "${DIMS:-128,64,256}" --causal 1 2>&1 | tail -14 | tee -a "$OUT/ab-alibi-csplit.txt" ;;
  final)
    FLASHKERNELS_LAUNCH_CACHE=check timeout 60 python -m pytest -q -p no:warnings -m gpu --tb=short \
      tests/test_launch_cache.py 2>&1 | tail -4 | tee -a "$OUT/final.txt"
    timeout 200 python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short tests/test_hopper_fwd_varlen.py \
      tests/test_alibi_sink_varlen.py tests/test_hopper_bwd_varlen.py 2>&1 | tail -6 | tee -a "$OUT/final.txt"
    timeout 130 python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short tests/test_hopper_fwd.py \
      tests/test_hopper_bwd.py -k "alibi and not memcheck and not racecheck" 2>&1 | tail -6 | tee -a "$OUT/final.txt"
    timeout 50 python -m flashkernels bench varlen --csv "$OUT/varlen.csv" 2>&1 | tail -8 | tee -a "$OUT/varlen.txt"
    timeout 70 python -m flashkernels bench varlen --paired "${N:-12}" --csv "$OUT/varlen-paired.csv" 2>&1 \
      | tail -12 | tee -a "$OUT/varlen-paired.txt"
    timeout 90 python -m flashkernels bench features --paired "${NF:-16}" --csv "$OUT/features-paired.csv" 2>&1 \
      | tail -16 | tee -a "$OUT/features-paired.txt"
    timeout "${TS:-180}" python -m pytest -q -p no:warnings -m gpu -n 2 --tb=short tests/test_hopper_bwd.py \
      -k "memcheck or racecheck" 2>&1 | tail -12 | tee -a "$OUT/final.txt" ;;
  *) echo "usage: $0 d64|late|rowsum|alibi|final"; exit 2 ;;
esac
