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
import cProfile
import pstats

import torch
import triton
from exp_launch_overhead import per_call  # (scripts/ is on sys.path: this script's folder)

import flashkernels
from flashkernels.ops.attention import launch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", type=int, default=0)
    ap.add_argument("--dims", default="64,128,256")
    ap.add_argument("--no-plans", action="store_true")
    a = ap.parse_args()
    launch.HOPPER_BWD_PLANS = not a.no_plans
    torch.manual_seed(0)
    for D in (int(d) for d in a.dims.split(",")):
        B, S, H = 16, 1024, 2048 // D
        q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        do = torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16)
        for causal in (False, True):
            o = flashkernels.flash_attn_func(q, k, v, causal=causal)

            def f():
                return torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
            hits = launch.hopper_bwd_plan_hits
            hs = [per_call(f, 100) for _ in range(5)]
            hits = (launch.hopper_bwd_plan_hits - hits) / (5 * 120)  # (per_call: 20 warm-up calls + 100)
            eager = triton.testing.do_bench(f, return_mode="median") * 1e3
            print(f"D={D} causal={int(causal)}: host {min(hs):.1f}-{max(hs):.1f} us a call; do_bench eager "
                  f"{eager:.1f} us; plan hits a call {hits:.2f}", flush=True)
            if a.profile and D == 128 and causal:
                pr = cProfile.Profile()
                pr.enable()
                for _ in range(a.profile):
                    f()
                pr.disable()
                torch.cuda.synchronize()
                st = pstats.Stats(pr)
                st.sort_stats("cumulative").print_stats(30)
                st.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
