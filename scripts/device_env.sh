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
