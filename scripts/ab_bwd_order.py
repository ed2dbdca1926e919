"""A/B of the Gluon backward's CTA order (launch.HOPPER_BWD_LONG_FIRST_WAVES) on causal shapes.

    PYTHONPATH=src python scripts/ab_bwd_order.py

The Gluon backward launches its causal CTAs longest-first (grid (B·Hkv, S/128)) only when there
are at most HOPPER_BWD_LONG_FIRST_WAVES waves of them (one CTA an SM); otherwise key block
fastest (grid (S/128, B·Hkv)), which keeps one head's CTAs together in L2. This script times the
backward alone (autograd.grad over a retained graph, do_bench median) with the cut at 0 (never
long-first) and at 1000 (always), next to SDPA cuDNN's backward, on the Llama layer's attention at
B = 1, 2, 4 (32/8 heads, S = 4096) and the FA3 grid's causal shapes, all in one process; inputs
(B, H, S, D) contiguous, and for the layer's shapes also (B, S, H, D) storage (Hugging Face's).
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

import flashkernels
from flashkernels.ops.attention import launch

SHAPES = [  # (B, Hq, Hkv, S, D)
    (1, 32, 8, 4096, 128), (2, 32, 8, 4096, 128), (4, 32, 8, 4096, 128), (2, 32, 8, 8192, 128),
    (16, 16, 16, 1024, 128), (4, 16, 16, 4096, 128), (1, 16, 16, 16384, 128), (4, 32, 32, 4096, 64),
]


def main():
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; causal bwd ms (do_bench median)", flush=True)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    saved = launch.HOPPER_BWD_LONG_FIRST_WAVES
    for (B, Hq, Hkv, S, D), layout in [(s, "bhsd") for s in SHAPES] + [(s, "bshd") for s in SHAPES[:3]]:
        def make(H):  # (B, H, S, D): contiguous, or a transposed view of (B, S, H, D) storage (Hugging Face's)
            if layout == "bhsd":
                return torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
            return torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        q, k, v = (make(h).requires_grad_() for h in (Hq, Hkv, Hkv))
        do = make(Hq)
        row = {}
        for name, waves in (("key-fastest", 0), ("long-first", 1000)):
            launch.HOPPER_BWD_LONG_FIRST_WAVES = waves
            o = flashkernels.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=Hq != Hkv)
            n = launch.hopper_bwd_launches
            torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
            assert launch.hopper_bwd_launches == n + 1, "the Gluon backward did not run"
            row[name] = do_bench(lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True),
                                 return_mode="median")
        launch.HOPPER_BWD_LONG_FIRST_WAVES = saved
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=Hq != Hkv)
            row["cudnn"] = do_bench(lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True),
                                    return_mode="median")
        waves = B * Hkv * (S // 128) / sms
        cells = "  ".join(f"{n} {ms:.3f}" for n, ms in row.items())
        print(f"{layout} B={B:2d} H={Hq}/{Hkv} S={S:5d} D={D}  {waves:5.1f} waves  {cells}  "
              f"x cuDNN: key-fastest {row['cudnn'] / row['key-fastest']:.2f}, "
              f"long-first {row['cudnn'] / row['long-first']:.2f}", flush=True)


if __name__ == "__main__":
    main()
