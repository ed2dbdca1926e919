"""Where the Llama layer's time goes (issue 4's 1.3x goal), one device call.

    PYTHONPATH=src python3 scripts/profile_layer.py [--rows 25]
    PYTHONPATH=src python3 scripts/profile_layer.py --host [--rows 25]

The model, input and loss of ``flashkernels bench ops``' llama_layer (bf16, 1 layer, hidden 4096,
heads 32/8, intermediate 14336, seqlen 4096, training), eager transformers with SDPA and the same
weights after ``flashkernels.integrations.transformers.apply``. For each: three forward +
backward steps under ``torch.profiler`` (after a warm-up step), then the CUDA kernels by total
GPU time (per step), the summed kernel time per step, and the wall time per step: their
difference is time the GPU waited for the host.

``--gaps``: one profiled step of each model as a GPU timeline: every kernel in launch order with
the idle time before it (the GPU waiting for the host to launch it), then the idle time summed by
the kernel waited for; the profiler's own host cost makes the gaps an upper bound.
``--gaps --steady``: five steps back to back as do_bench runs them (the L2 cleared before each,
no synchronisation between), the timeline of the fourth: where the GPU still waits once the host
may run ahead.

``--host``: where the host's time goes instead. For each model: the host time to enqueue one
step (no sync inside the timed steps) and the wall time per step, at seqlen 4096 and at seqlen
256 (where the GPU work is small, so the wall time is the host's), and the CPU ops by self time
per step under ``torch.profiler`` (CPU only).
"""
import argparse
import copy
import cProfile
import io
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile

from flashkernels.bench import ops
from flashkernels.integrations import transformers as fk_hf


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--batch", type=int, default=1, help="sequences in the batch (bench ops --layer-batch)")
    ap.add_argument("--host", action="store_true", help="host time per step instead of kernel time")
    ap.add_argument("--gaps", action="store_true", help="the GPU's idle gaps in one step, by the kernel waited for")
    ap.add_argument("--cuda-only", action="store_true",
                    help="with --gaps: profile CUDA activity only (no CPU op records: less host overhead)")
    ap.add_argument("--steady", action="store_true",
                    help="with --gaps: five steps back to back as do_bench runs them (the L2 cleared between, "
                         "no sync), the timeline of the fourth")
    ap.add_argument("--syncs", action="store_true",
                    help="the operations of one step that synchronise the host with the GPU, with their stacks")
    args = ap.parse_args()
    ops.LAYER["batch"] = args.batch
    if args.syncs:
        return syncs()
    if args.gaps:
        return gaps(args.rows, cuda_only=args.cuda_only, steady=args.steady)
    if args.host:
        return host(args.rows)
    steps = 3
    for name, model, step in _models():
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


def _models(seqlen=None):
    """(name, model, step) for eager transformers and the same weights after
    ``fk_hf.apply``: the layer benchmark's model, input and loss (``seqlen``: another length)."""
    fk_hf._import_transformers()
    from transformers import LlamaConfig, LlamaModel

    saved = dict(ops.LAYER)
    if seqlen is not None:
        ops.LAYER["seqlen"] = seqlen
    eager, x, proj = ops.layer_setup(LlamaConfig, LlamaModel)
    ops.LAYER.update(saved)
    for name, model in (("transformers_sdpa", eager),
                        ("flashkernels", fk_hf.apply(copy.deepcopy(eager), backend="triton"))):
        yield name, model, ops.layer_fns(model, x, proj)[1]


def gaps(rows: int, min_gap_us: float = 2.0, cuda_only: bool = False, steady: bool = False):
    """Print one step's GPU timeline per model (see the module docstring)."""
    import triton

    for name, model, step in _models():
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        acts = [ProfilerActivity.CUDA] + ([] if cuda_only else [ProfilerActivity.CPU])
        cache = triton.runtime.driver.active.get_empty_cache_for_benchmark() if steady else None
        with profile(activities=acts) as prof:
            for _ in range(5 if steady else 1):
                if steady:  # as do_bench's repetitions: the L2 cleared between steps, no synchronisation
                    triton.runtime.driver.active.clear_cache(cache)
                step()
            torch.cuda.synchronize()
        kern = sorted(((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                       if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda t: t[0])
        if steady:  # the fourth step: from its first kernel (the position ids' arange) to the fifth's
            starts = [k[0] for k in kern if "arange" in k[2]]
            if len(starts) != 5:
                raise RuntimeError(f"expected 5 steps starting with an arange kernel, found {len(starts)}")
            kern = [k for k in kern if starts[3] <= k[0] < starts[4]]
            print(f"\n{name}: steady state, the fourth of five steps run as do_bench runs them")
        busy, idle, by_next, end = 0.0, 0.0, {}, kern[0][0]
        print(f"\n{name}: {len(kern)} GPU events in one step; gap (us) before each, duration (us), name")
        for start, stop, kname in kern:
            gap = max(0.0, start - end)
            if gap >= min_gap_us:
                idle += gap
                by_next[kname[:70]] = by_next.get(kname[:70], 0.0) + gap
            busy += max(0.0, stop - max(start, end))
            end = max(end, stop)
            print(f"  {gap:8.1f} {stop - start:8.1f}  {kname[:90]}")
        print(f"  first to last: {end - kern[0][0]:.0f} us, busy {busy:.0f}, idle gaps >= {min_gap_us} us: {idle:.0f}")
        for kname, gap in sorted(by_next.items(), key=lambda t: -t[1])[:rows]:
            print(f"  {gap:8.1f}  waiting for {kname}")
        del model
        torch.cuda.empty_cache()


def syncs():
    """One step of each model under torch.cuda.set_sync_debug_mode("warn"): each synchronising
    call warns; print each distinct one with the last frames of its Python stack."""
    import traceback
    import warnings

    for name, model, step in _models():
        step()
        torch.cuda.synchronize()
        seen = {}

        def show(message, category, filename, lineno, file=None, line=None):
            stack = "".join(traceback.format_stack(limit=9)[:-2])
            seen.setdefault(stack, [str(message), 0])[1] += 1

        old = warnings.showwarning
        warnings.showwarning = show
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = old
        print(f"\n{name}: {sum(c for _, c in seen.values())} synchronising calls in one step")
        for stack, (msg, count) in seen.items():
            print(f"--- x{count}: {msg[:160]}\n{stack}")


def host(rows: int, steps: int = 10):
    for seqlen in (4096, 256):
        for name, model, step in _models(seqlen):
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            t_host = (time.perf_counter() - t0) / steps * 1e3
            torch.cuda.synchronize()
            t_wall = (time.perf_counter() - t0) / steps * 1e3
            print(f"seqlen {seqlen:5d} {name:18s} host enqueue {t_host:7.2f} ms/step, wall {t_wall:7.2f} ms/step",
                  flush=True)
            if seqlen == 256:
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(3):
                        step()
                    torch.cuda.synchronize()
                ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
                tot = sum(e.self_cpu_time_total for e in ev) / 3 / 1e3
                print(f"  CPU self time, profiled: {tot:.2f} ms/step; top ops (ms/step, calls/step):")
                for e in ev[:rows]:
                    print(f"  {e.self_cpu_time_total / 3 / 1e3:8.3f} {e.count // 3:6d}  {e.key[:100]}")
                pr = cProfile.Profile()
                pr.enable()
                for _ in range(3):
                    step()
                torch.cuda.synchronize()
                pr.disable()
                buf = io.StringIO()
                pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(rows * 2)
                print("  cProfile, 3 steps, by cumulative time:\n" + buf.getvalue()[-12000:])
            del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
