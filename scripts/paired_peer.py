"""Our attention against a peer's, timed in alternation in one process: both calls captured as CUDA graphs and
replayed A B, B A, ... with the L2 flushed before each (flashkernels.bench.common.paired_ms), so the card's clock
drift lands on both and the ratio is read per repetition (median, 10th and 90th percentile).

    PYTHONPATH=src python scripts/paired_peer.py [--peer sdpa-cudnn] [--reps 30] [--modes bwd]
        [--shapes "128:4096:1,128:8192:0"]     (head dim : seqlen : causal; FA3-paper batch and heads)
        [--clocks]     (also each call's replays alone, as separate medians time them, and the SM clock (NVML)
                        while each runs alone and while both alternate)

Why: `bench attention` times each provider on its own (do_bench medians a few seconds apart), and the peers'
readings there move by several % between calls (SDPA cuDNN's causal 4k backward read 453-483 TF/s on one H200 in
session 31); the issue's "at least 1.0x cuDNN" lines sit within that spread. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch

from flashkernels.bench.attention import HIDDEN, OURS, TOKENS, Shape, flops, make_fn, make_inputs
from flashkernels.bench.common import capture_calls, paired_ms, paired_ratio


def _call(provider: str, s: Shape, mode: str, inputs):
    """A zero-argument callable of ``provider``'s forward (no grad) or backward (the gradients of a kept forward),
    and what it closes over (to keep alive while its graph replays)."""
    q, k, v = inputs
    fn = make_fn(provider, q, k, v, s)
    if mode == "fwd":
        def call():
            with torch.no_grad():
                fn()
        return call, ()
    o = fn()
    do = torch.randn_like(o)
    return (lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True)), (o, do)


def _clock_mhz(run) -> float:
    """Median SM clock (MHz, torch.cuda.clock_rate: NVML's, sampled every 5 ms on a thread) while ``run()`` runs and
    the GPU finishes it."""
    samples, done = [], threading.Event()

    def poll():
        while not done.is_set():
            samples.append(torch.cuda.clock_rate())
            time.sleep(0.005)

    t = threading.Thread(target=poll)
    t.start()
    run()
    torch.cuda.synchronize()
    done.set()
    t.join()
    return statistics.median(samples) if samples else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", default="sdpa-cudnn")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--modes", default="bwd")
    ap.add_argument("--shapes", default="128:4096:1,128:4096:0,128:8192:0,128:16384:0,128:16384:1")
    ap.add_argument("--clocks", action="store_true", help="also the SM clock (MHz) while each call's graph replays "
                    "alone and while both replay in alternation: whether the two methods see the card at one clock")
    args = ap.parse_args(argv)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; ours / {args.peer}: the peer's time over ours "
          f"per repetition (> 1: ours faster), {args.reps} paired repetitions of CUDA-graph replays")
    print(f"{'D':>4} {'S':>6} {'causal':>6} {'mode':>4} {'ours TF/s':>10} {'peer TF/s':>10} {'ratio':>7} "
          f"{'p10':>6} {'p90':>6}")
    stream = torch.cuda.Stream()
    for spec in args.shapes.split(","):
        d, seqlen, causal = (int(x) for x in spec.split(":"))
        h = HIDDEN // d
        s = Shape(TOKENS // seqlen, h, h, seqlen, seqlen, d, bool(causal))
        for mode in args.modes.split(","):
            inputs = make_inputs(s, torch.bfloat16, requires_grad=mode == "bwd")
            calls, keep = [], []
            with torch.cuda.stream(stream):  # (the forward too: autograd runs a backward on its forward's stream)
                for provider in (OURS, args.peer):
                    c, k = _call(provider, s, mode, inputs)
                    calls.append(c)
                    keep.append(k)
                graphs = capture_calls(calls, stream)
            torch.cuda.synchronize()
            ours, peer = paired_ms([g.replay for g in graphs], reps=args.reps)
            med, p10, p90 = paired_ratio(peer, ours)
            tf = flops(s, mode) / 1e9
            ours_ms, peer_ms = sorted(ours)[len(ours) // 2], sorted(peer)[len(peer) // 2]
            print(f"{d:>4} {seqlen:>6} {causal:>6} {mode:>4} {tf / ours_ms:>10.1f} {tf / peer_ms:>10.1f} "
                  f"{med:>7.3f} {p10:>6.3f} {p90:>6.3f}", flush=True)
            if args.clocks:  # each call's replays alone (as separate medians time them), then both in alternation
                alone, clocks = [], []
                for g in graphs:
                    times = []
                    run = (lambda g=g, times=times: times.extend(paired_ms([g.replay], reps=args.reps)[0]))
                    clocks.append(_clock_mhz(run))
                    alone.append(statistics.median(times))
                both = _clock_mhz(lambda gs=graphs: paired_ms([g.replay for g in gs], reps=args.reps))
                print(f"{'':>23} alone: ours {tf / alone[0]:.1f}, peer {tf / alone[1]:.1f} TF/s (ratio "
                      f"{alone[1] / alone[0]:.3f}); SM clock, MHz: ours alone {clocks[0]:.0f}, peer alone "
                      f"{clocks[1]:.0f}, in alternation {both:.0f}", flush=True)
            del graphs, calls, keep, inputs
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
