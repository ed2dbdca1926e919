#!/usr/bin/env bash
# Session 31's device calls (docs/perf-notes.md, session 31). One section a call:
#   bash scripts/exp_session31.sh epi     the plain non-causal backward's TMA epilogue (launch.HOPPER_BWD_EPI_TMA; run
#                                         with the tuple (64, 128) it was then: any key count): its GPU test and the
#                                         tail's (launch cache in check mode), then scripts/ab_attention.py --paired on / off at D = 64 / 128, 1k-16k, non-causal
#   bash scripts/exp_session31.sh epi2    the same A/B at the lengths epi's printout cut: D = 64 1k / 2k / 4k, D = 128 1k / 2k
#   bash scripts/exp_session31.sh cfg     two ring depths never timed on this card's current builds: D = 64's short
#                                         forward (HOPPER_FWD_SHORT) with 4 stages against 3 (1k non-causal and causal,
#                                         2k causal); the D = 128 causal backward with 3 stages against 2 (4k, 16k)
#   bash scripts/exp_session31.sh ecausal the same epilogue for the causal builds (run as a switch of their own, then
#                                         HOPPER_BWD_EPI_TMA_CAUSAL = (); D = 128's two stages stage dK_w in its dQ tile):
#                                         the epilogue's GPU tests, then the A/B at D = 64 / 128, 1k / 4k / 16k, causal
#   bash scripts/exp_session31.sh bench   `bench attention --graph`'s non-causal backward at D = 64 (1k-16k) and 128 (1k), with
#                                         SDPA cuDNN / flash, after the epilogue landed
#   bash scripts/exp_session31.sh bench2  `bench attention --graph`'s backward at D = 64 / 128, every FA3-paper shape and GQA, with
#                                         the causal epilogue too
#   bash scripts/exp_session31.sh peer    scripts/paired_peer.py: ours against SDPA cuDNN (backward at D = 128 / 256 on the
#                                         issue's 1.0x lines, forward at D = 128 16k) and SDPA flash (D = 64's 1k / 2k
#                                         forward, the 1.5x line), in alternating CUDA-graph replays
# (pp needs docs/patches/s31-fwd-pingpong.patch applied to 1ba4a3e: not kept)
#   bash scripts/exp_session31.sh pp      the chained forward's two warpgroups issuing their wgmma groups in turn
#                                         (launch.HOPPER_FWD_PINGPONG, off): the persistent / chained / short forward
#                                         tests with it on, then the A/B at D = 128 4k / 16k and D = 64 1k
#   bash scripts/exp_session31.sh final   test_hopper_bwd.py's and test_memory.py's GPU tests with the defaults
# Writes under $OUT (default ./out). Carry .gpu-wheels (pytest-xdist, execnet).
source "$(dirname "$0")/device_env.sh"  # (strict mode, the root, $OUT, the card; exits without the root)
case "${1:-}" in
  epi)
    gpu_pytest "${T1:-240}" 12 tests-bwd-epi.txt tests/test_hopper_bwd.py -k "epi_tma_cuda or (tail_cuda and not d256)"
    timeout "${TA:-330}" python scripts/ab_attention.py --gluon --paired "${N:-20}" --switch HOPPER_BWD_EPI_TMA \
      --on "{(64, False): None, (128, False): None}" --off "{}" --modes bwd --head-dims "${DIMS:-64,128}" --seqlens "${SEQLENS:-1024,4096,8192,16384}" \
      --causal 0 2>&1 | tail -20 | tee -a "$OUT/ab-bwd-epi.txt" ;;
  epi2)
    for dims_s in "64:1024,2048,4096" "128:1024,2048"; do
      timeout "${TA:-200}" python scripts/ab_attention.py --gluon --paired "${N:-20}" --switch HOPPER_BWD_EPI_TMA \
        --on "{(64, False): None, (128, False): None}" --off "{}" --modes bwd --head-dims "${dims_s%%:*}" --seqlens "${dims_s##*:}" --causal 0 2>&1 \
        | tail -14 | tee -a "$OUT/ab-bwd-epi2.txt"
    done ;;
  cfg)
    timeout "${TA:-200}" python scripts/ab_attention.py --gluon --paired "${N:-20}" --switch HOPPER_FWD_SHORT \
      --on "{64: (128, 4, 2048, 4096)}" --off "{64: (128, 3, 2048, 4096)}" --modes fwd --head-dims 64 \
      --seqlens 1024,2048 --causal 0,1 2>&1 | tail -10 | tee -a "$OUT/ab-fwd64-short-st4.txt"
    timeout "${TB:-200}" python scripts/ab_attention.py --gluon --paired "${N:-20}" --switch HOPPER_BWD_STAGES \
      --on "{(128, True): 3, (128, False): 3}" --off "{(128, True): 3}" --modes bwd --head-dims 128 \
      --seqlens 4096,16384 --causal 1 2>&1 | tail -10 | tee -a "$OUT/ab-bwd128-causal-st3.txt" ;;
  ecausal)
    gpu_pytest "${T1:-300}" 12 tests-bwd-epi-causal.txt tests/test_hopper_bwd.py -k "epi_tma_cuda"
    timeout "${TA:-300}" python scripts/ab_attention.py --gluon --paired "${N:-20}" --switch HOPPER_BWD_EPI_TMA \
      --on "{(64, True): None, (128, True): None}" --off "{}" --modes bwd --head-dims 64,128 --seqlens "${SEQLENS:-1024,4096,16384}" --causal 1 \
      2>&1 | tail -20 | tee -a "$OUT/ab-bwd-epi-causal.txt" ;;
  bench)
    for dims_s in "64:1024,2048,4096,8192,16384" "128:1024"; do
      timeout "${TB:-200}" python -m flashkernels bench attention --graph --modes bwd --head-dims "${dims_s%%:*}" \
        --seqlens "${dims_s##*:}" --causal no --no-gqa --providers flashkernels,sdpa-cudnn,sdpa-flash \
        --csv "$OUT/attention-bwd-graph.csv" 2>&1 | tail -9 | tee -a "$OUT/attention-bwd-graph.txt"
    done ;;
  bench2)
    timeout "${TB:-420}" python -m flashkernels bench attention --graph --modes bwd --head-dims 64,128 \
      --providers flashkernels,sdpa-cudnn,sdpa-flash --csv "$OUT/attention-bwd-graph2.csv" 2>&1 | tail -26 \
      | tee -a "$OUT/attention-bwd-graph2.txt" ;;
  peer2)  # (peer's backward line again, after paired_peer.py ran the forwards of its calls on the capture stream)
    timeout "${TA:-200}" python scripts/paired_peer.py --peer sdpa-cudnn --modes bwd \
      --shapes "128:4096:1,128:4096:0,128:8192:0,128:16384:0,128:16384:1,256:4096:1,256:4096:0" 2>&1 \
      | tee -a "$OUT/paired-peer-bwd.txt" ;;
  peer)
    timeout "${TA:-200}" python scripts/paired_peer.py --peer sdpa-cudnn --modes bwd \
      --shapes "128:4096:1,128:4096:0,128:8192:0,128:16384:0,128:16384:1,256:4096:1,256:4096:0" 2>&1 \
      | tee -a "$OUT/paired-peer.txt"
    timeout "${TB:-120}" python scripts/paired_peer.py --peer sdpa-cudnn --modes fwd \
      --shapes "128:16384:0,128:16384:1" 2>&1 | tee -a "$OUT/paired-peer.txt"
    timeout "${TC:-120}" python scripts/paired_peer.py --peer sdpa-flash --modes fwd \
      --shapes "64:1024:0,64:1024:1,64:2048:1" 2>&1 | tee -a "$OUT/paired-peer.txt" ;;
  pp)
    FK_SWITCHES="HOPPER_FWD_PINGPONG=((64, False), (64, True), (128, False), (128, True))" timeout "${T1:-150}" \
      python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short -p pytest_switch tests/test_hopper_fwd.py \
      -k "persistent or chain or short or split_tail" 2>&1 | tail -6 | tee -a "$OUT/tests-fwd-pingpong.txt"
    timeout "${TA:-200}" python scripts/ab_attention.py --gluon --paired "${N:-16}" --switch HOPPER_FWD_PINGPONG \
      --on "((64, False), (64, True), (128, False), (128, True))" --off "()" --modes fwd --head-dims 128 \
      --seqlens 4096,16384 --causal 0,1 2>&1 | tail -8 | tee -a "$OUT/ab-fwd-pingpong.txt"
    timeout "${TB:-100}" python scripts/ab_attention.py --gluon --paired "${N:-16}" --switch HOPPER_FWD_PINGPONG \
      --on "((64, False), (64, True), (128, False), (128, True))" --off "()" --modes fwd --head-dims 64 \
      --seqlens 1024 --causal 0,1 2>&1 | tail -4 | tee -a "$OUT/ab-fwd-pingpong.txt" ;;
  final)
    gpu_pytest "${T1:-400}" 8 tests-final.txt tests/test_hopper_bwd.py tests/test_memory.py tests/test_cuda_graphs.py ;;
  *) echo "usage: $0 epi|epi2|cfg|ecausal|bench|bench2|peer|peer2|pp|final"; exit 2 ;;
esac
