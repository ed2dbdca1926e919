"""One forward and one backward of flashkernels' attention and of SDPA cuDNN, for Nsight Compute.

    ncu --profile-from-start off --clock-control none --section SpeedOfLight \
        --section WarpStateStats --section ComputeWorkloadAnalysis ... \
        python3 scripts/ncu_attention.py --head-dim 128 --seqlen 16384 [--causal]

FA3-paper shape: B * S = 16384 tokens, Hq * D = 2048, bf16. Every provider runs forward and
backward twice first (compiles, autotuning, cuDNN's plan cache), outside the profiled range;
then ``cudaProfilerStart``, one forward and one backward each, ``cudaProfilerStop``, so that
``--profile-from-start off`` profiles only those kernels (flashkernels: the forward, the
backward's Delta preprocess and the backward; cuDNN: its own). Printed first: each call's time
without the profiler (do_bench median), to put the counters beside the speed.
"""
import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=16384)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--providers", default="flashkernels,cudnn",
                    help="flashkernels, cudnn, softcap (flashkernels with softcap=--softcap)")
    ap.add_argument("--softcap", type=float, default=30.0, help="the softcap provider's cap")
    ap.add_argument("--no-time", action="store_true", help="skip the do_bench timings")
    args = ap.parse_args()
    import flashkernels
    from flashkernels.bench.common import do_bench_median

    D, S = args.head_dim, args.seqlen
    B, H = max(1, 16384 // S), 2048 // D
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
    flops = 4 * B * H * S * S * D * (0.5 if args.causal else 1.0)

    calls = {}
    for p in args.providers.split(","):
        if p in ("flashkernels", "softcap"):
            qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
            cap = args.softcap if p == "softcap" else 0.0

            def fwd(qq=qq, kk=kk, vv=vv, cap=cap):
                return flashkernels.flash_attn_func(qq, kk, vv, causal=args.causal, softcap=cap)
            calls[p] = (fwd, (qq, kk, vv), do)
        elif p == "cudnn":
            qq, kk, vv = (t.transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))

            def fwd(qq=qq, kk=kk, vv=vv):
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return F.scaled_dot_product_attention(qq, kk, vv, is_causal=args.causal)
            calls[p] = (fwd, (qq, kk, vv), do.transpose(1, 2).contiguous())
        else:
            raise SystemExit(f"--providers: unknown {p!r} (flashkernels, cudnn, softcap)")

    for p, (fwd, leaves, dout) in calls.items():
        for _ in range(2):
            o = fwd()
            torch.autograd.grad(o, leaves, dout)
        torch.cuda.synchronize()
        if not args.no_time:
            o = fwd()
            f_ms = do_bench_median(fwd)
            b_ms = do_bench_median(lambda: torch.autograd.grad(o, leaves, dout, retain_graph=True))
            print(f"{p:13s} B={B} S={S} H={H} D={D} causal={args.causal}: fwd {f_ms:.3f} ms "
                  f"{flops / f_ms / 1e9:.0f} TF/s, bwd {b_ms:.3f} ms {2.5 * flops / b_ms / 1e9:.0f} TF/s", flush=True)
            del o
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for p, (fwd, leaves, dout) in calls.items():
        o = fwd()
        torch.autograd.grad(o, leaves, dout)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
