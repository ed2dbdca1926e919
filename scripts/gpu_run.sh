#!/usr/bin/env bash
# shellcheck disable=SC2317  # the stage functions run through `bash -c` (export -f)
# One GPU session in one command: environment, self-check, test suite, compute-sanitizer, benchmark.
#
#   scripts/gpu_run.sh                      every stage, quick benchmark
#   scripts/gpu_run.sh tests sanitize       only those stages (always run in the order below)
#   scripts/gpu_run.sh bench full           the full FA3 benchmark grid instead of --quick
#
# Stages, in order: env, check, tests, sanitize, bench. Each runs under `timeout`, capped by what
# is left of a whole-run budget (GPU_RUN_BUDGET seconds, default 540: a device call allows 600),
# so a hung stage cannot eat the others' time; a stage that fails does not stop the next.
#
# Needs: cwd anywhere inside the repo (it cd's to the root), python3 with torch + triton (the
# device image has torch 2.11, triton 3.6), no network, no install. Writes under $OUT (default
# ./out), at most 6 files (a device call returns at most 8):
#   run.log        everything this script printed
#   pytest.log     the test suite's output          junit.xml     its JUnit report
#   sanitizer.log  memcheck + racecheck output
#   bench.csv      benchmark rows                   bench.png     benchmark plot (if matplotlib)
#
# Knobs (environment): GPU_RUN_BUDGET, CHECK_TIMEOUT, TESTS_TIMEOUT, SANITIZE_TIMEOUT,
# BENCH_TIMEOUT (per-stage caps, seconds), PYTEST_ARGS (extra pytest arguments, shell-quoted,
# e.g. PYTEST_ARGS='-m gpu -k "causal or window"'),
# BENCH_ARGS (extra bench arguments, e.g. "--providers flashkernels,sdpa-cudnn"),
# SANITIZER_ARGS (extra compute-sanitizer arguments), PYTEST_WORKERS (run the tests in that many
# pytest-xdist processes: Triton compiles on the CPU, and the device has 16 cores; needs
# pytest-xdist; big_memory tests share one worker). Wheels in .gpu-wheels/ (git-ignored) are
# installed with --no-deps before the tests: `pip download --no-deps pytest-xdist execnet
# transformers==5.24.0 -d .gpu-wheels` here, then name .gpu-wheels in the device call's carry
# (the device has no network, and its transformers is older than the hf extra's floor).
#
# Time: on a CPU `check` takes ~15 s; on the H100 count on Triton compiles (seconds per kernel
# specialisation): the whole of tests/ took 7 min 52 s there on 2026-11-25, so `tests` alone
# fills one device call (`scripts/gpu_run.sh tests`, its cap 480 s). When every stage matters,
# split them over calls: `tests`, then `check sanitize bench`. PYTEST_ARGS narrows the tests
# (e.g. "-k 'compile or opcheck'"). A stage cut by its timeout is reported as TIMEOUT.
set -uo pipefail  # no -e: every selected stage runs, and the exit code reports them all

cd "$(dirname "$0")/.." || exit 2
START=$(date +%s)
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # compiled kernels here; the interpreter is for CPUs
PY=${PYTHON:-python3}

BUDGET=${GPU_RUN_BUDGET:-540}
CHECK_TIMEOUT=${CHECK_TIMEOUT:-120}
TESTS_TIMEOUT=${TESTS_TIMEOUT:-480}
SANITIZE_TIMEOUT=${SANITIZE_TIMEOUT:-150}
BENCH_FULL=0

ALL_STAGES="env check tests sanitize bench"
WANT=""
for a in "$@"; do
  case "$a" in
    env|check|tests|sanitize|bench) WANT="$WANT $a" ;;
    full) BENCH_FULL=1 ;;
    all) WANT="$ALL_STAGES" ;;
    -h|--help) awk 'NR > 2 && /^#/ { sub(/^# ?/, ""); print; next } NR > 2 { exit }' "$0"; exit 0 ;;
    *) echo "gpu_run.sh: unknown stage '$a' (expected: $ALL_STAGES, full, all)" >&2; exit 2 ;;
  esac
done
[ -z "$WANT" ] && { [ "$BENCH_FULL" = 1 ] && WANT="bench" || WANT="$ALL_STAGES"; }
BENCH_TIMEOUT=${BENCH_TIMEOUT:-$([ "$BENCH_FULL" = 1 ] && echo 520 || echo 240)}

exec > >(tee -a "$OUT/run.log") 2>&1

SUMMARY=()
FAILED=0
wants() { [[ " $WANT " == *" $1 "* ]]; }

# cap STAGE_DEFAULT -> seconds this stage may take (what is left of the budget, minus 10 s slack)
cap() {
  local left=$(( BUDGET - ($(date +%s) - START) - 10 ))
  (( left < $1 )) && echo "$left" || echo "$1"
}

