"""Does the attention backward's speed depend on the API / memory layout it is called with?

    PYTHONPATH=src python3 scripts/exp_bwd_layout.py [--head-dim 128] [--seqlen 16384] [--causal]

Session 12 read the D = 128, S = 16k backward at 547 TF/s through ``flash_attn_func`` on
(B, S, H, D) tensors (scripts/ncu_attention.py) and at 497-510 through
``scaled_dot_product_attention`` on (B, H, S, D) tensors (``flashkernels bench attention``) in
other processes. Here, in one process, alternating for ``--rounds`` rounds: ours through
flash_attn_func (BSHD), through scaled_dot_product_attention on BHSD tensors and on BHSD views
of BSHD memory, and SDPA cuDNN on BHSD; forward and backward (autograd.grad over a retained
graph, as bench attention), do_bench medians. Then each variant's kernels per backward call
(torch.profiler), to see where a difference comes from; before them, each variant's allocator
segments over 20 calls, its host time to issue them against their GPU time, and cProfile's top
host functions. ``--pads N`` instead times two of the backwards with 0..N-1 extra 2 MB blocks
held first (their buffers at other addresses), twice over.
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
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pads", type=int, default=0,
                    help="instead: time the sdpa-bhsd and flash_attn_func backwards with 0..N-1 extra 2 MB "
                         "blocks held before each, so their buffers land at other addresses")
    args = ap.parse_args()
    import flashkernels
    from flashkernels.bench.common import do_bench_median, warm_gpu

    D, S = args.head_dim, args.seqlen
    B, H = max(1, 16384 // S), 2048 // D
    causal = args.causal
    flops = 4 * B * H * S * S * D * (0.5 if causal else 1.0)
    g = torch.Generator(device="cuda").manual_seed(0)
    base = [torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4)]

    def leaves(layout):
        if layout == "bshd":
            return [t.clone().requires_grad_() for t in base[:3]], base[3]
        if layout == "bhsd":
            return [t.transpose(1, 2).contiguous().requires_grad_() for t in base[:3]], \
                base[3].transpose(1, 2).contiguous()
        # bhsd views of bshd memory: what a Hugging Face model hands to SDPA
        ls = [t.clone().requires_grad_() for t in base[:3]]
        return ls, base[3].transpose(1, 2)

    variants = {}
    ls, do = leaves("bshd")
    variants["fk flash_attn_func bshd"] = (lambda ls=ls: flashkernels.flash_attn_func(*ls, causal=causal), ls, do)
    ls, do = leaves("bhsd")
    variants["fk sdpa bhsd"] = (lambda ls=ls: flashkernels.scaled_dot_product_attention(*ls, is_causal=causal), ls, do)
    ls, do = leaves("view")
    variants["fk sdpa bshd-views"] = (
        lambda ls=ls: flashkernels.scaled_dot_product_attention(*(t.transpose(1, 2) for t in ls), is_causal=causal),
        ls, do)
    ls, do = leaves("bhsd")

    def cudnn(ls=ls):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(*ls, is_causal=causal)
    variants["sdpa cudnn bhsd"] = (cudnn, ls, do)

    warm_gpu()
    if args.pads:
        return pads(args, variants, flops, do_bench_median)
    for fn, ls, do in variants.values():  # compile, first launches
        o = fn()
        torch.autograd.grad(o, ls, do)
    torch.cuda.synchronize()
    res = {k: ([], []) for k in variants}
    print(f"B={B} S={S} H={H} D={D} causal={causal}, bf16; TF/s fwd / bwd (bwd = 2.5x the forward's FLOPs)")
    for r in range(args.rounds):
        names = list(variants)
        names = names[r % len(names):] + names[:r % len(names)]
        for name in names:
            fn, ls, do = variants[name]
            with torch.no_grad():
                f = do_bench_median(fn)
            o = fn()
            b = do_bench_median(lambda o=o, ls=ls, do=do: torch.autograd.grad(o, ls, do, retain_graph=True))
            del o
            res[name][0].append(flops / f / 1e9)
            res[name][1].append(2.5 * flops / b / 1e9)
            print(f"  round {r} {name:24s} fwd {flops / f / 1e9:6.1f} bwd {2.5 * flops / b / 1e9:6.1f}", flush=True)
    print("\nper variant: segments cudaMalloc'd over 20 backward calls (allocator churn); the host's time "
          "to issue 20 backward calls (no sync in between) against the GPU's time for them; cProfile's top "
          "host functions of those 20 calls")
    import cProfile
    import pstats
    import time
    for name, (fn, ls, do) in variants.items():
        o = fn()
        torch.autograd.grad(o, ls, do, retain_graph=True)
        torch.cuda.synchronize()
        seg0 = torch.cuda.memory_stats().get("segment.all.allocated", 0)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        prof = cProfile.Profile()
        e0.record()
        t0 = time.perf_counter()
        prof.enable()
        for _ in range(20):
            torch.autograd.grad(o, ls, do, retain_graph=True)
        prof.disable()
        host = (time.perf_counter() - t0) * 1e3
        e1.record()
        torch.cuda.synchronize()
        gpu = e0.elapsed_time(e1)
        segs = torch.cuda.memory_stats().get("segment.all.allocated", 0) - seg0
        del o
        print(f"  {name:24s} segments {segs}; 20 calls: host {host:8.1f} ms, GPU {gpu:8.1f} ms "
              f"({2.5 * flops * 20 / gpu / 1e9:.0f} TF/s)", flush=True)
        st = pstats.Stats(prof)
        st.sort_stats("tottime")
        rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:6]
        for (file, line, func), (cc, nc, tt, ct, _) in rows:
            print(f"      {tt * 1e3 / 20:8.3f} ms/call {nc // 20:4d}x  {func} ({file.split('/')[-1]}:{line})")

    print("\nmedians:")
    for name, (f, b) in res.items():
        print(f"  {name:24s} fwd {sorted(f)[len(f) // 2]:6.1f}  bwd {sorted(b)[len(b) // 2]:6.1f}  "
              f"(bwd min {min(b):.1f} max {max(b):.1f})")

    from torch.profiler import ProfilerActivity, profile
    print("\nkernels of one backward (torch.profiler, 5 calls):")
    for name, (fn, ls, do) in variants.items():
        o = fn()
        torch.autograd.grad(o, ls, do, retain_graph=True)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                torch.autograd.grad(o, ls, do, retain_graph=True)
            torch.cuda.synchronize()
        del o
        print(f"  {name}")
        for ev in sorted(prof.key_averages(), key=lambda e: -e.device_time_total):
            if ev.device_time_total > 0:
                print(f"    {ev.device_time_total / 5:9.1f} us x{ev.count // 5}  {ev.key[:100]}")


def pads(args, variants, flops, do_bench_median):
    """Backward TF/s against the allocator's placement: p blocks of 2 MB held while the backward's
    buffers (the fp32 dQ accumulator, dq, dk, dv, Delta) are allocated, p = 0..pads-1, twice."""
    names = ["fk sdpa bhsd", "fk flash_attn_func bshd"]
    for fn, ls, do in variants.values():
        o = fn()
        torch.autograd.grad(o, ls, do)
    torch.cuda.synchronize()
    print("backward TF/s with p extra 2 MB blocks allocated first (two passes over p)")
    for rnd in range(2):
        for p in range(args.pads):
            line = []
            for name in names:
                fn, ls, do = variants[name]
                o = fn()
                pad = torch.empty(p * (1 << 21), dtype=torch.uint8, device="cuda") if p else None
                torch.cuda.synchronize()
                g = torch.autograd.grad(o, ls, do, retain_graph=True)
                addr = g[0].data_ptr()
                del g
                b = do_bench_median(lambda o=o, ls=ls, do=do: torch.autograd.grad(o, ls, do, retain_graph=True))
                line.append(f"{name} {2.5 * flops / b / 1e9:6.1f} (dq at +{(addr % (1 << 30)) >> 20} MB)")
                del o, pad
                torch.cuda.synchronize()
            print(f"  pass {rnd} p={p}: " + " | ".join(line), flush=True)


if __name__ == "__main__":
    main()
