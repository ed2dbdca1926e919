"""Where the Llama layer's time goes (issue 4's 1.3x goal), one device call.

    PYTHONPATH=src python3 scripts/profile_layer.py [--rows 25]

The model, input and loss of ``flashkernels bench ops``' llama_layer (bf16, 1 layer, hidden 4096,
heads 32/8, intermediate 14336, seqlen 4096, training), eager transformers with SDPA and the same
weights after ``flashkernels.integrations.transformers.apply``. For each: three forward +
backward steps under ``torch.profiler`` (after a warm-up step), then the CUDA kernels by total
GPU time (per step), the summed kernel time per step, and the wall time per step: their
difference is time the GPU waited for the host.
"""
import argparse
import copy
import time

import torch
from torch.profiler import ProfilerActivity, profile

from flashkernels.bench import ops
from flashkernels.integrations import transformers as fk_hf


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    fk_hf._import_transformers()
    from transformers import LlamaConfig, LlamaModel

    eager, x, proj = ops.layer_setup(LlamaConfig, LlamaModel)
    steps = 3
    for name, model in (("transformers_sdpa", eager),
                        ("flashkernels", fk_hf.apply(copy.deepcopy(eager), backend="triton"))):
        _, step = ops.layer_fns(model, x, proj)
        step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / steps * 1e3
        events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        events.sort(key=lambda e: e.device_time_total, reverse=True)
        total = sum(e.device_time_total for e in events) / steps / 1e3
        print(f"\n{name}: wall {wall:.2f} ms a step (profiled), kernels {total:.2f} ms a step")
        print(f"  {'ms/step':>8s} {'calls':>6s}  kernel")
        for e in events[:args.rows]:
            print(f"  {e.device_time_total / steps / 1e3:8.3f} {e.count // steps:6d}  {e.key[:110]}")
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
