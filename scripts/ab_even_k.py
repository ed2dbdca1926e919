"""A/B: the forward's masked phases with and without key-bounds checks (launch.EVEN_K_LOADS).

    PYTHONPATH=src python scripts/ab_even_k.py

FA3-paper shapes (B*S = 16384, Hq*D = 2048, D = 128, bf16), S in 1k/2k/4k, causal and not;
forward TFLOP/s of flashkernels with EVEN_K_LOADS on and off, and SDPA cuDNN for scale, all in
this process (do_bench medians). Needs a CUDA GPU.
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashkernels
from flashkernels.bench.common import do_bench_median
from flashkernels.ops.attention import launch


def main():
    D, H = 128, 16
    print(f"{'S':>6s} {'causal':>6s} {'even_k on':>10s} {'even_k off':>11s} {'cudnn':>8s}  (fwd TF/s)")
    for S in (1024, 2048, 4096):
        B = 16384 // S
        q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for causal in (False, True):
            flops = 4 * B * H * S * S * D / (2 if causal else 1)
            res = []
            for on in (True, False):
                launch.EVEN_K_LOADS = on
                ms = do_bench_median(lambda: flashkernels.flash_attn_func(q, k, v, causal=causal))
                res.append(flops / ms / 1e9)
            launch.EVEN_K_LOADS = True
            qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                ms = do_bench_median(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal))
            res.append(flops / ms / 1e9)
            print(f"{S:>6d} {int(causal):>6d} {res[0]:10.1f} {res[1]:11.1f} {res[2]:8.1f}", flush=True)


if __name__ == "__main__":
    main()
