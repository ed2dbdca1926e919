"""A/B of the decode kernel's K/V paths and tiles against SDPA, in one process (one GPU call).

    PYTHONPATH=src python scripts/ab_decode.py                 # H100, ~3 min with compiles
    TRITON_INTERPRET=1 PYTHONPATH=src python scripts/ab_decode.py --smoke   # CPU: every path runs once
    ... --variants a,b --layouts contig,headmajor --profile a,sdpa-cudnn    # a subset; kernel times

Shapes of ``flashkernels bench decode`` (bf16, D = 128, Hq = 32, Hkv = 8, one query token, every
row full): B = 16 cache 8192 and B = 1 cache 131072; flashkernels on the contiguous cache and on
paged caches (page 16 and 256, pages in a random order). Bytes = K + V read = 2*B*Hkv*S*D*2.

Each variant is ``launch.Config`` swapped in for ``launch.attn_config`` (the path: old = every
tile masked, per-key addresses; fast = unmasked full tiles, per-tile / per-page addresses; tma =
tensor-descriptor K/V loads where ``launch.tma_ok``) and a split count (0 = the heuristic).

Timing: GPU time, the call captured in a CUDA graph and replayed under ``triton.testing.do_bench``
(median, L2 flushed): the eager call's host time (~0.1 ms, varying from one machine and process
to the next) is close to the kernel's 0.1 ms, which is suspected to be the 30-40% "unstable"
decode readings of session 3; the eager time of the old path and of SDPA is printed beside it.
Repeats are interleaved (every variant once, then again, in a rotated order), each repeat on
freshly allocated inputs (new addresses, the previous ones kept alive); the table gives
min / median / max K+V TB/s over repeats. CSV of every measurement to ``$OUT/ab_decode.csv``
(or --csv). ``--profile``: afterwards, each named variant's kernels (the attention kernel, the
split combine) and SDPA's with their GPU times per call (torch.profiler over eager calls).
``--layouts ...,headmajor``: the cache as (B, Hkv, S, D) memory seen through the strides.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from flashkernels.ops.kvcache import launch
from flashkernels.ops.kvcache.api import flash_attn_with_kvcache

C = launch.Config
# name: (config, splits for B=16, splits for B=1); splits 0 = the heuristic (3 and 33 on an H100).
# Shared memory per program (ptxas, sm_90a): (16,128,8,2) 72 KB = ONE K and one V buffer (Triton
# 3.6 gives 2 stages a 1-deep ring: 64 KB in flight an SM at most, drained before the next
# issue); (16,128,8,3) 136 KB = a 2-deep ring; (16,64,4,4) 102 KB, 3-deep, two programs an SM.
VARIANTS = {
    "old":             (C(16, 128, 8, 2), 0, 0),   # the default before this change
    "fast":            (C(16, 128, 8, 2, fast=True), 0, 0),
    "fast-st3":        (C(16, 128, 8, 3, fast=True), 0, 0),
    "fast-st3-s4":     (C(16, 128, 8, 3, fast=True), 4, 16),
    "fast-bn64-st4":   (C(16, 64, 4, 4, fast=True), 0, 0),
    "fast-bn64-st4-s2": (C(16, 64, 4, 4, fast=True), 2, 32),
    "fast-bn64-st4-s8": (C(16, 64, 4, 4, fast=True), 8, 66),
    "tma-st3":         (C(16, 128, 8, 3, tma=True), 0, 0),
    "tma-bn64-st4":    (C(16, 64, 4, 4, tma=True), 0, 0),
    # session 12: one split at B=16 (128 programs, no combine kernel), more splits at B=1
    "fast-bn64-st4-s1": (C(16, 64, 4, 4, fast=True), 1, 33),
    "fast-bn64-st4-s66": (C(16, 64, 4, 4, fast=True), 2, 66),
    "fast-st3-s1":     (C(16, 128, 8, 3, fast=True), 1, 16),
    "fast-bn64-st4-s16": (C(16, 64, 4, 4, fast=True), 2, 16),
    "fast-bn128-w4-st3-s1": (C(16, 128, 4, 3, fast=True), 1, 16),  # cuDNN's tile: 16 x 128 keys, 4 warps
    "fast-bn64-st6-s1": (C(16, 64, 4, 6, fast=True), 1, 16),       # a deeper ring, one program an SM
    "tma-bn64-st4-s1": (C(16, 64, 4, 4, tma=True), 1, 33),
    # session 18: 16-key tiles, so that TMA takes paged 16 too (page % BLOCK_N == 0); 8 stages = 64 KB
    # of K and V in flight a program, as (16, 64, 4, 4)'s 3-deep ring holds 96 KB. Session 19 (H100,
    # ...-s19-ab-decode-bn16.txt): 1.81 / 2.51 TB/s contiguous / paged 16 at B = 16 against the
    # default's 2.79 / 2.68, 2.63 / 2.54 against 2.75 / 2.67 at B = 1: lost
    "tma-bn16-st8-s1": (C(16, 16, 4, 8, tma=True), 1, 33),
    "tma-bn16-st8": (C(16, 16, 4, 8, tma=True), 0, 0),
    # session 28: 7 stages, the paged cache's pipelined ring three deep (the page-table entry's load feeds the K / V
    # loads' addresses: Triton's pipeliner spaces the two ceil((stages - 2) / 2) apart; 4 stages: one deep)
    "fast-bn64-st7": (C(16, 64, 4, 7, fast=True), 0, 0),
    "fast-bn64-st7-s1": (C(16, 64, 4, 7, fast=True), 1, 33),
    "fast-bn64-st7-s4": (C(16, 64, 4, 7, fast=True), 4, 66),
}
EAGER_TOO = ("old", "fast-st3", "sdpa-cudnn", "sdpa-flash")
CASES = ((16, 8192), (1, 131072))
LAYOUTS = ("contig", "paged16", "paged256")  # --layouts adds "headmajor" (SDPA's memory order)
HQ, HKV, D = 32, 8, 128


def smoke_setup():
    """Tiny shapes and interpreter-sized tiles: every path and layout runs once on the CPU."""
    global VARIANTS, CASES, LAYOUTS, HQ, HKV, D
    small = {}
    for name, (cfg, s16, s1) in VARIANTS.items():
        bn = 32 if cfg.block_n == 128 else 16
        small[name] = (cfg._replace(block_n=bn, num_warps=4, num_stages=1), min(s16, 3), min(s1, 5))
    VARIANTS = small
    CASES = ((2, 96), (1, 256))
    LAYOUTS = ("contig", "paged16", "paged32")
    HQ, HKV, D = 8, 2, 32


def make_inputs(B, S, layout, dtype, dev, g):
    q = torch.randn(B, 1, HQ, D, device=dev, dtype=dtype, generator=g)
    kc = torch.randn(B, S, HKV, D, device=dev, dtype=dtype, generator=g)
    vc = torch.randn(B, S, HKV, D, device=dev, dtype=dtype, generator=g)
    lens = torch.full((B,), S, dtype=torch.int32, device=dev)
    table = None
    if layout == "headmajor":  # (B, Hkv, S, D) memory seen as (B, S, Hkv, D): each head's keys contiguous
        kc = kc.transpose(1, 2).contiguous().transpose(1, 2)
        vc = vc.transpose(1, 2).contiguous().transpose(1, 2)
    if layout.startswith("paged"):
        page = int(layout.removeprefix("paged"))
        nb = S // page
        table = torch.randperm(B * nb, device=dev, generator=g).view(B, nb).to(torch.int32)
        kp = torch.empty(B * nb, page, HKV, D, device=dev, dtype=dtype)
        vp = torch.empty_like(kp)
        kp[table.long().flatten()] = kc.reshape(B * nb, page, HKV, D)
        vp[table.long().flatten()] = vc.reshape(B * nb, page, HKV, D)
        kc, vc = kp, vp
    return q, kc, vc, lens, table


def ours(cfg, splits, q, kc, vc, lens, table):
    def fn():
        launch.attn_config = lambda *a, _c=cfg: _c
        return flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, block_table=table, num_splits=splits,
                                       check_inputs=False, backend="triton")
    return fn


def sdpa(backend, qs, k, v):
    """SDPA pinned to one backend on q (B, Hq, 1, D), k, v (B, Hkv, S, D) contiguous, GQA native."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    be = getattr(SDPBackend, backend)

    def fn():
        with sdpa_kernel(be):
            return F.scaled_dot_product_attention(qs, k, v, enable_gqa=True)
    return fn


