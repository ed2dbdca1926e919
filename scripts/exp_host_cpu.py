#!/usr/bin/env python3
"""Host time of the pure-Python pieces of an eager attention forward, on any CPU (session 24; no GPU).

    PYTHONPATH=src python scripts/exp_host_cpu.py [--calls 20000]

Best of seven rounds of ``--calls`` calls each, µs a call, at the FA3 grid's D = 128 1k shape
(B 16, S 1024, H 16, bf16, (B, S, H, D) storage):
  - check_qkv, its fast path and the full checks alone (``_validate._qkv_ok`` off);
  - hopper_fwd_layout_reason (shapes, strides, pointers) and _backend.resolve;
  - launch.hopper_fwd (causal; its plans off, then a plan's hit: launch.HOPPER_FWD_PLANS) and, of the
    first, its launch-cache hit through ``_launch.cached_launch``
    with the arguments it passes, tests/test_launch_cache.py's recorder kernel (over the Gluon
    kernel's own function) standing in for the GPU (so Triton's own C launcher, ~14% of a call on
    the H100 machine, is not in it); and the key's parts: the arguments' specialisations and the
    hash lookup.
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
    rows += launch_cache_hit(qt, kt, vt, a.calls)  # (last: it stubs the launcher's CUDA lookups)
    for name, us in rows:
        print(f"{name:52s} {us:7.2f} us")


def launch_cache_hit(qt, kt, vt, calls):
    """launch.hopper_fwd (D = 128 1k, causal) and its cached_launch hit, with the Gluon kernel
    replaced by tests/test_launch_cache.py's recorder over the kernel's own function (its real
    parameters; no compile, no Triton C launcher) and the CUDA lookups stubbed."""
    import triton
    from test_launch_cache import _Kernel
    from torch._library.triton import set_wrap_triton_enabled

    from flashkernels.ops.attention.kernels import fwd_hopper

    kernel = _Kernel(fwd_hopper.attn_fwd_hopper_kernel.fn)
    fwd_hopper.attn_fwd_hopper_kernel = kernel
    launch._sm_count = lambda index: 132  # (an H100)
    _launch._OK, _launch._JIT, _launch.real_desc = True, triton.runtime.jit.JITFunction, (lambda d: d)
    torch.cuda.current_device = lambda: 0
    torch._C._cuda_getCurrentRawStream = lambda device: 7
    seen = []
    cached = _launch.cached_launch
    launch.cached_launch = lambda *args, **kw: (seen.append((args, kw)), cached(*args, **kw))[1]
    out = torch.empty_like(qt)
    lse = torch.empty(qt.shape[:3])
    with set_wrap_triton_enabled(False):
        launch.hopper_fwd(qt, kt, vt, out, lse, 0.088, True)
        (kern, grid, *args), kw = seen[0]
        launch.cached_launch = cached
        launch.HOPPER_FWD_PLANS = False
        whole = best_us(lambda: launch.hopper_fwd(qt, kt, vt, out, lse, 0.088, True), calls)
        hit = best_us(lambda: cached(kern, grid, *args, **kw), calls)
        launch.HOPPER_FWD_PLANS = True
        hits = launch.hopper_fwd_plan_hits
        planned = best_us(lambda: launch.hopper_fwd(qt, kt, vt, out, lse, 0.088, True), calls)
        assert launch.hopper_fwd_plan_hits >= hits + 7 * calls - 1, "the plan was not used"
    assert kernel.slow_calls == 1, "every timed call should have been a hit"
    specs = best_us(lambda: tuple(map(_launch._spec, args)), calls)
    key = (0, tuple(map(_launch._spec, args)), tuple(kw.items()))
    table = {key: 1}
    lookup = best_us(lambda: table.get(key), calls)
    n = f"{len(args)} args + {len(kw)} keywords"
    return [("launch.hopper_fwd, causal (HOPPER_FWD_PLANS off)", whole), (f"  of it: cached_launch hit, {n}", hit),
            ("    of that: the arguments' _spec", specs), ("    of that: the key's hash and lookup", lookup),
            ("launch.hopper_fwd, causal, a plan's hit", planned)]


if __name__ == "__main__":
    main()
