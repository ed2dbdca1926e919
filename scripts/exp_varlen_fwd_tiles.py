"""Experiment: the Gluon varlen forward's tile at D = 128 (launch.HOPPER_FWD_CONFIGS[128] swapped
for the varlen calls; the dense reference is timed first, with the library's).

    PYTHONPATH=src python scripts/exp_varlen_fwd_tiles.py [--rounds 2]

`bench varlen`'s shapes (16 sequences of 242-1977 tokens summing to 16384, H = 16, D = 128, bf16,
causal and not) against dense flash_attn_func at the mean length (1024). Count: with BLOCK_N 128
each sequence's last key block is partly masked, ~64 keys a row, Σ L·64 / Σ L² ≈ 5% of the work;
BLOCK_N 64 halves that but runs twice the loop iterations (barriers, waits) for the same FLOPs.
Each variant's output is compared with the default tile's first (max |diff|), then timed by
CUDA-graph replays (bench/features._time), the variants alternating over ``--rounds``.
"""
import argparse

import torch

import flashkernels
from flashkernels.bench.features import _pairs, _time, varlen_case
from flashkernels.bench.common import warm_gpu
from flashkernels.ops.attention import launch

# name -> HOPPER_FWD_CONFIGS[128]'s (BLOCK_N, STAGES), BLOCK_M 128 (None: the library's)
VARIANTS = {"default (128, 128, 2)": None, "n64-s2": (64, 2), "n64-s3": (64, 3), "n64-s4": (64, 4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    dev, dt = "cuda", torch.bfloat16
    H, D, n, total, lens, mean, cu = varlen_case(dev)
    default = dict(launch.HOPPER_FWD_CONFIGS)
    warm_gpu()
    for causal in (False, True):
        q, k, v = (torch.randn(total, H, D, device=dev, dtype=dt) for _ in range(3))
        qd, kd, vd = (torch.randn(n, mean, H, D, device=dev, dtype=dt) for _ in range(3))
        flops_var = sum(4 * _pairs(L, L, causal) * H * D for L in lens)
        flops_den = n * 4 * _pairs(mean, mean, causal) * H * D
        f_var = lambda: flashkernels.flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), causal=causal,
                                                            check_inputs=False)
        dense = _time(lambda: flashkernels.flash_attn_func(qd, kd, vd, causal=causal), False, ())[0]
        tf_den = flops_den / dense / 1e9
        ref = None
        for name, cfg in VARIANTS.items():
            launch.HOPPER_FWD_CONFIGS = {**default, D: cfg or default[D]}
            out = f_var()
            ref = out if ref is None else ref
            print(f"causal={int(causal)} {name:22s} max|out - default| {(out - ref).abs().max().item():.3e}")
        for r in range(args.rounds):
            for name, cfg in VARIANTS.items():
                launch.HOPPER_FWD_CONFIGS = {**default, D: cfg or default[D]}
                ms = _time(f_var, False, ())[0]
                tf = flops_var / ms / 1e9
                print(f"causal={int(causal)} round {r} {name:22s} {tf:7.1f} TF/s  vs dense ({tf_den:.1f}) "
                      f"{tf / tf_den:.3f}", flush=True)
    launch.HOPPER_FWD_CONFIGS = default


if __name__ == "__main__":
    main()
