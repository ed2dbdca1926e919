"""Why the layer's do_bench median reads above its steady-state GPU timeline (issue 4).

    PYTHONPATH=src python scripts/exp_layer_timing.py

The model, input and loss of ``flashkernels bench ops --ops layer``. For eager transformers +
SDPA and the flashkernels model, in one process: do_bench medians with 100 ms and 1500 ms of
repetitions (the benchmark's), and 20 back-to-back steps timed by events around them, with and
without do_bench's L2 clear before each step; SM clock (MHz) and power (W) read by nvidia-smi
before and after each measurement. A step slower under long runs at lower clocks is the card's
power limit, not the code's.
"""
import subprocess

import torch
import triton

from flashkernels.bench import ops
from flashkernels.bench.common import do_bench_median


def smi():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        out = f"nvidia-smi: {exc}"
    return out


def back_to_back(step, n=20, clear=False):
    cache = triton.runtime.driver.active.get_empty_cache_for_benchmark()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        if clear:
            triton.runtime.driver.active.clear_cache(cache)
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def main():
    steps = ops.layer_steps()
    print("idle:", smi())
    for rnd in range(2):
        for name, step in steps.items():
            rows = []
            for label, fn in (("do_bench rep 100 ms", lambda: do_bench_median(step, warmup_ms=50, rep_ms=100)),
                              ("do_bench rep 1500 ms", lambda: do_bench_median(step, warmup_ms=200, rep_ms=1500)),
                              ("20 back to back", lambda: back_to_back(step)),
                              ("20 back to back, L2 cleared", lambda: back_to_back(step, clear=True))):
                ms = fn()
                rows.append(f"    {label:28s} {ms:7.2f} ms   after: {smi()}")
            print(f"  round {rnd} {name}:\n" + "\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