# run_stage NAME DEFAULT_CAP CMD...: run under timeout, record rc and seconds
run_stage() {
  local name=$1 limit; limit=$(cap "$2"); shift 2
  echo
  echo "=== $name (limit ${limit}s, $(( $(date +%s) - START ))s into the run) ==="
  if (( limit < 20 )); then
    echo "skipped: only ${limit}s of the ${BUDGET}s budget left"
    SUMMARY+=("$(printf '%-9s %-8s %5s  %s' "$name" skipped - "budget spent")")
    FAILED=1
    return
  fi
  local t0 rc; t0=$(date +%s)
  # timeout signals the whole process group, so python children die with the stage's bash
  STAGE_LIMIT=$limit STAGE_START=$(date +%s) timeout --signal=TERM --kill-after=15 "$limit" bash -c "$*"
  rc=$?
  local dt=$(( $(date +%s) - t0 )) status=ok note=""
  if (( rc == 124 || rc == 137 )); then status=TIMEOUT; note="killed after ${limit}s"; FAILED=1
  elif (( rc != 0 )); then status=FAIL; note="exit $rc"; FAILED=1; fi
  SUMMARY+=("$(printf '%-9s %-8s %4ss  %s' "$name" "$status" "$dt" "$note")")
}

stage_env() {
  if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not on PATH"; fi
  "$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except Exception as e:
    print("triton: import failed:", e)
for name in ("matplotlib", "numpy", "pytest"):
    try:
        m = __import__(name); print(name, getattr(m, "__version__", "?"))
    except Exception:
        print(name, "not installed")
EOF
  (compute-sanitizer --version 2>/dev/null | tail -n 1) || echo "compute-sanitizer: not on PATH"
  "$PY" -m flashkernels info
}

stage_check() { "$PY" -m flashkernels check; }

stage_tests() {
  local workers=()
  if compgen -G ".gpu-wheels/*.whl" >/dev/null; then
    echo "installing (no deps) $(ls .gpu-wheels | tr '\n' ' ')"
    "$PY" -m pip install -q --no-deps .gpu-wheels/*.whl 2>&1 | tail -n 2
  fi
  if (( ${PYTEST_WORKERS:-1} > 1 )); then
    if "$PY" -c "import xdist" 2>/dev/null; then workers=(-n "$PYTEST_WORKERS" --dist loadgroup)
    else echo "PYTEST_WORKERS=$PYTEST_WORKERS: pytest-xdist not importable, running in one process"; fi
  fi
  local extra=()
  eval "extra=(${PYTEST_ARGS:-})"  # shell quoting inside PYTEST_ARGS is honoured: -k "a or b"
  # -v: every test's id and outcome in the log, so a stage cut by its timeout still names its
  # failures (-q printed dots only: three GPU runs of 2026-11-25 were cut before the summary).
  local verbosity=(-v)
  [[ " ${extra[*]} " == *" -q "* ]] && verbosity=()
  "$PY" -m pytest tests "${verbosity[@]}" -rfEs -p no:cacheprovider --junitxml="$OUT/junit.xml" "${workers[@]}" \
    "${extra[@]}" 2>&1 | tee "$OUT/pytest.log"
  return "${PIPESTATUS[0]}"
}

stage_sanitize() {
  local san log="$OUT/sanitizer.log" rc=0 half
  san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
  if [ -z "$san" ]; then echo "compute-sanitizer not found" | tee "$log"; return 1; fi
  # Compile the kernels first, outside the sanitizer (Triton's cache then serves them).
  echo "--- warm-up (no sanitizer)" | tee "$log"
  "$PY" scripts/sanitize_case.py 2>&1 | tee -a "$log" || return 1
  # what is left of this stage after the warm-up, split between the two tools (10 s slack)
  half=$(( (STAGE_LIMIT - ($(date +%s) - STAGE_START) - 10) / 2 ))
  (( half < 15 )) && { echo "sanitize: no time left after the warm-up"; return 1; }
  for tool in memcheck racecheck; do
    echo "--- $tool" | tee -a "$log"
    # shellcheck disable=SC2086
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout --kill-after=10 "$half" "$san" --tool "$tool" \
      --error-exitcode 99 --print-limit 50 ${SANITIZER_ARGS:-} "$PY" scripts/sanitize_case.py >> "$log" 2>&1
    local r=$?
    echo "$tool: exit $r$([ $r = 99 ] && echo ' (errors found)')$([ $r = 124 ] && echo ' (timed out)')"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|sanitize_case:" "$log" | tail -n 2
    (( r != 0 )) && rc=1
  done
  return $rc
}

stage_bench() {
  local args=(attention --csv "$OUT/bench.csv" --plot "$OUT/bench.png")
  [ "$BENCH_FULL" = 1 ] || args+=(--quick)
  # shellcheck disable=SC2086
  "$PY" -m flashkernels bench "${args[@]}" ${BENCH_ARGS:-}
}

export OUT PY START BUDGET BENCH_FULL SANITIZE_TIMEOUT
export -f cap stage_env stage_check stage_tests stage_sanitize stage_bench

echo "gpu_run.sh: stages [${WANT# }]$([ "$BENCH_FULL" = 1 ] && echo ', full bench'), budget ${BUDGET}s, OUT=$OUT, $(date -u +%FT%TZ)"
wants env && run_stage env 60 stage_env
wants check && run_stage check "$CHECK_TIMEOUT" stage_check
wants tests && run_stage tests "$TESTS_TIMEOUT" stage_tests
wants sanitize && run_stage sanitize "$SANITIZE_TIMEOUT" stage_sanitize
wants bench && run_stage bench "$BENCH_TIMEOUT" stage_bench

echo
echo "=== summary ($(( $(date +%s) - START ))s) ==="
printf '%s\n' "${SUMMARY[@]}"
[ -f "$OUT/pytest.log" ] && echo "pytest: $(grep -E "(passed|failed|error|no tests ran)" "$OUT/pytest.log" | tail -n 1 || true)"
echo "files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $FAILED
