"""Experiment (issue 3): the Gluon forward (kernels/fwd_hopper.py) at head dims 64 and 256.

    PYTHONPATH=src python scripts/exp_fwd_dims.py [--dims 64 256] [--seqlens 1024 4096 16384]

The library runs the Gluon forward only at the head dims of ``launch.HOPPER_FWD_CONFIGS``
(D -> (BLOCK_N, STAGES); BLOCK_M 128). This script adds candidate configs for other head dims in
this process and times, on the FA3 paper's shapes (B·S = 16384, Hq·D = 2048, bf16), causal and
not: the Triton forward (the config removed), each Gluon config, and SDPA cuDNN and flash, with
``triton.testing.do_bench`` medians, all in one process. Each Gluon output is checked against the
Triton kernel's first (max |diff| and the lse's), so a wrong config cannot post a time.

Shared memory bounds the configs: Q (128 x D) + STAGES x (K + V) (BLOCK_N x D each), 2 bytes an
element, within the H100's 227 KB; D = 256 fits BLOCK_N 64 with 2 stages only.
"""
import argparse
import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from flashkernels import flash_attn_func
from flashkernels.ops.attention import launch

CANDIDATES = {64: [(128, 2), (128, 3), (64, 2), (64, 4)], 128: [(128, 2)], 256: [(64, 2)]}


def tflops(B, H, S, D, causal, ms):
    f = 4 * B * H * S * S * D * (0.5 if causal else 1.0)
    return f / ms / 1e9


def sdpa_times(q, k, v, causal, rep):
    """{"cudnn": ms, "fa2": ms}: SDPA's cuDNN and flash backends (do_bench medians) on (B, S, H, D)
    q, k, v (as (B, H, S, D) views); a backend that refuses the call is left out, with its reason."""
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    ms = {}
    for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("fa2", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel([be]):
                F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
                ms[name] = do_bench(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal), rep=rep,
                                    return_mode="median")
        except RuntimeError as exc:
            print(f"  {name}: {str(exc)[:120]}", flush=True)
    return ms


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--seqlens", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--rep", type=float, default=100)
    args = ap.parse_args()
    # (this script changes switch dicts in place, which the forward's launch plans do not see: plans off)
    launch.HOPPER_FWD_PLANS = False
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; fwd TF/s (do_bench median)", flush=True)
    saved = dict(launch.HOPPER_FWD_CONFIGS)
    for D in args.dims:
        H = 2048 // D
        for S in args.seqlens:
            B = 16384 // S
            for causal in (False, True):
                torch.manual_seed(0)
                q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                row = {}
                launch.HOPPER_FWD_CONFIGS.clear()
                launch.HOPPER_FWD_CONFIGS.update({d: c for d, c in saved.items() if d != D})
                ref, ref_lse, _ = flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
                row["triton"] = do_bench(lambda: flash_attn_func(q, k, v, causal=causal), rep=args.rep,
                                         return_mode="median")
                for cfg in CANDIDATES.get(D, []):
                    launch.HOPPER_FWD_CONFIGS[D] = cfg
                    n0 = launch.hopper_fwd_launches
                    try:
                        out, lse, _ = flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
                    except Exception as exc:  # a config that does not build: say so, go on
                        print(f"  D={D} cfg {cfg}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                        continue
                    ran = launch.hopper_fwd_launches > n0
                    err = (out.float() - ref.float()).abs().max().item()
                    lerr = (lse - ref_lse).abs().max().item()
                    if not ran or err > 2e-2 or not math.isfinite(err) or lerr > 1e-3:
                        print(f"  D={D} S={S} causal={causal} cfg {cfg}: ran Gluon {ran}, max |out diff| {err:.3g}, "
                              f"|lse diff| {lerr:.3g}: NOT TIMED", flush=True)
                        continue
                    row[f"gluon{cfg}"] = do_bench(lambda: flash_attn_func(q, k, v, causal=causal), rep=args.rep,
                                                  return_mode="median")
                row.update(sdpa_times(q, k, v, causal, args.rep))
                cells = "  ".join(f"{n} {tflops(B, H, S, D, causal, ms):6.1f}" for n, ms in row.items())
                best = min((ms for n, ms in row.items() if n.startswith("gluon")), default=None)
                vs = f"  best gluon / cudnn {row['cudnn'] / best:.2f}x, / triton {row['triton'] / best:.2f}x" \
                    if best and "cudnn" in row else ""
                print(f"D={D:3d} B={B:2d} H={H:2d} S={S:5d} causal={int(causal)}  {cells}{vs}", flush=True)
    launch.HOPPER_FWD_CONFIGS.clear()
    launch.HOPPER_FWD_CONFIGS.update(saved)


if __name__ == "__main__":
    main()
