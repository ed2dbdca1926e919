#!/usr/bin/env bash
# Session 22's device calls (docs/perf-notes.md, session 22). One section a call:
#   bash scripts/exp_session22.sh tests   the forward's ALiBi / feature / window GPU tests with
#                                         HOPPER_FWD_ALIBI_ROTATE on, then the window and Sq != Sk
#                                         cases with the defaults (the chained ALiBi offset)
#   bash scripts/exp_session22.sh ab      paired A/B of HOPPER_FWD_ALIBI_ROTATE (ALiBi forwards), and
#                                         flashkernels bench features --paired 40 with it off and on
#   bash scripts/exp_session22.sh bug     the new non-causal ALiBi Sq != Sk cases on the code before the
#                                         chained forward took ALiBi's offset (expected to fail there)
#   bash scripts/exp_session22.sh final   the defaults as committed: the forward's GPU files, the
#                                         backward's ALiBi tests
#   bash scripts/exp_session22.sh misc    bench features --paired 40; the Hugging Face GPU tests
# Writes under $OUT (default ./out). Carry .gpu-wheels (pytest-xdist, execnet, transformers).
source "$(dirname "$0")/device_env.sh"  # (strict mode, the root, $OUT, the card; exits without the root)
git log -1 --format=%h | tee -a "$OUT/card.txt"
SW=${SW:-HOPPER_FWD_ALIBI_ROTATE=True}
FEATS="from flashkernels.ops.attention import launch; from flashkernels.cli import main"
case "${1:-}" in
  tests)
    FK_SWITCHES="$SW" timeout "${TT:-330}" python -m pytest -q -p no:warnings -p pytest_switch -m gpu -n 8 \
      --tb=short tests/test_hopper_fwd.py tests/test_alibi_sink_varlen.py tests/test_attention_features.py \
      -k "alibi or features or persistent or window or rotate" 2>&1 | tail -12 | tee -a "$OUT/tests.txt"
    timeout 150 python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short tests/test_hopper_fwd.py \
      -k "window_and_seqlens or persistent_features" 2>&1 | tail -8 | tee -a "$OUT/tests.txt" ;;
  ab)
    timeout "${TA:-300}" python scripts/ab_attention.py --gluon --paired "${N:-30}" --switch HOPPER_FWD_ALIBI_ROTATE \
      --alibi --modes fwd --seqlens "${SEQLENS:-1024,4096,16384}" --head-dims "${DIMS:-128,256,64}" 2>&1 | tail -22 \
      | tee -a "$OUT/ab.txt"
    for v in False True; do
      echo "== bench features, HOPPER_FWD_ALIBI_ROTATE=$v" | tee -a "$OUT/ab.txt"
      timeout 120 python -c "import sys; $FEATS; launch.HOPPER_FWD_ALIBI_ROTATE = $v
sys.exit(main(['bench', 'features', '--paired', '40', '--no-backward']))" 2>&1 | tail -12 | tee -a "$OUT/ab.txt"
    done ;;
  bug)  # the new non-causal ALiBi Sq != Sk cases (no window) on the commit before session 22's chain fix
    cp tests/test_hopper_fwd.py /tmp/test_new.py && git stash -q && cp /tmp/test_new.py tests/test_hopper_fwd.py
    git log -1 --format=%h | tee -a "$OUT/bug.txt"
    timeout 200 python -m pytest -q -p no:warnings -m gpu -n 8 --tb=line tests/test_hopper_fwd.py \
      -k "window_and_seqlens and (q256-k640-full-win-1_-1 or q640-k256-full-win-1_-1)" 2>&1 | tail -12 | tee -a "$OUT/bug.txt"
    git checkout -q tests/test_hopper_fwd.py && git stash pop -q && git status --short | tee -a "$OUT/bug.txt" ;;
  final)
    timeout "${TF:-480}" python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short tests/test_hopper_fwd.py \
      tests/test_alibi_sink_varlen.py tests/test_attention_features.py 2>&1 | tail -8 | tee -a "$OUT/final.txt"
    timeout "${TB:-100}" python -m pytest -q -p no:warnings -m gpu -n 8 --tb=short tests/test_hopper_bwd.py \
      -k "alibi and not memcheck and not racecheck" 2>&1 | tail -6 | tee -a "$OUT/final.txt" ;;
  misc)
    python -m pip install --no-deps -q .gpu-wheels/transformers-*.whl >/dev/null 2>&1
    timeout 200 python -m flashkernels bench features --paired 40 --csv "$OUT/features.csv" 2>&1 | tail -30 \
      | tee -a "$OUT/misc.txt"
    timeout 200 python -m pytest -q -p no:warnings -m gpu -n 6 --tb=short tests/test_transformers_integration.py \
      2>&1 | tail -8 | tee -a "$OUT/misc.txt" ;;
  *) echo "usage: $0 tests|ab|bug|final|misc"; exit 2 ;;
esac
