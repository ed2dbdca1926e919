"""Eager decode latency (``flash_attn_with_kvcache``, B = 1, bf16, Hq 32 / Hkv 8, D 128) with the
launch cache on and off, alternating in one process (session 10): at short caches a decode step's
kernels take a few µs and the host's launch path sets the pace.

    PYTHONPATH=src python scripts/exp_decode_launch_cache.py
"""
import os

import torch
from triton.testing import do_bench

import flashkernels
from flashkernels._launch import ENV_VAR


def main():
    dev, dt = "cuda", torch.bfloat16
    for cache in (1024, 4096, 32768):
        kc = torch.randn(1, cache, 8, 128, device=dev, dtype=dt)
        vc = torch.randn_like(kc)
        q = torch.randn(1, 1, 32, 128, device=dev, dtype=dt)
        lens = torch.full((1,), cache, dtype=torch.int32, device=dev)

        def step():
            return flashkernels.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens)

        step()
        res = {"on": [], "off": []}
        for _ in range(3):
            for mode in ("on", "off"):
                if mode == "off":
                    os.environ[ENV_VAR] = "0"
                else:
                    os.environ.pop(ENV_VAR, None)
                res[mode].append(do_bench(step, warmup=25, rep=200, return_mode="median") * 1e3)
        os.environ.pop(ENV_VAR, None)
        on, off = (", ".join(f"{t:.1f}" for t in sorted(res[m])) for m in ("on", "off"))
        print(f"cache {cache:6d}: us a call (do_bench medians, 3 rounds): launch cache on {on}; off {off}",
              flush=True)


if __name__ == "__main__":
    main()
