"""A/B of the Gluon forward with its features (plain, softcap, ALiBi): an older copy of
kernels/fwd_hopper.py against the working tree's, in one process, in interleaved rounds.

    git show REV:src/flashkernels/ops/attention/kernels/fwd_hopper.py > /tmp/fwd_hopper_old.py
    PYTHONPATH=src python scripts/ab_features_fwd.py /tmp/fwd_hopper_old.py

Shape: `flashkernels bench features`' (B=4 S=4096 H=16 D=128 bf16), causal and not, (B, H, S, D)
storage, through launch.attn_fwd_impl with launch.fwd_hopper switched between the two modules.
First the outputs of old and new (max |diff|), then 4 rounds (the order of old / new alternating)
of triton.testing.do_bench medians (warmup 25 ms, rep 100 ms): the median of the rounds, each
variant over its own kernel's plain time, and the rounds' min-max. Needs a Hopper GPU.
"""
import importlib.util
import math
import statistics
import sys

import torch
from triton.testing import do_bench

from flashkernels.ops.attention import launch
from flashkernels.ops.attention.kernels import fwd_hopper as new

ROUNDS = 4


def main(old_path: str) -> None:
    spec = importlib.util.spec_from_file_location("flashkernels.ops.attention.kernels.fwd_hopper_old", old_path)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    kernels = {"old": old, "new": new}
    B, S, H, D = 4, 4096, 16, 128
    q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)], device="cuda")
    variants = {"plain": {}, "softcap": {"softcap": 30.0}, "alibi": {"alibi_slopes": slopes}}

    def call(causal, kw):
        return launch.attn_fwd_impl(q, k, v, None, 1 / math.sqrt(D), causal, 0, False, False, **kw)

    for causal in (False, True):
        for name, kw in variants.items():
            outs = []
            for mod in kernels.values():
                launch.fwd_hopper = mod
                outs.append(call(causal, kw)[0].float())
            print(f"causal={causal} {name}: old vs new max |diff| {(outs[0] - outs[1]).abs().max().item():.3e}",
                  flush=True)
    t = {}
    for rnd in range(ROUNDS):
        for causal in (False, True):
            for name, kw in variants.items():
                for tag in ("old", "new") if rnd % 2 == 0 else ("new", "old"):
                    launch.fwd_hopper = kernels[tag]
                    ms = do_bench(lambda c=causal, w=kw: call(c, w), warmup=25, rep=100, return_mode="median")
                    t.setdefault((causal, name, tag), []).append(ms)
    launch.fwd_hopper = new
    print(f"causal variant  old ms  new ms  old/plain_old  new/plain_new  (median of {ROUNDS} rounds; min-max old, new)")
    for causal in (False, True):
        for name in variants:
            mo, mn = (statistics.median(t[(causal, name, x)]) for x in ("old", "new"))
            po, pn = (statistics.median(t[(causal, "plain", x)]) for x in ("old", "new"))
            span = " ".join(f"{min(t[(causal, name, x)]):.4f}-{max(t[(causal, name, x)]):.4f}" for x in ("old", "new"))
            print(f"{int(causal):6d} {name:8s} {mo:7.4f} {mn:7.4f} {mo / po:13.3f} {mn / pn:14.3f}   {span}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".lead/old/fwd_hopper_old.py")
