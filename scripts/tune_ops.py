"""Sweep the launch knobs of the memory-bound kernels on the GPU (issue 4), one device call.

    PYTHONPATH=src python3 scripts/tune_ops.py [--ops rms_bwd,rms_fwd,rope]

Shapes of ``flashkernels bench ops`` (bf16): RMSNorm x (16384, 4096), RoPE x (4, 4096, 32, 128)
with a (4096, 64) half-width table. The launchers are called directly (wrap_triton off, as the
eager path does), so the figures are kernel time plus the launcher's own host code, not the
autograd wrapper's. Bytes as in ``flashkernels bench ops``; GB/s = bytes / do_bench median (L2
flushed). Each candidate's output is compared with the default's before it is timed (to 1e-2:
the knobs change the order of the sums, not the formula).

Knobs: RMSNorm ``num_warps`` (launch.block_config; the backward's 16-warp floor is lifted while
a count is forced), backward programs per SM (launch.bwd_programs), the backward's next row
loaded ahead (launch.BWD_PREFETCH, 0 / 1) and its row order (launch.BWD_STRIDED, 0 blocks / 1
strided); ``--dh`` times the backward with the gradient of h too (the fused residual norm's);
RoPE elements per program (launch.ELEMS) and ``num_warps`` (launch.NUM_WARPS); op ``rms_dw``:
the backward's dW reduce tile (launch.DW_REDUCE_ROWS / _ELEMS). The copy ceiling
(``dst.copy_(src)`` of the same bytes) is printed first, and an add (read 2, write 1: the RMSNorm
backward's mix). The ``[regs]`` column of the backward rows names the variant Triton compiled
last: on a launch-cache hit that is another row's.
"""
import argparse
import itertools

import torch
from torch._library.triton import set_wrap_triton_enabled

from flashkernels.bench.common import do_bench_median, warm_gpu


def _gbs(nbytes, ms):
    return nbytes / ms / 1e6


