#!/usr/bin/env bash
# Session 23's device calls (docs/perf-notes.md, session 23). One section a call:
#   bash scripts/exp_session23.sh defer   the forward's chained GPU tests with HOPPER_FWD_CHAIN_DEFER at both
#                                         chained head dims, then a paired A/B of it (on: D = 64 and 128, off:
#                                         none). The session's run switched an int (1 / 0, and 2 against 1 for
#                                         the lse stored after the output's TMA store, since dropped)
#   bash scripts/exp_session23.sh probe   scripts/exp_chain_probe.py (where a chained tile's time goes), then
#                                         a paired A/B of D = 64's short build with 64-key blocks
#                                         (HOPPER_FWD_SHORT). The session's run also had the tile end under
#                                         the next tile's wgmmas (docs/patches/s23-chain-epi-late-exp.patch),
#                                         which hung
#   bash scripts/exp_session23.sh final   the defaults as committed: test_hopper_fwd.py's GPU tests and the
#                                         Gluon kernels' memcheck / racecheck; exp_chain_probe.py at D = 128
#                                         and D = 64 causal
#   bash scripts/exp_session23.sh grid    exp_chain_probe.py at D = 128 / 64 1k; flashkernels bench attention
#                                         (the FA3 grid, fwd and bwd, against SDPA cuDNN and flash)
#   bash scripts/exp_session23.sh graph   bench attention's --graph test, then the grid's 1k / 2k shapes timed
#                                         from CUDA-graph replays (GPU time)
#   bash scripts/exp_session23.sh qfirst  paired A/B of HOPPER_FWD_CHAIN_QFIRST (the producer loads a tile's Q
#                                         before its K_0), then the chained GPU tests with it on (the switch is
#                                         in docs/patches/s23-chain-qfirst-exp.patch: apply it first)
# Writes under $OUT (default ./out). Carry .gpu-wheels (pytest-xdist, execnet). The sections ran on the
# commits docs/gpu-test-log.md's session-23 rows name.
source "$(dirname "$0")/device_env.sh"  # (strict mode, the root, $OUT, the card; exits without the root)
git log -1 --format=%h | tee -a "$OUT/card.txt"
SW=${SW:-HOPPER_FWD_CHAIN_DEFER=(64, 128)}
case "${1:-}" in
  defer)
    FK_SWITCHES="$SW" timeout "${TT:-200}" python -m pytest -q -p no:warnings -p pytest_switch -m gpu -n 8 \
      --tb=short tests/test_hopper_fwd.py -k "persistent or short or rotate or softcap_static" 2>&1 | tail -8 \
      | tee -a "$OUT/tests.txt"
    timeout "${TA:-260}" python scripts/ab_attention.py --gluon --paired "${N:-24}" --switch HOPPER_FWD_CHAIN_DEFER \
      --on "(64, 128)" --off "()" --modes fwd --seqlens "${SEQLENS:-1024,2048,4096,16384}" \
      --head-dims "${DIMS:-64,128}" 2>&1 | tail -20 | tee -a "$OUT/ab.txt" ;;
  probe)
    timeout 150 python scripts/exp_chain_probe.py --cases "${CASES:-64:1024:0,64:1024:1,128:1024:0,128:4096:0}" \
      --defer 0,1 2>&1 | tail -14 | tee -a "$OUT/probe.txt"
    timeout 150 python scripts/ab_attention.py --gluon --paired "${N:-24}" --switch HOPPER_FWD_SHORT \
      --on "{64: (64, 4, 2048, 4096)}" --off "{64: (128, 3, 2048, 4096)}" --also "HOPPER_FWD_CHAIN_DEFER=(64,)" \
      --modes fwd --seqlens 1024,2048 --head-dims 64 2>&1 | tail -7 | tee -a "$OUT/ab-bn64.txt" ;;
  final)
    timeout "${TF:-330}" python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short tests/test_hopper_fwd.py 2>&1 \
      | tail -8 | tee -a "$OUT/final.txt"
    timeout "${TS:-300}" python -m pytest -q -p no:warnings -m gpu -n 2 --tb=short tests/test_hopper_bwd.py \
      -k "memcheck or racecheck" 2>&1 | tail -6 | tee -a "$OUT/final.txt"
    timeout 120 python scripts/exp_chain_probe.py --cases "${CASES:-128:1024:0,128:4096:0,64:1024:1}" --defer 0,1 2>&1 \
      | tail -8 | tee -a "$OUT/probe.txt" ;;
  grid)
    timeout 120 python scripts/exp_chain_probe.py --cases "${CASES:-128:1024:0,64:1024:0}" --defer 1 2>&1 | tail -4 \
      | tee -a "$OUT/probe.txt"
    timeout 400 python -m flashkernels bench attention --providers flashkernels,sdpa-cudnn,sdpa-flash \
      --csv "$OUT/attention-s23.csv" --plot "$OUT/attention-s23.png" > "$OUT/attention-s23.txt" 2>&1
    tail -70 "$OUT/attention-s23.txt" | grep "x[0-9]" | head -64 ;;
  graph)
    timeout 100 python -m pytest -q -p no:warnings -m gpu tests/test_bench_ops.py -k bench_attention 2>&1 | tail -3 \
      | tee -a "$OUT/graph.txt"
    timeout 240 python -m flashkernels bench attention --providers flashkernels,sdpa-cudnn,sdpa-flash \
      --seqlens "${SEQLENS:-1024,2048}" --no-gqa --graph --csv "$OUT/attention-s23-graph.csv" \
      > "$OUT/attention-s23-graph.txt" 2>&1
    grep "x[0-9]\|do_bench" "$OUT/attention-s23-graph.txt" | tee -a "$OUT/graph.txt" ;;
  qfirst)
    timeout 130 python scripts/ab_attention.py --gluon --paired "${N:-24}" --switch HOPPER_FWD_CHAIN_QFIRST \
      --on "(64, 128)" --off "()" --modes fwd --seqlens "${SEQLENS:-1024,2048,4096}" --head-dims "${DIMS:-128,64}" \
      2>&1 | tail -14 | tee -a "$OUT/ab-qfirst.txt"
    FK_SWITCHES="HOPPER_FWD_CHAIN_QFIRST=(64, 128)" timeout "${TT:-170}" python -m pytest -q -p no:warnings \
      -p pytest_switch -m gpu -n 8 --tb=short tests/test_hopper_fwd.py -k "persistent or short or chain_defer" 2>&1 \
      | tail -4 | tee -a "$OUT/tests-qfirst.txt" ;;
  *) echo "usage: $0 defer|probe|final|grid|graph|qfirst"; exit 2 ;;
esac
