#!/usr/bin/env bash
# Session 28's device calls (docs/perf-notes.md, session 28). One section a call:
#   bash scripts/exp_session28.sh d64     the varlen forward at D = 64: scripts/ab_varlen.py's grid (the default for
#                                         non-causal calls: the Triton kernel below 2048 rows), pub-defer (the
#                                         persistent two-warpgroup launch with two Q sets, PUB and DEFER, the causal
#                                         default) and pub-defer-st3 (+ a three-stage K / V ring; ran as a switch
#                                         HOPPER_FWD_VARLEN_STAGES = {64: 3}, landed as launch.HOPPER_FWD_VARLEN_SHORT,
#                                         below 2048 rows) on `bench varlen`'s lengths (x SCALES), then the varlen GPU
#                                         suites with D = 64's two-warpgroup launch and three stages on
#   bash scripts/exp_session28.sh decode  the decode step on this card: the device-to-device copy ceiling (bytes read
#                                         + written a second, as ANCHORS.md's), then `flashkernels bench decode
#                                         --graph` (SDPA flash / cuDNN in the same process), twice
#   bash scripts/exp_session28.sh final   the landed defaults: the varlen GPU suites (forward, ALiBi / sink,
#                                         backward), the KV-cache GPU tests, bench decode --graph, bench varlen (and
#                                         --paired)
#   bash scripts/exp_session28.sh grid    `flashkernels bench attention` over the README's grid with SDPA cuDNN and
#                                         SDPA flash in the same process (issue 3's ratios on this card)
#   bash scripts/exp_session28.sh split   the non-causal forward's last round split by key blocks
#                                         (launch.HOPPER_FWD_SPLIT_TAIL, D = 128): its GPU tests with the persistent /
#                                         plan / chain ones (the launch cache in check mode), then scripts/ab_attention.py
#                                         --paired (on / off) at 1k / 4k / 16k
# Writes under $OUT (default ./out). Carry .gpu-wheels (pytest-xdist, execnet).
source "$(dirname "$0")/device_env.sh"  # (strict mode, the root, $OUT, the card; exits without the root)
case "${1:-}" in
  d64)
    for SC in ${SCALES:-1}; do
      timeout "${TA:-200}" python scripts/ab_varlen.py --paired "${N:-20}" --head-dims 64 --scale "$SC" \
        --variants "${VARIANTS:-grid,pub-defer,pub-defer-st3}" 2>&1 | tail -8 | tee -a "$OUT/ab-varlen-d64-x$SC.txt"
    done
    FK_SWITCHES="HOPPER_FWD_VARLEN_PERSISTENT=(64, 128);HOPPER_FWD_VARLEN_SHORT={64: (1073741824, 3)}" \
      timeout "${T2:-200}" \
      python -m pytest -q -p no:warnings -p pytest_switch -m gpu -n 8 --tb=short tests/test_hopper_fwd_varlen.py \
      tests/test_alibi_sink_varlen.py 2>&1 | tail -12 | tee -a "$OUT/tests-d64-st3.txt" ;;
  decode)
    timeout 60 python - <<'PY' 2>&1 | tee -a "$OUT/copy-ceiling.txt"
import torch, triton
n = 1 << 30  # bytes a buffer
src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
dst = torch.empty_like(src)
for rep in range(3):
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300)
    print(f"{torch.cuda.get_device_name()}: device-to-device copy of {n >> 20} MiB: {ms * 1e3:.1f} us, "
          f"{2 * n / ms * 1e-9:.3f} TB/s (read + written), do_bench median")
PY
    for r in 1 2; do
      timeout 150 python -m flashkernels bench decode --graph --csv "$OUT/decode-graph.csv" 2>&1 | tail -14 \
        | tee -a "$OUT/decode-graph.txt"
    done ;;
  final)
    timeout 200 python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short tests/test_hopper_fwd_varlen.py \
      tests/test_alibi_sink_varlen.py tests/test_hopper_bwd_varlen.py 2>&1 | tail -6 | tee -a "$OUT/final.txt"
    timeout 150 python -m pytest -q -p no:warnings -m gpu -n 4 --tb=short tests/test_kvcache.py \
      tests/test_kvcache_paths.py 2>&1 | tail -6 | tee -a "$OUT/final.txt"
    timeout 100 python -m flashkernels bench decode --graph --csv "$OUT/decode-graph.csv" 2>&1 | tail -13 \
      | tee -a "$OUT/decode-graph.txt"
    timeout 50 python -m flashkernels bench varlen --csv "$OUT/varlen.csv" 2>&1 | tail -8 | tee -a "$OUT/varlen.txt"
    timeout 70 python -m flashkernels bench varlen --paired "${N:-12}" --csv "$OUT/varlen-paired.csv" 2>&1 \
      | tail -12 | tee -a "$OUT/varlen-paired.txt" ;;
  split)
    FLASHKERNELS_LAUNCH_CACHE=check timeout "${T1:-200}" python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short \
      tests/test_hopper_fwd.py -k "split_tail or persistent_cuda or plans_cuda or chain_defer" 2>&1 | tail -8 \
      | tee -a "$OUT/tests-split-tail.txt"
    timeout "${TA:-200}" python scripts/ab_attention.py --gluon --paired "${N:-20}" --switch HOPPER_FWD_SPLIT_TAIL \
      --on "(128,)" --off "()" --modes fwd --head-dims 128 --seqlens 1024,4096,16384 --causal 0 2>&1 | tail -8 \
      | tee -a "$OUT/ab-split-tail.txt" ;;
  grid)
    timeout "${TG:-560}" python -m flashkernels bench attention --providers flashkernels,sdpa-cudnn,sdpa-flash \
      --csv "$OUT/attention.csv" --plot "$OUT/attention.png" 2>&1 | tail -70 | tee -a "$OUT/attention.txt" ;;
  *) echo "usage: $0 d64|decode|final|grid|split"; exit 2 ;;
esac
