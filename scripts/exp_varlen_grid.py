"""What the varlen forward's empty CTAs cost: `bench varlen`'s case, timed with the grid sized by
max_seqlen_q x 1, 2, 4 (``--mults``; the CTAs past a sequence's query tiles exit at once, more of
them with a larger max), with the packed-tile grid (launch.HOPPER_FWD_VARLEN_PACKED) off and on,
against equal lengths (no empty CTA, no partial tile) and dense at the mean length (non-causal:
also with the dense forward's persistent launch off, launch.HOPPER_FWD_PERSISTENT, and through the
WINDOW build with a window no row reaches).

    PYTHONPATH=src python scripts/exp_varlen_grid.py [--rounds 2] [--mults 1,2,4]

CUDA-graph GPU time (bench.features._time), bf16, H = 16, D = 128, forward only. Needs a GPU.
"""
import argparse

import torch

import flashkernels
from flashkernels.bench.common import warm_gpu
from flashkernels.bench.features import _pairs, _time, varlen_case
from flashkernels.ops.attention import launch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mults", default="1", help="max_seqlen multiples of the packed grid off")
    args = ap.parse_args()
    dev, dt = "cuda", torch.bfloat16
    H, D, n, total, lens, mean, cu = varlen_case(dev)
    cu_eq = torch.arange(0, total + 1, mean, dtype=torch.int32, device=dev)
    warm_gpu()
    mx = max(lens)
    print(f"lengths {min(lens)}..{mx}, {n} sequences, sum {total}; H={H} D={D}")
    q, k, v = (torch.randn(total, H, D, device=dev, dtype=dt) for _ in range(3))
    qd, kd, vd = (x.view(n, mean, H, D) for x in (q, k, v))
    for causal in (False, True):
        fl_var = sum(4 * _pairs(L, L, causal) * H * D for L in lens)
        fl_den = n * 4 * _pairs(mean, mean, causal) * H * D
        for r in range(args.rounds):
            res = {}
            saved = launch.HOPPER_FWD_VARLEN_PACKED
            for packed in (False, True):
                launch.HOPPER_FWD_VARLEN_PACKED = packed
                for mult in [int(m) for m in args.mults.split(",")] if not packed else [1]:
                    f = lambda: flashkernels.flash_attn_varlen_func(q, k, v, cu, cu, mx * mult, mx * mult,
                                                                    causal=causal, check_inputs=False)
                    res[f"varlen{' packed' if packed else ''} max x{mult}"] = fl_var / _time(f, False, ())[0] / 1e9
            launch.HOPPER_FWD_VARLEN_PACKED = saved
            f = lambda: flashkernels.flash_attn_varlen_func(q, k, v, cu_eq, cu_eq, mean, mean, causal=causal,
                                                            check_inputs=False)
            res["varlen equal"] = fl_den / _time(f, False, ())[0] / 1e9
            res["dense"] = fl_den / _time(lambda: flashkernels.flash_attn_func(qd, kd, vd, causal=causal), False,
                                          ())[0] / 1e9
            if not causal:  # (the dense non-causal forward's grid launch, as the varlen build's)
                saved_p = launch.HOPPER_FWD_PERSISTENT
                launch.HOPPER_FWD_PERSISTENT = False
                res["dense grid"] = fl_den / _time(lambda: flashkernels.flash_attn_func(qd, kd, vd, causal=causal),
                                                   False, ())[0] / 1e9
                # (the WINDOW build, as the varlen one, with bounds no row reaches: every block whole)
                res["dense window"] = fl_den / _time(
                    lambda: flashkernels.flash_attn_func(qd, kd, vd, window_size=(4 * mean, 4 * mean)), False,
                    ())[0] / 1e9
                launch.HOPPER_FWD_PERSISTENT = saved_p
            print(f"causal={int(causal)} round {r}: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items())
                  + f"  (varlen/dense {res['varlen max x1'] / res['dense']:.3f}, packed "
                  f"{res['varlen packed max x1'] / res['dense']:.3f})", flush=True)


if __name__ == "__main__":
    main()
