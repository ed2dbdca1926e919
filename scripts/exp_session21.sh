#!/usr/bin/env bash
# Session 21's device calls (docs/perf-notes.md, session 21). One section a call:
#   bash scripts/exp_session21.sh tests   the backward's GPU test files twice with
#                                         HOPPER_BWD_PROD_WRITER on for every build (default: causal
#                                         ones; session 20's DQ_WRITER hung in every such full run)
#   bash scripts/exp_session21.sh san     the sanitizer tests (memcheck, racecheck) with it on
#   bash scripts/exp_session21.sh ab      paired A/B (scripts/ab_attention.py --paired): every build / none
#   bash scripts/exp_session21.sh final   the defaults as committed: GPU files + CUDA graphs + sanitizers
#   bash scripts/exp_session21.sh grid    flashkernels bench attention, the README's grid (one call)
#   bash scripts/exp_session21.sh misc    the Hugging Face GPU tests; bench features --paired 40
#   bash scripts/exp_session21.sh ncu     Nsight Compute: the plain and the softcap forward side by side
#   bash scripts/exp_session21.sh rest    the GPU test files not run above (no big_memory ones)
#   bash scripts/exp_session21.sh static  HOPPER_FWD_SOFTCAP_STATIC_MAX: softcap tests, paired A/B, bench features
# The sections of the experiments not kept (DQ_READY, the softcap polynomial) went with their
# switches: docs/patches/s21-dq-ready-exp.patch (with its section), s21-softcap-poly-exp.patch.
# Writes under $OUT (default ./out). Carry .gpu-wheels (pytest-xdist, execnet).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-out}
mkdir -p "$OUT"
export OMP_NUM_THREADS=2 PYTHONPATH=src:scripts PYTHONUNBUFFERED=1
python -m pip install --no-deps -q .gpu-wheels/*.whl >/dev/null 2>&1
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee "$OUT/card.txt"
T="tests/test_hopper_bwd.py tests/test_hopper_bwd_varlen.py"
SW=${SW:-HOPPER_BWD_PROD_WRITER=(False, True)}
case "${1:-}" in
  tests)
    for r in 1 2; do
      echo "== run $r FK_SWITCHES=$SW" | tee -a "$OUT/tests.txt"
      FK_SWITCHES="$SW" timeout "${TT:-250}" python -m pytest -v -p no:warnings -p pytest_switch -m gpu -n 8 \
        --tb=short $T -k "not memcheck and not racecheck" > "$OUT/tests-run$r.log" 2>&1
      echo "rc=$?" | tee -a "$OUT/tests.txt"
      tail -4 "$OUT/tests-run$r.log" | tee -a "$OUT/tests.txt"
    done ;;
  san)  # (the sanitizer's script runs in a subprocess: the switch is set in this copy's launch.py)
    sed -i 's/^HOPPER_BWD_PROD_WRITER: tuple = (True,)/HOPPER_BWD_PROD_WRITER: tuple = (False, True)/' \
      src/flashkernels/ops/attention/launch.py
    grep -n "^HOPPER_BWD_PROD_WRITER" src/flashkernels/ops/attention/launch.py | tee -a "$OUT/san.txt"
    FK_SWITCHES="$SW" timeout 280 python -m pytest -q -p no:warnings -p pytest_switch -m gpu \
      --tb=short tests/test_hopper_bwd.py -k "memcheck or racecheck" 2>&1 | tail -30 | tee -a "$OUT/san.txt" ;;
  ab)
    timeout "${TA:-280}" python scripts/ab_attention.py --gluon --paired "${N:-30}" --switch HOPPER_BWD_PROD_WRITER \
      --on "(False, True)" --off "()" --modes bwd --seqlens "${SEQLENS:-4096,16384}" --head-dims "${DIMS:-128,64}" \
      2>&1 | tail -24 | tee -a "$OUT/ab.txt" ;;
  final)  # the defaults as committed: the backward's GPU files, the CUDA-graph test, the sanitizers
    timeout 300 python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short $T tests/test_cuda_graphs.py \
      -k "not memcheck and not racecheck" 2>&1 | tail -6 | tee -a "$OUT/final.txt"
    timeout 200 python -m pytest -q -p no:warnings -m gpu --tb=short tests/test_hopper_bwd.py \
      -k "memcheck or racecheck" 2>&1 | tail -6 | tee -a "$OUT/final.txt" ;;
  grid)  # the README's grid: FA3 shapes, fwd + bwd, against cuDNN and FA2 (SDPA flash)
    timeout "${TG:-560}" python -m flashkernels bench attention --providers flashkernels,sdpa-cudnn,sdpa-flash \
      --csv "$OUT/grid.csv" --plot "$OUT/grid.png" > "$OUT/grid.txt" 2>&1
    echo "rc=$?"; tail -60 "$OUT/grid.txt" ;;
  misc)  # Hugging Face models through the kernels (transformers 5.24 from .gpu-wheels); bench features
    python -m pip install --no-deps -q .gpu-wheels/transformers-*.whl >/dev/null 2>&1
    timeout 200 python -m pytest -q -p no:warnings -m gpu -n 6 --tb=short tests/test_transformers_integration.py \
      2>&1 | tail -8 | tee -a "$OUT/misc.txt"
    timeout 200 python -m flashkernels bench features --paired 40 --csv "$OUT/features.csv" 2>&1 | tail -30 | tee -a "$OUT/misc.txt" ;;
  ncu)  # where the softcap forward's time goes: Nsight Compute, plain vs softcap, D = 128 4k causal
    NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
    timeout 400 "$NCU" --profile-from-start off --clock-control none --kernel-name regex:attn_fwd \
      --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
      --section InstructionStats --metrics sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_fma.sum,sm__inst_executed_pipe_xu.sum,sm__inst_executed.sum \
      python scripts/ncu_attention.py --head-dim 128 --seqlen 4096 --causal --providers flashkernels,softcap \
      > "$OUT/ncu.txt" 2>&1; echo "rc=$?"; grep -E "TF/s|attn_fwd|Duration|Throughput|Issue Slots|Executed Ipc|pipe_|No Eligible|Warp Cycles Per Issued|Stall" "$OUT/ncu.txt" | head -80 ;;
  rest)  # the other GPU test files that run the (causal) backward, with the defaults as committed
    timeout 540 python -m pytest -q -p no:warnings -m "gpu and not big_memory" -n 8 --tb=short tests \
      --ignore=tests/test_hopper_bwd.py --ignore=tests/test_hopper_bwd_varlen.py --ignore=tests/test_hopper_fwd.py \
      --ignore=tests/test_hopper_fwd_varlen.py --ignore=tests/test_transformers_integration.py \
      --ignore=tests/test_cuda_graphs.py 2>&1 | tail -8 | tee -a "$OUT/rest.txt" ;;
  static)  # HOPPER_FWD_SOFTCAP_STATIC_MAX: the softcap forward with its row max fixed at the bound
    FK_SWITCHES="HOPPER_FWD_SOFTCAP_STATIC_MAX=40.0" timeout 270 python -m pytest -q -p no:warnings -p pytest_switch \
      -m gpu -n 8 --tb=short tests/test_hopper_fwd.py tests/test_attention_features.py tests/test_alibi_sink_varlen.py \
      tests/test_hopper_bwd.py -k "softcap or features or all" 2>&1 | tail -8 | tee -a "$OUT/static.txt"
    timeout 150 python scripts/ab_attention.py --gluon --paired "${N:-30}" --switch HOPPER_FWD_SOFTCAP_STATIC_MAX \
      --on 40.0 --off 0.0 --softcap 30 --modes fwd --seqlens 4096,16384 --head-dims 128,64,256 2>&1 | tail -14 \
      | tee -a "$OUT/static.txt"
    timeout 120 python -c "import sys; from flashkernels.ops.attention import launch; launch.HOPPER_FWD_SOFTCAP_STATIC_MAX = 40.0
from flashkernels.cli import main; sys.exit(main(['bench', 'features', '--paired', '40']))" 2>&1 | tail -12 | tee -a "$OUT/static.txt" ;;
  *) echo "usage: $0 tests|san|ab|final|grid|misc|ncu|rest|static"; exit 2 ;;
esac
