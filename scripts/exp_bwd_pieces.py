#!/usr/bin/env python3
"""Where an eager attention backward's time goes at S = 1k (session 32; needs a GPU).

    PYTHONPATH=src:scripts python scripts/exp_bwd_pieces.py [--dims 64,128,256] [--calls 100]

For the FA3 grid's 1k shapes (B 16, Hq·D = 2048, bf16, (B, S, H, D) storage), on the default stream:
  - host: the whole backward (torch.autograd.grad over one retained graph) a call, 100 calls with no
    synchronisation, best of five rounds; and the host time inside each of the launch functions below,
    inclusive, summed over those calls (perf_counter wrappers set on the launch module, which drops the
    forward's plans: this times the backward only);
  - GPU: torch.profiler's kernel times of 20 backward calls, summed by kernel name, a call.
Host time above the GPU's is what the eager timing reads (do_bench then measures the host).
"""
import argparse
import time
from collections import defaultdict

import torch
from exp_launch_overhead import fa3_1k_backward, per_call  # (scripts/: this script's folder)

from flashkernels import _launch
from flashkernels.ops.attention import launch

WRAPPED = (  # (module, attribute) timed inclusively; nested ones count inside their callers too
    (launch, "attn_bwd_impl"), (launch, "hopper_bwd_reason"), (launch, "attn_bwd_delta"),
    (launch, "attn_bwd_hopper_impl"), (launch, "cached_launch"), (launch, "_grad_desc"), (launch, "_hopper_desc"),
    (launch, "_rows_desc"), (launch, "_empty_like_layout"), (_launch, "launch_entry"), (_launch, "_key"),
)


def wrap(times):
    for mod, name in WRAPPED:
        fn = getattr(mod, name)

        def timed(*args, _fn=fn, _name=name, **kwargs):
            t0 = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                times[_name] += time.perf_counter() - t0
        setattr(mod, name, timed)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="64,128,256")
    ap.add_argument("--calls", type=int, default=100)
    a = ap.parse_args()
    times, wrapped = defaultdict(float), False
    for D in (int(d) for d in a.dims.split(",")):
        for causal in (False, True):
            f, _ = fa3_1k_backward(D, causal)
            hs = min(per_call(f, a.calls) for _ in range(5))
            print(f"D={D} causal={int(causal)}: backward host {hs:.1f} us a call", flush=True)
            if not wrapped:
                wrap(times)
                wrapped = True
            times.clear()
            per_call(f, a.calls)  # (20 warm-up calls + a.calls)
            n = a.calls + 20
            print("  host inside: " + ", ".join(f"{k} {v / n * 1e6:.1f}" for k, v in times.items()) + " us a call")
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(20):
                    f()
                torch.cuda.synchronize()
            kern = defaultdict(float)
            for e in prof.events():
                if e.device_type == torch.autograd.DeviceType.CUDA:
                    kern[e.name[:60]] += getattr(e, "device_time", 0.0) / 20
            total = sum(kern.values())
            print(f"  GPU kernels {total:.1f} us a call: " + "; ".join(
                f"{name} {us:.1f}" for name, us in sorted(kern.items(), key=lambda x: -x[1])), flush=True)


if __name__ == "__main__":
    main()
