"""Host time of one kernel launch by each route, one device call (issue 4: the Llama layer's step
is host-bound on the device machine: scripts/profile_layer.py --host read 8.0 ms a step for
flashkernels against 4.5 for eager transformers at seqlen 256, session 9).

    PYTHONPATH=src python scripts/exp_launch_overhead.py [--calls 3000] [--profile]

A trivial Triton kernel (one block adds 1 to 1024 floats; the GPU runs it in a few µs, so the
host sets the pace) launched ``--calls`` times with no synchronisation between, host time a call:
  - torch:        x.add_(1), PyTorch's C++ launch path (the eager model's ops);
  - jit:          kernel[grid](...), triton's JITFunction.run (binder, cache key, launch);
  - wrap_triton:  torch.library.wrap_triton(kernel)[grid](...) with wrap_triton off, as the
                  library's launchers call it outside torch.compile (flashkernels._eager.direct);
  - compiled:     the CompiledKernel that the first launch returned, its C launcher called with
                  the bound arguments (what a launch cache keyed on the arguments' specialisation
                  would cost); plus the current-stream lookup.
Then the library's own launchers at small shapes (host-bound there): rms_norm_fwd_impl (1 launch),
rms_norm_bwd_impl (2), and the Gluon attention forward's launcher (launch.hopper_fwd: 4 TMA
descriptors built a call) against SDPA.
"""
import argparse
import time

import torch
import triton
import triton.language as tl
from torch._library.triton import set_wrap_triton_enabled
from torch.library import wrap_triton


@triton.jit
def _add_one(X, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    m = offs < N
    tl.store(X + offs, tl.load(X + offs, mask=m) + 1.0, mask=m)


def fa3_1k_backward(D, causal, seed=0):
    """(the backward as `bench attention` times it: torch.autograd.grad over one retained graph, a callable; its
    q, k, v) at the FA3 grid's 1k shape (B 16, Hq·D 2048, bf16, (B, S, H, D) storage), on the current stream
    (scripts/exp_host_bwd.py, exp_bwd_pieces.py)."""
    import flashkernels

    torch.manual_seed(seed)
    B, S, H = 16, 1024, 2048 // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16)
    o = flashkernels.flash_attn_func(q, k, v, causal=causal)
    return (lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True)), (q, k, v)


def print_profile(fn, calls):
    """cProfile of ``calls`` calls of ``fn``: the 30 entries with the most cumulative time, then with the most own
    time (scripts/exp_host_1k.py, exp_host_bwd.py)."""
    from profile_host import profiled

    print(profiled(fn, calls, 30, ("cumulative", "tottime")), flush=True)


def per_call(fn, calls):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--profile", action="store_true", help="cProfile 300 Gluon forward launches (by own time)")
    a = ap.parse_args()
    x = torch.zeros(1024, device="cuda")
    n = x.numel()
    compiled = _add_one[(1,)](x, n, BLOCK=1024)
    compiled._init_handles()
    get_stream = triton.runtime.driver.active.get_current_stream
    dev = torch.cuda.current_device()

    def via_compiled():
        compiled.run(1, 1, 1, get_stream(dev), compiled.function, compiled.packed_metadata, None, None, None,
                     x, n, 1024)

    def via_wrap():
        with set_wrap_triton_enabled(False):
            wrap_triton(_add_one)[(1,)](x, n, BLOCK=1024)

    rows = [("torch x.add_(1)", lambda: x.add_(1)),
            ("triton jit kernel[grid]", lambda: _add_one[(1,)](x, n, BLOCK=1024)),
            ("wrap_triton (off) [grid]", via_wrap),
            ("CompiledKernel.run", via_compiled)]
    for name, fn in rows:
        print(f"  {name:36s} {per_call(fn, a.calls):7.1f} us a call", flush=True)

    from flashkernels.ops.attention import launch
    from flashkernels.ops.rms_norm import launch as rl
    h = torch.randn(256, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(4096, device="cuda", dtype=torch.bfloat16)
    y, _, rstd = rl.rms_norm_fwd_impl(h, w, None, 1e-6, 0.0, 0)
    with set_wrap_triton_enabled(False):
        print(f"  {'rms_norm_fwd_impl (1 launch)':36s} "
              f"{per_call(lambda: rl.rms_norm_fwd_impl(h, w, None, 1e-6, 0.0, 0), a.calls // 3):7.1f} us a call")
        print(f"  {'rms_norm_bwd_impl (2 launches)':36s} "
              f"{per_call(lambda: rl.rms_norm_bwd_impl(y, h, w, rstd, None, 0.0), a.calls // 3):7.1f} us a call")
    q, k, v = (torch.randn(1, 256, 8, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
    out = torch.empty_like(q)
    lse = torch.empty(1, 8, 256, device="cuda", dtype=torch.float32)
    if launch.hopper_fwd_device_reason(q.device) is None:
        print(f"  {'launch.hopper_fwd (Gluon, 4 TMA descs)':36s} "
              f"{per_call(lambda: launch.hopper_fwd(q, k, v, out, lse, 0.088, True), a.calls // 3):7.1f} us a call")
        t0 = time.perf_counter()
        for _ in range(200):
            launch._hopper_desc(q, 64)
        print(f"  {'  one _hopper_desc':36s} {(time.perf_counter() - t0) / 200 * 1e6:7.1f} us a call")
        if a.profile:  # where the Gluon launch's host time goes
            import cProfile
            import io
            import pstats
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(300):
                launch.hopper_fwd(q, k, v, out, lse, 0.088, True)
            pr.disable()
            torch.cuda.synchronize()
            buf = io.StringIO()
            pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(30)
            print(buf.getvalue())
    qs, ks, vs = (t.contiguous() for t in (q, k, v))
    print(f"  {'SDPA (default backend)':36s} "
          f"{per_call(lambda: torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True), a.calls // 3):7.1f}"
          " us a call")
    import flashkernels
    from triton.testing import do_bench
    for shape in ((1, 8, 256, 128), (16, 16, 1024, 128), (16, 32, 1024, 64)):
        qb, kb, vb = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for causal in (False, True):
            def fk():
                return flashkernels.scaled_dot_product_attention(qb, kb, vb, is_causal=causal, backend="triton")
            host = per_call(fk, 100)
            gpu = do_bench(fk, warmup=25, rep=100, return_mode="median") * 1e3
            print(f"  flashkernels sdpa {str(shape):18s} causal={int(causal)}: host {host:7.1f} us a call, "
                  f"do_bench {gpu:7.1f} us", flush=True)


if __name__ == "__main__":
    main()
