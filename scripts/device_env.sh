# The common start of the session scripts' device calls (scripts/exp_session22.sh on), sourced by them:
# strict mode, the repository root as the working folder, $OUT (default ./out) made, the environment the
# GPU runs use (two OpenMP threads, src and scripts importable, unbuffered output), pytest-xdist and
# execnet installed from the carried .gpu-wheels, and the card's name and clock into $OUT/card.txt.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-out}
mkdir -p "$OUT"
export OMP_NUM_THREADS=2 PYTHONPATH=src:scripts PYTHONUNBUFFERED=1
python -m pip install --no-deps -q .gpu-wheels/pytest_xdist*.whl .gpu-wheels/execnet*.whl >/dev/null 2>&1
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee "$OUT/card.txt"

# gpu_pytest LIMIT LINES FILE PYTEST-ARGS...: the GPU tests (`-m gpu`, 8 xdist workers, the launch cache in check
# mode) under a time limit of LIMIT seconds, their last LINES lines printed and appended to $OUT/FILE. Extra
# environment (FK_SWITCHES=...) may prefix the call.
gpu_pytest() {
  local limit=$1 lines=$2 file=$3
  shift 3
  FLASHKERNELS_LAUNCH_CACHE=check timeout "$limit" python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short "$@" \
    2>&1 | tail -"$lines" | tee -a "$OUT/$file"
}