def rms(args, backward):
    from flashkernels.ops.rms_norm import launch

    M, N = 16384, 4096
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(M, N, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.randn(N, device="cuda", dtype=torch.bfloat16, generator=g)
    dy = torch.randn(M, N, device="cuda", dtype=torch.bfloat16, generator=g)
    e = 2
    _, _, rstd = launch.rms_norm_fwd_impl(x, w, None, 1e-6, 0.0, 0)
    if backward:
        dh = torch.randn(M, N, device="cuda", dtype=torch.bfloat16, generator=g) if args.dh else None
        # read x, dy (, dh), w, rstd; write dx, dw
        nbytes = e * ((4 if args.dh else 3) * M * N + 2 * N) + 4 * M
        run = lambda: launch.rms_norm_bwd_impl(dy, x, w, rstd, dh, 0.0)  # noqa: E731
    else:
        nbytes = e * (2 * M * N + N) + 4 * M
        run = lambda: launch.rms_norm_fwd_impl(x, w, None, 1e-6, 0.0, 0)  # noqa: E731
    ref = run()
    cfg0, prog0 = launch.block_config, launch.bwd_programs
    warps = [int(v) for v in args.warps.split(",")]
    per_sm = [int(v) for v in args.per_sm.split(",")] if backward else [0]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    base = None
    prefetch = [int(v) for v in args.prefetch.split(",")] if backward else [None]
    strided = [bool(int(v)) for v in args.strided.split(",")] if backward else [None]
    cands = [(None, None, None, None)] + list(itertools.product(warps, per_sm if backward else [None], prefetch,
                                                                strided))
    prefetch0, strided0 = launch.BWD_PREFETCH, launch.BWD_STRIDED
    min_warps0 = launch.BWD_MIN_WARPS_WIDE
    kernel = launch.rms_norm_bwd_kernel if backward else launch.rms_norm_fwd_kernel
    for nw, ps, pf, st in cands:
        try:
            if st is not None:
                launch.BWD_STRIDED = st
            if pf is not None:
                launch.BWD_PREFETCH = pf
            if nw:
                launch.block_config = lambda n, d, nw=nw: (cfg0(n, d)[0], cfg0(n, d)[1], nw)
                launch.BWD_MIN_WARPS_WIDE = 0  # the warps asked for, not the backward's floor
            if ps:
                launch.bwd_programs = lambda m, d, ps=ps: (-(-m // -(-m // min(m, ps * sms))),
                                                           -(-m // min(m, ps * sms)))
            out = run()
            for a, b in zip(out, ref):  # sums in another order (warps, dW's split): not bitwise
                if a.numel():
                    torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
            ms = do_bench_median(run)
        except Exception as ex:  # noqa: BLE001 - a sweep: report and go on
            print(f"  warps {nw or 'default'} programs/SM {ps or 'default'} prefetch {pf} strided {st}: FAILED "
                  f"{str(ex).splitlines()[0][:160]}")
            continue
        finally:
            launch.block_config, launch.bwd_programs = cfg0, prog0
            launch.BWD_PREFETCH, launch.BWD_STRIDED = prefetch0, strided0
            launch.BWD_MIN_WARPS_WIDE = min_warps0
        base = base or ms
        tag = (f" prefetch {'default' if pf is None else pf:>7} strided {'default' if st is None else int(st):>7}"
               f" [{_regs(kernel)}]" if backward else "")
        print(f"  rms_norm {'bwd' if backward else 'fwd'} warps {nw or 'default':>7} programs/SM "
              f"{ps or ('default' if backward else '-'):>7}{tag}: {ms * 1e3:7.1f} us "
              f"{_gbs(nbytes, ms):6.0f} GB/s  ({base / ms:.2f}x default)", flush=True)


def _regs(kernel):
    """Registers / spill bytes a thread of ``kernel``'s most recently compiled variant uses on this
    GPU (Triton's own compile, specialised as launched: the compile-only reports differ)."""
    try:
        compiled = list(kernel.device_caches[torch.cuda.current_device()][0].values())[-1]
        compiled._init_handles()
        return f"{compiled.n_regs} regs, {compiled.n_spills} B spill"
    except Exception as ex:  # noqa: BLE001 - diagnostics only
        return f"regs n/a: {type(ex).__name__}"


def rms_dw_reduce(args):
    """The backward (main kernel + dW reduce) at each (DW_REDUCE_ROWS, DW_REDUCE_ELEMS); 32 x 2048
    is the earlier fixed 32-row x 64-column tile."""
    from flashkernels.ops.rms_norm import launch

    M, N = 16384, 4096
    g = torch.Generator(device="cuda").manual_seed(0)
    x, dy = (torch.randn(M, N, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    w = torch.randn(N, device="cuda", dtype=torch.bfloat16, generator=g)
    _, _, rstd = launch.rms_norm_fwd_impl(x, w, None, 1e-6, 0.0, 0)
    nbytes = 2 * (3 * M * N + 2 * N) + 4 * M
    run = lambda: launch.rms_norm_bwd_impl(dy, x, w, rstd, None, 0.0)  # noqa: E731
    ref = run()[1]
    rows0, elems0 = launch.DW_REDUCE_ROWS, launch.DW_REDUCE_ELEMS
    for spec in args.dw_reduce.split(","):
        rows, elems = (int(v) for v in spec.split("x"))
        launch.DW_REDUCE_ROWS, launch.DW_REDUCE_ELEMS = rows, elems
        try:
            torch.testing.assert_close(run()[1], ref, rtol=1e-2, atol=1e-2)
            ms = do_bench_median(run)
        finally:
            launch.DW_REDUCE_ROWS, launch.DW_REDUCE_ELEMS = rows0, elems0
        print(f"  rms_norm bwd, dW reduce at most {rows} rows x {elems} elements a program: {ms * 1e3:7.1f} us "
              f"{_gbs(nbytes, ms):6.0f} GB/s", flush=True)


def rope(args):
    from flashkernels.ops.rope import launch

    B, S, H, D = 4, 4096, 32, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, generator=g)
    cos = torch.randn(1, S, D // 2, device="cuda", dtype=torch.bfloat16, generator=g)
    sin = torch.randn(1, S, D // 2, device="cuda", dtype=torch.bfloat16, generator=g)
    nbytes = 2 * 2 * x.numel() + 2 * 2 * cos.numel()
    run = lambda: launch.rope_impl(x, cos, sin, None, 0, 0, 1, False, False, False)  # noqa: E731
    ref = run()
    e0, w0 = launch.ELEMS, launch.NUM_WARPS
    base = None
    for elems, nw in [(e0, w0)] + list(itertools.product([int(v) for v in args.elems.split(",")],
                                                          [int(v) for v in args.warps.split(",")])):
        launch.ELEMS, launch.NUM_WARPS = elems, nw
        try:
            torch.testing.assert_close(run(), ref, rtol=0, atol=0)
            ms = do_bench_median(run)
        except Exception as ex:  # noqa: BLE001
            print(f"  rope elems {elems} warps {nw}: FAILED {str(ex).splitlines()[0][:160]}")
            continue
        finally:
            launch.ELEMS, launch.NUM_WARPS = e0, w0
        base = base or ms
        print(f"  rope fwd elems {elems:>5} warps {nw:>2}: {ms * 1e3:7.1f} us {_gbs(nbytes, ms):6.0f} GB/s "
              f"({base / ms:.2f}x default)", flush=True)


def host(args):
    """Host time a call (CPU clock over 300 calls, no synchronisation in between: the GPU queue
    absorbs them) of the public calls, and their do_bench medians; then the same after importing
    liger_kernel and transformers (flashkernels bench ops does both; its RMSNorm forward read
    0.194 ms in such a process on 2026-11-25 where the kernel takes 0.095)."""
    import importlib
    import time

    import flashkernels

    M, N = 16384, 4096
    x = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, device="cuda", dtype=torch.bfloat16)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    xr = torch.randn(4, 4096, 32, 128, device="cuda", dtype=torch.bfloat16)
    cos = torch.randn(4096, 64, device="cuda", dtype=torch.bfloat16)
    y = flashkernels.rms_norm(xg, wg)
    gy = torch.randn_like(y)
    from flashkernels.ops.rms_norm import autograd as rn_autograd
    from flashkernels.ops.rms_norm import launch as rn_launch
    from flashkernels.ops.rms_norm.kernels.rms_norm import rms_norm_fwd_kernel

    y0, rstd0 = torch.empty_like(x), torch.empty(M, device="cuda", dtype=torch.float32)

    def raw():  # the Triton launch alone: the kernel's own host cost
        rms_norm_fwd_kernel[(M,)](x, x, w, y0, y0, rstd0, x.stride(0), x.stride(0), y0.stride(0), 0, N, 1e-6, 0.0,
                                  HAS_WEIGHT=True, HAS_RESIDUAL=False, MODE=0, BLOCK=4096, SINGLE=True, num_warps=8)

    def impl():
        with set_wrap_triton_enabled(False):
            rn_launch.rms_norm_fwd_impl(x, w, None, 1e-6, 0.0, 0)

    calls = {
        "rms_norm raw launch": raw,
        "rms_norm launcher": impl,
        "rms_norm_triton (eager)": lambda: rn_autograd.rms_norm_triton(x, w, None, 1e-6, 0.0, 0),
        "rms_norm fwd": lambda: flashkernels.rms_norm(x, w),
        "rms_norm fwd (grad)": lambda: flashkernels.rms_norm(xg, wg),
        "rms_norm bwd": lambda: torch.autograd.grad(y, (xg, wg), gy, retain_graph=True),
        "rope fwd": lambda: flashkernels.apply_rotary_emb(xr, cos, cos),
        "empty launch": lambda: torch.empty(1, device="cuda").zero_(),
    }

    def report(tag):
        for name, fn in calls.items():
            fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(300):
                fn()
            host_us = (time.perf_counter() - t0) / 300 * 1e6
            torch.cuda.synchronize()
            print(f"  host [{tag}] {name:22s} {host_us:7.1f} us a call on the CPU, do_bench "
                  f"{do_bench_median(fn) * 1e3:7.1f} us", flush=True)

    report("plain")
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(300):
        flashkernels.rms_norm(x, w)
    prof.disable()
    torch.cuda.synchronize()
    print("  cProfile of 300 public rms_norm calls (no grad), by own time:")
    pstats.Stats(prof).sort_stats("tottime").print_stats(22)
    for mod in ("liger_kernel.transformers", "transformers"):
        try:
            importlib.import_module(mod)
        except Exception as ex:  # noqa: BLE001
            print(f"  import {mod}: {type(ex).__name__}: {ex}")
    report("after liger + transformers imports")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default="rms_bwd,rms_fwd,rope,host")
    ap.add_argument("--warps", default="4,8,16")
    ap.add_argument("--per-sm", default="1,2,4,8,16")
    ap.add_argument("--dh", action="store_true",
                    help="RMSNorm backward with the gradient of h too (the fused residual norm's backward)")
    ap.add_argument("--strided", default="0,1", help="RMSNorm backward: rows p, p + P, ... a program (1) or blocks (0)")
    ap.add_argument("--prefetch", default="0,1", help="the RMSNorm backward's rows loaded ahead (0 or 1)")
    ap.add_argument("--elems", default="1024,2048,4096,8192")
    ap.add_argument("--dw-reduce", default="32x2048,256x4096,512x4096,1024x8192,1024x16384",
                    help="(DW_REDUCE_ROWS x DW_REDUCE_ELEMS) candidates of the dW reduce (op rms_dw)")
    args = ap.parse_args()
    warm_gpu()
    with set_wrap_triton_enabled(False):
        for n in (16384 * 4096, 4 * 4096 * 32 * 128):
            src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
            dst = torch.empty_like(src)
            ms = do_bench_median(lambda: dst.copy_(src))
            print(f"copy {n} bf16: {ms * 1e3:.1f} us {_gbs(4 * n, ms):.0f} GB/s", flush=True)
            other = torch.randn_like(src)
            ms = do_bench_median(lambda other=other: torch.add(src, other, out=dst))
            print(f"add  {n} bf16 (read 2, write 1): {ms * 1e3:.1f} us {_gbs(6 * n, ms):.0f} GB/s", flush=True)
        ops = args.ops.split(",")
        if "rms_bwd" in ops:
            rms(args, True)
        if "rms_dw" in ops:
            rms_dw_reduce(args)
        if "rms_fwd" in ops:
            rms(args, False)
        if "rope" in ops:
            rope(args)
    if "host" in ops:  # the public calls, wrap_triton as they set it themselves
        host(args)


if __name__ == "__main__":
    main()
