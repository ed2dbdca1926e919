"""A/B of the dK/dV group split (issue 3/4): the GQA backward with ``DKDV_GROUP_SPLIT`` forced to
1 (each program loops over all of its kv head's query heads) against the heuristic, and cuDNN.

    PYTHONPATH=src python3 scripts/ab_gqa_bwd.py

Shapes (bf16, D = 128, Hq/Hkv = 32/8, causal, (B, S, H, D) inputs): B = 1, S = 4096 (one
Llama-3-8B layer: the llama_layer benchmark's attention), B = 2, S = 8192 (issue 3's GQA shape)
and B = 16, S = 1024. Backward FLOPs = 2.5 x forward = 2.5 * 4 * B * Hq * S^2 * D / 2. Time: the
backward alone (autograd.grad over a retained graph), do_bench median; the gradients of the two
splits are compared (fp32 partial sums in another order: close, not bitwise).
"""
import os
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashkernels
from flashkernels.bench.common import do_bench_median, warm_gpu
from flashkernels.ops.attention import launch

# The Triton kernels are what this script measures: on an H100 the library would otherwise run its
# Gluon kernels for D = 64/128 (launch.hopper_fwd_reason / hopper_bwd_reason).
os.environ["FLASHKERNELS_HOPPER_FWD"] = "0"
os.environ["FLASHKERNELS_HOPPER_BWD"] = "0"


def main():
    warm_gpu()
    for B, S in ((1, 4096), (2, 8192), (16, 1024)):
        H, Hkv, D = 32, 8, 128
        q = torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k, v = (torch.randn(B, S, Hkv, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        do = torch.randn_like(q)
        flops = 2.5 * 4 * B * H * S * S * D / 2
        res = {}
        for name, split in (("split=1", 1), ("auto", None)):
            launch.DKDV_GROUP_SPLIT = split
            out = flashkernels.flash_attn_func(q, k, v, causal=True)
            grads = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
            ms = do_bench_median(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
            res[name] = (ms, grads)
            chosen = launch.dkdv_group_split(H // Hkv, -(-S // launch.bwd_configs(D, q.dtype, q.device)[0].block_n)
                                             * B * Hkv, q.device) if split is None else split
            print(f"B={B} S={S} 32/8 D=128 causal bwd {name:8s} (split {chosen}): {ms:.3f} ms "
                  f"{flops / ms / 1e9:.0f} TF/s", flush=True)
        launch.DKDV_GROUP_SPLIT = None
        for a, b in zip(res["split=1"][1], res["auto"][1]):
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
        qt, kt, vt = (x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v))
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)
            dot = do.transpose(1, 2)
            ms = do_bench_median(lambda: torch.autograd.grad(o, (qt, kt, vt), dot, retain_graph=True))
        print(f"B={B} S={S} cudnn bwd: {ms:.3f} ms {flops / ms / 1e9:.0f} TF/s; flashkernels auto "
              f"{ms / res['auto'][0]:.2f}x cuDNN, split=1 {ms / res['split=1'][0]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
