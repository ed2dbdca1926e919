#!/usr/bin/env python3
"""Host time of the pure-Python pieces of an eager attention forward, on any CPU (session 24; no GPU).

    PYTHONPATH=src python scripts/exp_host_cpu.py [--calls 20000]

Best of seven rounds of ``--calls`` calls each, µs a call, at the FA3 grid's D = 128 1k shape
(B 16, S 1024, H 16, bf16, (B, S, H, D) storage):
  - check_qkv, its fast path and the full checks alone (``_validate._qkv_ok`` off);
  - hopper_fwd_layout_reason (shapes, strides, pointers) and _backend.resolve;
  - a launch-cache hit of the Gluon forward's argument list (4 TMA descriptors, 30 more arguments,
    15 keywords) through ``_launch.cached_launch``, with tests/test_launch_cache.py's recorder
    kernel standing in for the GPU (so Triton's own C launcher, ~14% of a call on the H100 machine,
    is not in it), and the key's parts: the argument specialisations and the hash lookup.
The device machine's CPU reads these pieces at other absolute values; scripts/exp_host_1k.py times
whole calls there.
"""
import argparse
import os
import sys
import timeit

import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # (a CPU: kernels, if any ran, interpreted)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from flashkernels import _backend, _launch, _validate  # noqa: E402
from flashkernels.ops.attention import launch  # noqa: E402


def best_us(fn, calls):
    return min(timeit.repeat(fn, number=calls, repeat=7)) / calls * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000)
    a = ap.parse_args()
    B, S, H, D = 16, 1024, 16, 128
    q, k, v = (torch.empty(B, S, H, D, dtype=torch.bfloat16) for _ in range(3))
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    rows = []
    rows.append(("check_qkv", best_us(lambda: _validate.check_qkv(q, k, v, ("q", "k", "v"), "BSHD"), a.calls)))
    fast = _validate._qkv_ok
    _validate._qkv_ok = lambda *args: False
    try:
        rows.append(("check_qkv, full checks", best_us(
            lambda: _validate.check_qkv(q, k, v, ("q", "k", "v"), "BSHD"), a.calls)))
    finally:
        _validate._qkv_ok = fast
    rows.append(("hopper_fwd_layout_reason", best_us(lambda: launch.hopper_fwd_layout_reason(
        qt, kt, vt, None, 0.088, True, 0, True, -1, -1, 0.0, None, None, None), a.calls)))
    rows.append(("_backend.resolve", best_us(lambda: _backend.resolve(q.device, None, dtype=q.dtype), a.calls)))
    rows += launch_cache_hit(a.calls)
    for name, us in rows:
        print(f"{name:44s} {us:7.2f} us")


def launch_cache_hit(calls):
    """cached_launch's hit at the Gluon forward's arguments, on a recorder kernel."""
    import triton
    import triton.language as tl
    from test_launch_cache import _Kernel
    from torch._library.triton import set_wrap_triton_enabled

    def body(d0, d1, d2, d3, lse, alibi, sink, scale, softcap, S, Sk, H, G, off, wl, wr, as0, as1,
             a0, a1, a2, b0, b1, b2, c0, c1, c2, e0, e1, e2, out, os_, cq, ck, n_bh=0,
             HEAD_DIM: tl.constexpr = 0, BLOCK_M: tl.constexpr = 0, BLOCK_N: tl.constexpr = 0,
             STAGES: tl.constexpr = 0, CAUSAL: tl.constexpr = 0, SOFTCAP: tl.constexpr = 0,
             ALIBI: tl.constexpr = 0, SINK: tl.constexpr = 0, WINDOW: tl.constexpr = 0,
             PERSISTENT: tl.constexpr = 0, CHAIN: tl.constexpr = 0):
        pass

    kernel = _Kernel(body)
    saved = (_launch._OK, _launch._JIT, _launch.real_desc, torch.cuda.current_device,
             getattr(torch._C, "_cuda_getCurrentRawStream", None))
    _launch._OK, _launch._JIT, _launch.real_desc = True, triton.runtime.jit.JITFunction, (lambda d: d)
    torch.cuda.current_device = lambda: 0
    torch._C._cuda_getCurrentRawStream = lambda device: 7
    try:
        base = torch.empty(16 * 1024 * 2048, dtype=torch.bfloat16)
        lse = torch.empty(16 * 16 * 1024)
        descs = [_launch.TmaDesc(base, [16384, 2048], [2048, 1], [rows, 128],
                                 launch._hopper_smem_layout(rows, torch.bfloat16, 128))
                 for rows in (64, 128, 128, 64)]
        args = (*descs, lse, lse, lse, 0.088, 0.0, 1024, 1024, 16, 1, 0, -1, -1, 0, 0, *(1024, 16, 0) * 4, base,
                2048, lse, lse)
        kw = dict(HEAD_DIM=128, BLOCK_M=128, BLOCK_N=128, STAGES=2, CAUSAL=True, SOFTCAP=0, ALIBI=False,
                  SINK=False, WINDOW=False, num_warps=4, maxnreg=168, fk_traceable=False, PERSISTENT=True,
                  n_bh=256, CHAIN=True)
        with set_wrap_triton_enabled(False):
            _launch.cached_launch(kernel, (132,), *args, **kw)
            hit = best_us(lambda: _launch.cached_launch(kernel, (132,), *args, **kw), calls)
            assert kernel.slow_calls == 1, "every timed call should have been a hit"
        specs = best_us(lambda: tuple(map(_launch._spec, args)), calls)
        key = (0, tuple(map(_launch._spec, args)), tuple(kw.items()))
        table = {key: 1}
        lookup = best_us(lambda: table.get(key), calls)
    finally:
        (_launch._OK, _launch._JIT, _launch.real_desc, torch.cuda.current_device) = saved[:4]
        if saved[4] is not None:
            torch._C._cuda_getCurrentRawStream = saved[4]
    return [("cached_launch hit, 34 args + 15 keywords", hit), ("  of it: the arguments' _spec", specs),
            ("  of it: the key's hash and lookup", lookup)]


if __name__ == "__main__":
    main()
