"""Does the persistent / grid forward lose to the SMs' round count? (session 28)

The FA3-paper grid holds B·S = 16384 tokens and H·D = 2048, so a non-causal forward has 2048 query tiles of 128
rows at D = 128 (1024 at D = 256): 15.5 tiles an SM on 132 SMs (7.76 at D = 256), i.e. 16 (8) rounds where the
work is 15.5 (7.76): 3.1% of the time with about half the SMs idle. At S = 16896 (132 tiles a head, B = 1,
H = 2048 / D) the tiles fill 16 (8) rounds exactly, each tile 132 / 128 longer, for 1.0635x the FLOPs: so if the
round count sets the time, TF/s at 16896 reads 1.031x that at 16384; if not, ~1.00x. SDPA cuDNN timed alongside as
a control (its own scheduling). CUDA graphs of each call replayed in alternation (bench.common.paired_ms, the L2
flushed before each); TF/s medians and the per-repetition ratio of our TF/s at 16896 over 16384.

    PYTHONPATH=src python scripts/exp_tile_rounds.py [--paired 20] [--head-dims 128,256]
"""
import argparse
import statistics

import torch
import torch.nn.functional as F

import flashkernels
from flashkernels.bench.common import capture_calls, paired_ms, paired_ratio, warm_gpu


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paired", type=int, default=20)
    ap.add_argument("--head-dims", default="128,256")
    ap.add_argument("--seqlens", default="16384,16896")
    args = ap.parse_args()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    warm_gpu()
    print(f"{torch.cuda.get_device_name()}: SMs {torch.cuda.get_device_properties(0).multi_processor_count}; "
          f"B 1, non-causal forward, bf16, paired {args.paired}x", flush=True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    seqlens = [int(s) for s in args.seqlens.split(",")]
    for D in (int(x) for x in args.head_dims.split(",")):
        H = 2048 // D
        fns, flops = [], []
        for S in seqlens:
            q, k, v = (torch.randn(1, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
            fns.append(lambda q=q, k=k, v=v: flashkernels.flash_attn_func(q, k, v))

            def cudnn(qt=qt, kt=kt, vt=vt):
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return F.scaled_dot_product_attention(qt, kt, vt)
            fns.append(cudnn)
            flops += [4.0 * H * S * S * D] * 2
        with torch.no_grad(), torch.cuda.stream(stream):
            graphs = capture_calls(fns, stream)
            times = paired_ms([g.replay for g in graphs], reps=args.paired)
        torch.cuda.current_stream().wait_stream(stream)
        tf = [f / statistics.median(t) * 1e-9 for f, t in zip(flops, times)]
        cells = [f"S={S}: ours {tf[2 * i]:.1f} cuDNN {tf[2 * i + 1]:.1f} TF/s" for i, S in enumerate(seqlens)]
        print(f"D={D} H={H}: " + "; ".join(cells))
        for who, j in (("ours", 0), ("cuDNN", 1)):
            # TF/s ratio at the second length over the first, per repetition: time ratio scaled by the FLOPs'
            r = paired_ratio([t * flops[2 + j] / flops[j] for t in times[j]], times[2 + j])
            print(f"   {who}: TF/s at S={seqlens[1]} over S={seqlens[0]} {r[0]:.3f} [{r[1]:.3f}, {r[2]:.3f}]",
                  flush=True)
        del graphs
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
