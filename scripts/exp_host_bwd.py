#!/usr/bin/env python3
"""Host time of an eager attention backward at S = 1k against its GPU time (session 32; needs a GPU).

    PYTHONPATH=src:scripts python scripts/exp_host_bwd.py [--profile N] [--dims 64,128,256] [--no-plans]

For the FA3 grid's 1k shapes (B 16, Hq·D = 2048, bf16, (B, S, H, D) storage) it prints, for the backward as `bench
attention` times it (torch.autograd.grad over one retained graph): the host time a call (100 calls with no
synchronisation, five rounds of exp_launch_overhead.per_call, min-max) and do_bench's eager median. Where the host's
time exceeds the GPU's (scripts/exp_bwd_pieces.py's kernel times), the eager timing reads the host.
``--no-plans``: launch.HOPPER_BWD_PLANS off (the full launch path every call). ``--profile N``: cProfile of N
backward calls at D = 128 causal, the 30 entries with the most cumulative time and the 25 with the most own time.
"""
import argparse

import triton
from exp_launch_overhead import fa3_1k_backward, per_call, print_profile  # (scripts/: this script's folder)

from flashkernels.ops.attention import launch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", type=int, default=0)
    ap.add_argument("--dims", default="64,128,256")
    ap.add_argument("--no-plans", action="store_true")
    a = ap.parse_args()
    launch.HOPPER_BWD_PLANS = not a.no_plans
    for D in (int(d) for d in a.dims.split(",")):
        for causal in (False, True):
            f, _ = fa3_1k_backward(D, causal)
            hits = launch.hopper_bwd_plan_hits
            hs = [per_call(f, 100) for _ in range(5)]
            hits = (launch.hopper_bwd_plan_hits - hits) / (5 * 120)  # (per_call: 20 warm-up calls + 100)
            eager = triton.testing.do_bench(f, return_mode="median") * 1e3
            print(f"D={D} causal={int(causal)}: host {min(hs):.1f}-{max(hs):.1f} us a call; do_bench eager "
                  f"{eager:.1f} us; plan hits a call {hits:.2f}", flush=True)
            if a.profile and D == 128 and causal:
                print_profile(f, a.profile)


if __name__ == "__main__":
    main()
