#!/usr/bin/env python3
"""Host time of an eager flash_attn_func call at S = 1k against its GPU time (session 23; needs a GPU).

    PYTHONPATH=src python scripts/exp_host_1k.py [--profile N]

For the FA3 grid's 1k shapes (B 16, Hq·D = 2048, bf16, no grad) it prints the host time a call (100
calls with no synchronisation, five rounds of exp_launch_overhead.per_call, min-max), do_bench's eager
median (its L2 flush before each call gives the host a head start of the flush's GPU time only) and the
CUDA-graph replays' (bench.common.graph_ms). Where the host's time exceeds the GPU's flush + kernel, the
eager timing reads the host. ``--profile N``: cProfile of N calls at D = 128 causal, the 25 entries with
the most cumulative time. (Session 23's two runs had these loops written out in the script: the same
measurements.)
"""
import argparse

import torch
import triton
from exp_launch_overhead import per_call, print_profile  # (scripts/: this script's folder)

import flashkernels
from flashkernels.bench.common import graph_ms
from flashkernels.ops.attention import launch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(0)
    for D, H in ((64, 32), (128, 16), (256, 8)):
        B, S = 16, 1024
        q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for causal in (False, True):
            def f():
                return flashkernels.flash_attn_func(q, k, v, causal=causal)
            hits = launch.hopper_fwd_plan_hits
            hs = [per_call(f, 100) for _ in range(5)]
            hits = (launch.hopper_fwd_plan_hits - hits) / (5 * 120)  # (per_call: 20 warm-up calls + 100)
            eager = triton.testing.do_bench(f, return_mode="median") * 1e3
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                f()
                graph = graph_ms(f, s) * 1e3
            torch.cuda.current_stream().wait_stream(s)
            print(f"D={D} causal={int(causal)}: host {min(hs):.1f}-{max(hs):.1f} us a call; do_bench eager "
                  f"{eager:.1f} us, graph {graph:.1f} us; plan hits a call {hits:.2f}", flush=True)
            if a.profile and D == 128 and causal:
                print_profile(f, a.profile)


if __name__ == "__main__":
    main()