def graph_ms(fn, bench):
    """GPU time: fn captured once in a CUDA graph on a side stream, the graph replayed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            fn()
    torch.cuda.synchronize()
    ms = bench(graph.replay)
    del graph
    return ms


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (TRITON_INTERPRET=1)")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--rep-ms", type=float, default=60)
    ap.add_argument("--variants", default="", help="comma subset of " + ",".join(VARIANTS))
    ap.add_argument("--no-sdpa", action="store_true")
    ap.add_argument("--layouts", default="", help="comma subset of contig,paged16,paged256,headmajor")
    ap.add_argument("--profile", default="", help="comma list of variants (and sdpa-cudnn / sdpa-flash) whose "
                    "kernels' GPU times torch.profiler reports per call on the contiguous cache, after the timing")
    ap.add_argument("--csv", default=None, help="default $OUT/ab_decode.csv when $OUT is set")
    args = ap.parse_args()
    t_start = time.perf_counter()
    if args.smoke:
        smoke_setup()
        args.repeats = min(args.repeats, 2)
    names = [n for n in (args.variants.split(",") if args.variants else VARIANTS)]
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        sys.exit(f"--variants: unknown {bad}; expected names from {list(VARIANTS)}")
    global LAYOUTS
    if args.layouts:
        LAYOUTS = tuple(args.layouts.split(","))
    gpu = torch.cuda.is_available() and not args.smoke
    dev = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu else torch.float16
    default_cfg = launch.attn_config

    if gpu:
        from flashkernels.bench.common import do_bench_median, environment, warm_gpu

        env = environment()
        print(f"ab_decode: {env['gpu']}, torch {env['torch']}, triton {env['triton']}, code {env['git_sha']}",
              flush=True)
        warm_gpu(1.0)

        def bench(fn):
            return do_bench_median(fn, 25, args.rep_ms)
    else:
        env = dict(gpu="cpu-interpreter", torch=torch.__version__, triton="", git_sha="")

        def bench(fn):
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3

    path = args.csv or (os.path.join(os.environ["OUT"], "ab_decode.csv") if os.environ.get("OUT") else None)
    sink = open(path, "w", newline="") if path else None
    writer = None
    results = {}  # (B, S, layout, name, mode) -> [TB/s]
    diffs = {}
    keep = []  # every repeat's inputs stay alive: the next repeat's land at new addresses
    g = torch.Generator(device=dev).manual_seed(0)
    try:
        for rep in range(args.repeats):
            for B, S in CASES:
                nbytes = 2 * B * HKV * S * D * dtype.itemsize
                jobs = []
                for layout in LAYOUTS:
                    inp = make_inputs(B, S, layout, dtype, dev, g)
                    keep.append(inp)
                    for n in names:
                        cfg, s16, s1 = VARIANTS[n]
                        jobs.append((layout, n, cfg, s16 if B > 1 else s1, ours(cfg, s16 if B > 1 else s1, *inp)))
                    if layout == "contig" and not args.no_sdpa:
                        sd = tuple(t.transpose(1, 2).contiguous() for t in inp[:3])  # one copy for both
                        keep.append(sd)
                        for be, n in (("CUDNN_ATTENTION", "sdpa-cudnn"), ("FLASH_ATTENTION", "sdpa-flash")):
                            jobs.append((layout, n, None, 0, sdpa(be if gpu else "MATH", *sd)))  # smoke: MATH
                k = rep % len(jobs)
                for layout, n, cfg, splits, fn in jobs[k:] + jobs[:k]:  # rotated order each repeat
                    key = (B, S, layout, n)
                    try:
                        if rep == 0 and cfg is not None:  # outputs, compared with "old"'s below
                            diffs[key] = fn().float()
                        modes = [("graph", lambda: graph_ms(fn, bench))] if gpu else [("eager", lambda: bench(fn))]
                        if gpu and n in EAGER_TOO:
                            modes.append(("eager", lambda: bench(fn)))
                        for mode, timer in modes:
                            ms = timer()
                            tbps = nbytes / ms / 1e9
                            results.setdefault(key + (mode,), []).append(tbps)
                            row = dict(rep=rep, batch=B, cache=S, layout=layout, variant=n,
                                       config=tuple(cfg) if cfg else "", splits=splits, mode=mode,
                                       ms=f"{ms:.5f}", kv_tbps=f"{tbps:.4f}", **env)
                            if sink:
                                if writer is None:
                                    writer = csv.DictWriter(sink, fieldnames=list(row))
                                    writer.writeheader()
                                writer.writerow(row)
                                sink.flush()
                            print(f"rep {rep} B={B:2d} S={S:6d} {layout:8s} {n:18s} {mode:5s} {ms * 1e3:8.1f} us "
                                  f"{tbps:5.2f} TB/s  [{time.perf_counter() - t_start:5.0f} s]", flush=True)
                    except Exception as e:  # noqa: BLE001 - one failing variant must not end the run
                        print(f"rep {rep} B={B} S={S} {layout} {n}: FAILED {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}", flush=True)
                    finally:
                        launch.attn_config = default_cfg
                # Outputs against the old path's, same inputs (first repeat).
                for layout in LAYOUTS:
                    base = diffs.get((B, S, layout, "old"))
                    for n in names:
                        o = diffs.get((B, S, layout, n))
                        if base is not None and o is not None and not isinstance(o, float):
                            diffs[(B, S, layout, n)] = (o - base).abs().max().item()
                    if base is not None and not isinstance(base, float):
                        diffs[(B, S, layout, "old")] = 0.0
    finally:
        if sink:
            sink.close()
        launch.attn_config = default_cfg

    print(f"\nK+V TB/s over {args.repeats} repeats (min / median / max); graph = GPU time, eager = with host time; "
          f"'max diff' = |out - old path's out| on the same inputs")
    head = f"{'B':>3} {'cache':>7} {'layout':9} {'variant':18} {'mode':5} {'min':>6} {'median':>6} {'max':>6} " \
           f"{'x cudnn':>7} {'pg/contig':>9} {'max diff':>9}"
    print(head)
    print("-" * len(head))
    for B, S in CASES:
        cud = results.get((B, S, "contig", "sdpa-cudnn", "graph"))
        for layout in LAYOUTS:
            for n in names + (["sdpa-cudnn", "sdpa-flash"] if layout == "contig" else []):
                for mode in ("graph", "eager"):
                    v = results.get((B, S, layout, n, mode))
                    if not v:
                        continue
                    med = statistics.median(v)
                    xc = f"{med / statistics.median(cud):.3f}" if cud and mode == "graph" else ""
                    c = results.get((B, S, "contig", n, mode))
                    pc = f"{med / statistics.median(c):.3f}" if c and layout != "contig" else ""
                    dd = diffs.get((B, S, layout, n))
                    dd = f"{dd:.1e}" if isinstance(dd, float) else ""
                    print(f"{B:3d} {S:7d} {layout:9} {n:18} {mode:5} {min(v):6.2f} {med:6.2f} {max(v):6.2f} "
                          f"{xc:>7} {pc:>9} {dd:>9}")
    if args.profile and gpu:
        profile(args.profile.split(","), dtype, dev, g, default_cfg)
    print(f"\nab_decode: {time.perf_counter() - t_start:.0f} s" + (f", CSV {path}" if path else ""))


def profile(names, dtype, dev, g, default_cfg, calls=20):
    """Each kernel's mean GPU time per call (torch.profiler, eager calls after a warm-up): how a
    step divides between the attention kernel, the split combine and any copies."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    print(f"\nkernels per call (torch.profiler, {calls} eager calls, contiguous cache)")
    for B, S in CASES:
        inp = make_inputs(B, S, "contig", dtype, dev, g)
        sd = tuple(t.transpose(1, 2).contiguous() for t in inp[:3])
        nbytes = 2 * B * HKV * S * D * dtype.itemsize
        for n in names:
            if n in VARIANTS:
                cfg, s16, s1 = VARIANTS[n]
                fn = ours(cfg, s16 if B > 1 else s1, *inp)
            else:
                fn = sdpa({"sdpa-cudnn": "CUDNN_ATTENTION", "sdpa-flash": "FLASH_ATTENTION"}[n], *sd)
            try:
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
                with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(calls):
                        fn()
                    torch.cuda.synchronize()
            finally:
                launch.attn_config = default_cfg
            tot = 0.0
            rows = []
            for ev in prof.key_averages():
                us = ev.device_time_total / calls if hasattr(ev, "device_time_total") else ev.cuda_time_total / calls
                if us > 0 and ev.count >= calls:
                    rows.append((us, ev.key, ev.count // calls))
                    tot += us
            print(f"B={B:2d} S={S:6d} {n:18s} sum {tot:7.1f} us = {nbytes / tot / 1e6:5.2f} TB/s")
            for us, key, c in sorted(rows, reverse=True):
                print(f"    {us:7.1f} us x{c}  {nbytes / us / 1e6 if us else 0:5.2f} TB/s  {key[:90]}")


if __name__ == "__main__":
    main()
