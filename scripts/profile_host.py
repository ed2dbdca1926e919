"""Host (CPU) time of each op of the Llama layer benchmark, forward and backward, one device call.

    PYTHONPATH=src python3 scripts/profile_host.py [--calls 200] [--rows 25] [--ops rms,attn,...]

Why: the layer step of ``flashkernels bench ops`` is host-bound on the device machine (its host
enqueues a step in about as long as the GPU runs it; scripts/profile_layer.py --host), so every
microsecond of Python per call is wall time. For each op at the layer's shapes (bf16, 4096 tokens,
hidden 4096, 32/8 heads of 128, intermediate 14336): the CPU time a call (``--calls`` calls with
no synchronisation in between; the GPU queue absorbs them), forward with grad on and backward
(``torch.autograd.grad`` with ``retain_graph``; an ``x * 1`` backward gives the autograd engine's
own share), and the same through the peers the layer compares with (torch ops / SDPA); then,
per op, cProfile's functions by own time over those calls.
"""
import argparse
import cProfile
import io
import pstats
import time

import torch
import torch.nn.functional as F

import flashkernels

T, HID, HQ, HKV, D, INTER = 4096, 4096, 32, 8, 128, 14336


def cases():
    dt = torch.bfloat16
    dev = "cuda"
    x = torch.randn(1, T, HID, device=dev, dtype=dt, requires_grad=True)
    w = torch.randn(HID, device=dev, dtype=dt, requires_grad=True)
    q = torch.randn(1, HQ, T, D, device=dev, dtype=dt, requires_grad=True)
    k = torch.randn(1, HKV, T, D, device=dev, dtype=dt, requires_grad=True)
    v = torch.randn(1, HKV, T, D, device=dev, dtype=dt, requires_grad=True)
    cos = torch.randn(1, T, D, device=dev, dtype=dt)
    sin = torch.randn(1, T, D, device=dev, dtype=dt)
    g = torch.randn(1, T, INTER, device=dev, dtype=dt, requires_grad=True)
    u = torch.randn(1, T, INTER, device=dev, dtype=dt, requires_grad=True)

    def torch_rms(x, w):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return w * h.to(x.dtype)

    def torch_rope(q, k, cos, sin):
        def rot(t):
            a, b = t.chunk(2, -1)
            return torch.cat((-b, a), -1)
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)
        return q * c + rot(q) * s, k * c + rot(k) * s

    return {
        "autograd baseline (x * 1)": (lambda: x * 1, (x,)),
        "rms_norm": (lambda: flashkernels.rms_norm(x, w, 1e-6), (x, w)),
        "rms_norm torch": (lambda: torch_rms(x, w), (x, w)),
        "sdpa (gqa causal)": (lambda: flashkernels.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                                enable_gqa=True), (q, k, v)),
        "sdpa torch": (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), (q, k, v)),
        "rope (hf)": (lambda: flashkernels.apply_rotary_pos_emb(q, k, cos, sin), (q, k)),
        "rope torch": (lambda: torch_rope(q, k, cos, sin), (q, k)),
        "swiglu": (lambda: flashkernels.swiglu(g, u), (g, u)),
        "swiglu torch": (lambda: F.silu(g) * u, (g, u)),
    }


def timed(fn, calls):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    us = (time.perf_counter() - t0) / calls * 1e6
    torch.cuda.synchronize()
    return us


def profiled(fn, calls, rows, sorts=("tottime",)):
    """cProfile of ``calls`` calls of ``fn`` as text: the ``rows`` entries first by each of ``sorts``
    (pstats' keys)."""
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        fn()
    pr.disable()
    torch.cuda.synchronize()
    buf = io.StringIO()
    st = pstats.Stats(pr, stream=buf)
    for key in sorts:
        st.sort_stats(key).print_stats(rows)
    return buf.getvalue()


def pieces(calls):
    """The RMSNorm backward's host time split into its layers: the raw launches, the launcher,
    the Function's backward without the engine, and the whole autograd.grad."""
    from torch._library.triton import set_wrap_triton_enabled

    from flashkernels.ops.rms_norm import autograd as rn_autograd
    from flashkernels.ops.rms_norm import launch as rn_launch

    M, N = T, HID
    x = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn_like(x)
    with set_wrap_triton_enabled(False):
        _, _, rstd = rn_launch.rms_norm_fwd_impl(x, w, None, 1e-6, 0.0, 0)

    class Ctx:
        saved_tensors = (x, w, rstd)
        has_residual = False
        offset = 0.0

    def launcher():
        with set_wrap_triton_enabled(False):
            rn_launch.rms_norm_bwd_impl(dy, x, w, rstd, None, 0.0)

    def backward():
        with set_wrap_triton_enabled(False):
            rn_autograd._backward(Ctx, dy, None, None, rn_launch.rms_norm_bwd_impl)

    def empties():
        torch.empty((M, N), dtype=x.dtype, device=x.device)
        torch.empty((0, N), dtype=x.dtype, device=x.device)
        torch.empty((264, N), dtype=torch.float32, device=x.device)
        torch.empty((N,), dtype=x.dtype, device=x.device)

    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = flashkernels.rms_norm(xg, wg)
    gy = torch.randn_like(y)
    rows = {"4 torch.empty": empties, "rms bwd launcher (2 launches)": launcher, "rms _backward (no engine)": backward,
            "rms autograd.grad": lambda: torch.autograd.grad(y, (xg, wg), gy, retain_graph=True)}
    for name, fn in rows.items():
        print(f"  {name:32s} {timed(fn, calls):7.1f} us a call", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--profile", default="rms_norm,sdpa (gqa causal),rope (hf),swiglu",
                    help="comma-separated case names to cProfile (forward and backward)")
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; host us a call", flush=True)
    pieces(args.calls)
    cs = cases()
    profs = []
    for name, (fwd, leaves) in cs.items():
        out = fwd()
        outs = out if isinstance(out, tuple) else (out,)
        grads = tuple(torch.randn_like(o) for o in outs)

        def bwd():
            torch.autograd.grad(outs, leaves, grads, retain_graph=True)

        with torch.no_grad():
            t_ng = timed(fwd, args.calls)
        t_f = timed(fwd, args.calls)
        t_b = timed(bwd, args.calls)
        print(f"  {name:28s} fwd no-grad {t_ng:7.1f}  fwd grad {t_f:7.1f}  bwd {t_b:7.1f}", flush=True)
        if name in args.profile.split(","):
            profs.append((f"{name} fwd (grad)", profiled(fwd, args.calls, args.rows)))
            profs.append((f"{name} bwd", profiled(bwd, args.calls, args.rows)))
    for tag, text in profs:
        print(f"\n===== cProfile {tag}, {args.calls} calls, by own time\n{text[-6000:]}", flush=True)


if __name__ == "__main__":
    main()
