"""The Llama layer step with the launch cache on and off, alternating in one process (issue 4).

    PYTHONPATH=src python scripts/ab_layer_launch_cache.py [--rounds 4] [--seqlen 4096]

The model, input and loss of ``flashkernels bench ops --ops layer``; each round times eager
transformers + SDPA, then the flashkernels model with ``$FLASHKERNELS_LAUNCH_CACHE`` unset (the
cache on) and ``=0`` (every launch through ``kernel[grid]``), in a round-dependent order, with
the benchmark's own timing (do_bench medians, warm-up 200 ms, 1500 ms of repetitions). The
device machine's host timings drift between processes, so only ratios within a round count.
"""
import argparse
import os

from flashkernels._launch import ENV_VAR
from flashkernels.bench import ops
from flashkernels.bench.common import do_bench_median


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=ops.LAYER["seqlen"])
    a = ap.parse_args()
    steps = ops.layer_steps(a.seqlen)

    def timed(name, cache):
        if cache:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = "0"
        try:
            return do_bench_median(steps[name], warmup_ms=200, rep_ms=1500)
        finally:
            os.environ.pop(ENV_VAR, None)

    print(f"seqlen {a.seqlen}: ms a forward + backward step (do_bench median)")
    for r in range(a.rounds):
        t_e = timed("eager", True)
        order = (True, False) if r % 2 == 0 else (False, True)
        t = {c: timed("ours", c) for c in order}
        print(f"  round {r}: eager {t_e:6.2f}  cache on {t[True]:6.2f} ({t_e / t[True]:.3f}x)  "
              f"off {t[False]:6.2f} ({t_e / t[False]:.3f}x)  on/off {t[False] / t[True]:.3f}", flush=True)


if __name__ == "__main__":
    main()
