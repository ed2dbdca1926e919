"""Trace the CUDA allocations of naive attention (torch SDPA's math backend), forward and backward,
to check ``flashkernels.attention_memory``'s naive formulas against what the GPU path allocates.

    PYTHONPATH=src python scripts/diag_memory.py [--shape B,Hq,Hkv,S,D,causal] [--min-mib 32]

Prints every allocation and free of at least --min-mib MiB in order, with the live total and
the innermost frames that name an aten op, then the measured peaks next to the estimate.
Needs a CUDA GPU.
"""
import argparse
import re

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from flashkernels import attention_memory


def _where(frames):
    names = [f.get("name", "") for f in frames]
    ops = [n for n in names if re.search(r"at::(native|_ops)::\w+", n)]
    short = [re.sub(r"\(.*", "", n) for n in ops[:3]]
    return " < ".join(short) or (names[0] if names else "?")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="2,16,16,2048,128,0")
    ap.add_argument("--min-mib", type=float, default=32)
    args = ap.parse_args()
    B, Hq, Hkv, S, D, causal = map(int, args.shape.split(","))
    causal = bool(causal)
    mk = lambda h: torch.randn(B, h, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    q, k, v = mk(Hq), mk(Hkv), mk(Hkv)
    go = torch.randn(B, Hq, S, D, device="cuda", dtype=torch.bfloat16)

    def run():
        with sdpa_kernel(SDPBackend.MATH):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=Hq != Hkv)
        out.backward(go)
        return out

    run()  # warm-up
    for t in (q, k, v):
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.memory._record_memory_history(max_entries=200000, context="all", stacks="all")
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=Hq != Hkv)
    torch.cuda.synchronize()
    fwd_peak = torch.cuda.max_memory_allocated() - base
    torch.cuda.reset_peak_memory_stats()
    marker = len(torch.cuda.memory._snapshot()["device_traces"][0])
    out.backward(go)
    torch.cuda.synchronize()
    bwd_peak = torch.cuda.max_memory_allocated() - base
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)

    mib = 2**20
    live = 0
    print(f"shape B={B} Hq={Hq} Hkv={Hkv} S={S} D={D} causal={causal}; N = B*Hq*S*S = {B * Hq * S * S} "
          f"({B * Hq * S * S * 2 / mib:.0f} MiB in bf16, {B * Hq * S * S * 4 / mib:.0f} MiB in fp32)")
    for i, ev in enumerate(snap["device_traces"][0]):
        if ev["action"] not in ("alloc", "free_completed"):
            continue
        size = ev["size"]
        live += size if ev["action"] == "alloc" else -size
        if size >= args.min_mib * mib:
            phase = "bwd" if i >= marker else "fwd"
            print(f"{phase} {ev['action']:>14} {size / mib:9.1f} MiB  live {live / mib:9.1f}  {_where(ev.get('frames', []))}")
    est = attention_memory(B, Hq, S, D, kv_heads=Hkv, causal=causal)
    print(f"measured peak extra: forward {fwd_peak} ({fwd_peak / mib:.0f} MiB), backward {bwd_peak} "
          f"({bwd_peak / mib:.0f} MiB)")
    print(f"estimate:            forward {est.naive_forward} ({est.naive_forward / mib:.0f} MiB), backward "
          f"{est.naive_backward} ({est.naive_backward / mib:.0f} MiB)")


if __name__ == "__main__":
    main()
