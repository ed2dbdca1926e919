#!/usr/bin/env python3
"""Where a chained persistent forward's tile time goes (session 23 experiment; needs an H100).

    PYTHONPATH=src python scripts/exp_chain_probe.py [--cases 64:1024:0,64:1024:1,128:1024:0,128:4096:0]
        [--defer 0,1]   (1: launch.HOPPER_FWD_CHAIN_DEFER at both chained head dims, 0: at none)

With launch.HOPPER_FWD_PROBE set, each consumer warpgroup of the chained forward (kernels/fwd_hopper.py
_ws_attend_chain) records %clock64 at four points of its first 64 tiles: after the tile's loop (T0),
before the wait for the next tile's Q (its place computed: T3), after the boundary step that issues
the next tile's first q·kᵀ with this tile's last p·v (T1), and after the tile's end (output and lse
stored; T2). Per case (head dim : query rows : causal, FA3 grid B·S = 16384, Hq·D = 2048, bf16) and
launch.HOPPER_FWD_CHAIN_DEFER value (--defer) it prints medians over every CTA, warpgroup and tile
of: the boundary step (T1 - T0; the next tile's place T3 - T0, the Q wait and the step T1 - T3), the
tile end (T2 - T1), the next tile's loop (T0' - T2) and that loop per step, in SM clocks, and the
share of a tile's time the boundary and the end take.
"""
import argparse
import statistics

import torch

import flashkernels
from flashkernels.ops.attention import launch


def run(D, S, causal, defer):
    B, H = 16384 // S, 2048 // D
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    probe = torch.zeros(sms * 64 * 2 * 4, dtype=torch.int64, device="cuda")
    saved = launch.HOPPER_FWD_CHAIN_DEFER
    launch.HOPPER_FWD_CHAIN_DEFER = (64, 128) if defer else ()
    launch.HOPPER_FWD_PROBE = probe
    try:
        for _ in range(3):
            probe.zero_()
            flashkernels.flash_attn_func(q, k, v, causal=causal)
        torch.cuda.synchronize()
    finally:
        launch.HOPPER_FWD_PROBE = None
        launch.HOPPER_FWD_CHAIN_DEFER = saved
    t = probe.view(sms, 64, 2, 4).cpu()
    pair, epi, loop, per_step, place, qwait = [], [], [], [], [], []
    n_blk = S // 128
    for p in range(sms):
        for w in range(2):
            for c in range(63):
                t0, t1, t2, t3 = (int(t[p, c, w, i]) for i in range(4))
                t0n = int(t[p, c + 1, w, 0])
                if not (t0 and t1 and t2 and t3 and t0n):
                    continue
                pair.append(t1 - t0)
                place.append(t3 - t0)
                qwait.append(t1 - t3)
                epi.append(t2 - t1)
                loop.append(t0n - t2)
                if not causal:
                    per_step.append((t0n - t2) / (n_blk - 1))
    med = statistics.median
    tile = med(pair) + med(epi) + med(loop)
    line = (f"D={D:3d} S={S:5d} causal={int(causal)} defer={defer}: boundary step {med(pair):6.0f} (next tile's place"
            f" {med(place):5.0f}, Q wait and step {med(qwait):5.0f})  end {med(epi):6.0f}"
            f"  next loop {med(loop):7.0f}")
    if per_step:
        line += f" ({med(per_step):5.0f} a step)"
    line += f"  | boundary + end {100 * (med(pair) + med(epi)) / tile:4.1f}% of a tile  (n = {len(pair)})"
    print(line, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="64:1024:0,64:1024:1,128:1024:0,128:4096:0")
    ap.add_argument("--defer", default="0,1")
    a = ap.parse_args()
    print(torch.cuda.get_device_name(0), "SM clocks (%clock64)")
    for case in a.cases.split(","):
        D, S, causal = (int(x) for x in case.split(":"))
        for d in (int(x) for x in a.defer.split(",")):
            run(D, S, bool(causal), d)


if __name__ == "__main__":
    main()
