"""Host time of the attention forward, layer by layer, one device call (issue 4: the Llama
layer's GPU waits for our host in the forward; scripts/profile_layer.py --gaps, session 10).

    PYTHONPATH=src python scripts/exp_host_attention.py [--calls 2000] [--old PATH]

Each row calls one layer of ``flashkernels.scaled_dot_product_attention`` with the layer
benchmark's attention (B 1, 32 / 8 heads, S 4096, D 128, bf16, causal; GQA) ``--calls`` times
with no synchronisation in between and prints the host time a call (the GPU queue absorbs the
kernels only while it is shorter than the host's work, so the shape is small: S 256). Rows run
outer to inner: the public call with and without grad, the autograd entry, the launcher
(attn_fwd_impl), its pieces (validation, backend choice, the Gluon reason, the output
allocation, the Gluon launch) and the backward (torch.autograd.grad of the output).
``--old PATH``: run the same rows in a subprocess with PATH (another checkout's src) first on
sys.path, for a before / after in one process pair.
"""
import argparse
import os
import subprocess
import sys

import torch
from exp_launch_overhead import per_call  # (scripts/ is on sys.path: this script's folder)


def rows(calls):
    import flashkernels
    from flashkernels import _backend
    from flashkernels._validate import check_qkv
    from flashkernels.ops.attention import autograd as att
    from flashkernels.ops.attention import launch

    B, HQ, HKV, S, D = 1, 32, 8, 256, 128
    dt = torch.bfloat16
    q = torch.randn(B, HQ, S, D, device="cuda", dtype=dt, requires_grad=True)
    k, v = (torch.randn(B, HKV, S, D, device="cuda", dtype=dt, requires_grad=True) for _ in range(2))
    qd, kd, vd = (t.detach() for t in (q, k, v))
    scale = D ** -0.5
    out, lse = launch.attn_fwd_impl(qd, kd, vd, None, scale, True, 0, False, False)
    gy = torch.randn_like(out)
    y = flashkernels.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    from flashkernels.ops.attention import api

    def wrap_off():
        from torch._library.triton import set_wrap_triton_enabled
        with set_wrap_triton_enabled(False):
            pass

    class _Nop(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, *rest):
            return a.view_as(a)

        @staticmethod
        def backward(ctx, g):
            return (g,) + (None,) * 18

    def api_call():
        return flashkernels.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def api_nograd():
        with torch.no_grad():
            return flashkernels.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def entry():
        return att.flash_attention(q, k, v, None, scale, True, 0, False, False)

    res = [
        ("api sdpa, grad", api_call),
        ("api sdpa, no grad", api_nograd),
        ("autograd entry flash_attention", entry),
        ("  torch.cuda.get_device_capability", lambda: torch.cuda.get_device_capability(q.device)),
        ("  set_wrap_triton_enabled(False) ctx", wrap_off),
        ("  autograd.Function, 19 args", lambda: _Nop.apply(q, k, v, *([None] * 16))),
        ("  api._allow_tf32", lambda: api._allow_tf32()),
        ("attn_fwd_impl", lambda: launch.attn_fwd_impl(qd, kd, vd, None, scale, True, 0, False, False)),
        ("  check_qkv", lambda: check_qkv(q, k, v, ("q", "k", "v"), "BHSD")),
        ("  _backend.resolve", lambda: _backend.resolve(q.device, None, dtype_ok=True, dtype=dt)),
        ("  hopper_fwd_reason", lambda: launch.hopper_fwd_reason(qd, kd, vd, None, scale, True, 0, False, -1, -1,
                                                                 0.0, None, None, None, 0)),
        ("  two torch.empty", lambda: (torch.empty((B, HQ, S, D), device="cuda", dtype=dt),
                                       torch.empty((B, HQ, S), device="cuda", dtype=torch.float32))),
        ("  launch.hopper_fwd", lambda: launch.hopper_fwd(qd, kd, vd, out, lse, scale, True)),
    ]
    res += hopper_pieces(launch, qd, kd, vd, out, lse, scale)
    res += [
        ("backward (autograd.grad)", lambda: torch.autograd.grad(y, (q, k, v), gy, retain_graph=True)),
    ]
    for name, fn in res:
        print(f"  {name:34s} {per_call(fn, calls if 'backward' not in name else calls // 4):7.1f} us a call",
              flush=True)


def hopper_pieces(launch, q, k, v, out, lse, scale):
    """launch.hopper_fwd's launch split: its 4 TMA descriptors, the JIT launch with them built,
    the compiled kernel's launcher with the same arguments (what a launch cache would call)."""
    import triton
    from flashkernels.ops.attention.kernels import fwd_hopper

    if launch.hopper_fwd_device_reason(q.device) is not None:
        return []
    B, H, S, D = q.shape
    block_m, block_n, stages = launch.hopper_fwd_config(D)
    descs = lambda: (launch._hopper_desc(q, 64), launch._hopper_desc(k, block_n), launch._hopper_desc(v, block_n),
                     launch._hopper_desc(out, 64))
    (dq, cq), (dk, ck), (dv, cv), (do, co) = descs()
    try:  # (this checkout's launcher builds flashkernels._launch.TmaDesc: kernel[grid] takes the real one)
        from flashkernels._launch import cached_launch, real_desc
    except ImportError:
        cached_launch, real_desc = None, lambda d: d
    light = (dq, dk, dv, do)
    dq, dk, dv, do = map(real_desc, light)
    args = (dq, dk, dv, do, lse, lse, lse, scale, 0.0, S, S, H, H // k.shape[1], 0, -1, -1, 0, 0, *cq, *ck, *cv, *co,
            out, out.stride(2), lse, lse)
    kw = dict(HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages, CAUSAL=True, SOFTCAP=False,
              ALIBI=False, SINK=False, WINDOW=False, num_warps=4, maxnreg=fwd_hopper.maxnreg(block_m))
    grid = (-(-S // block_m), B * H)
    kern = fwd_hopper.attn_fwd_hopper_kernel
    compiled = kern[grid](*args, **kw)
    params = kern.params[len(args):]
    tail = [kw[p.name] if p.name in kw else p.default for p in params]
    dev = torch.cuda.current_device()
    stream = triton.runtime.driver.active.get_current_stream

    def run():
        compiled.run(grid[0], grid[1], 1, stream(dev), compiled.function, compiled.packed_metadata, None, None,
                     None, *args, *tail)
    rows = [("    4 _hopper_desc", descs), ("    kernel[grid], descs built", lambda: kern[grid](*args, **kw)),
            ("    compiled.run, descs built", run)]
    if cached_launch is not None:
        largs = light + args[4:]
        rows.append(("    cached_launch, descs built", lambda: cached_launch(kern, grid, *largs, fk_traceable=False, **kw)))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--old", help="another checkout's src directory: its rows first, in a subprocess")
    ap.add_argument("--rows-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.old and not a.rows_only:
        env = dict(os.environ, PYTHONPATH=a.old)
        print(f"--- {a.old}", flush=True)
        subprocess.run([sys.executable, __file__, "--rows-only", "--calls", str(a.calls)], env=env, check=False)
        print("--- this checkout", flush=True)
    rows(a.calls)


if __name__ == "__main__":
    main()
