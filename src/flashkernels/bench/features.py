"""Benchmarks of the serving / long-context attention features (GPU only).

    flashkernels bench varlen     packed sequences vs the dense kernel at their mean length
    flashkernels bench features   softcap / ALiBi / sink / sliding window vs plain attention

varlen: 16 sequences of random lengths (fixed seed) summing to 16384 tokens, Hq = Hkv = 16,
D = 128, bf16, causal and not, forward and backward. TFLOP/s count only real token pairs
(4 * Sq * Sk * H * D per sequence forward, half the square plus the diagonal when causal; the
backward counts 2.5x the forward). The dense reference is flash_attn_func with B = 16 at the
mean length (1024). Goal (issue 5): varlen within 5% of dense. The varlen call passes
check_inputs=False (the offsets check is a device sync per call). With ``--paired N`` the varlen and
dense graphs are then also replayed in alternation (as features' below) and varlen's TF/s over
dense's is read per repetition: median [10th, 90th percentile].

Times are GPU time: do_bench medians of CUDA-graph replays of the call (forward) and of the
backward over a retained graph (common.measure_graph, as bench ops), so that the host's launch cost (TMA
descriptors, argument checks: ~0.1 ms a call on a slow CPU, the size of a varlen forward) does
not enter; a call that cannot be captured falls back to its eager time, marked with ``*``.
(Before session 9 these were eager do_bench times; on the H100 the short varlen forwards read
0.56-1.10x dense from run to run that way.)

features: B = 4, S = 4096, Hq = 16, D = 128, bf16, causal: plain, softcap=30, ALiBi slopes,
learnable sink, all timed on the same shape (the same FLOPs). Goal: each at most 10% over plain.
With ``--paired N`` the four variants' graphs are then also replayed in alternation, N
repetitions (common.paired_ms: each repetition runs all four, the order rotated, the L2 flushed
before each), and each feature's time over plain is read per repetition: median [10th, 90th
percentile]. The separate medians above are taken seconds apart, and on an H100 the same build's
medians read up to 7% apart at 16k (docs/perf-notes.md, session 19): too coarse for a 10% line.
Sliding window: B = 1, S = 32768, Hq = 16, window (4096, 0) vs plain causal at the same S: the
time should follow the visible pairs (about 4096 / 16384 of causal's), not S^2.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import warnings

import torch

from .common import CsvSink, capture_calls, environment, gpu_missing, measure_graph, paired_ms, paired_ratio, warm_gpu


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--csv", default=None, help="append rows to this CSV file")
    p.add_argument("--no-backward", action="store_true", help="forward only")
    p.add_argument("--paired", type=int, default=0, metavar="N",
                   help="also from N alternating CUDA-graph replays (see above): features, each feature's time "
                        "over plain; varlen, varlen's TF/s over dense's")


def _pairs(sq: int, sk: int, causal: bool, window_left: int = -1) -> int:
    """Visible (query, key) pairs of one head, bottom-right aligned."""
    i = torch.arange(sq, dtype=torch.float64)[:, None] + (sk - sq)
    j = torch.arange(sk, dtype=torch.float64)[None, :]
    seen = torch.ones(sq, sk, dtype=torch.bool)
    if causal:
        seen &= j <= i
    if window_left >= 0:
        seen &= j >= i - window_left
    return int(seen.sum())


def _time(fn, backward: bool, wrt):
    """(forward ms, backward ms or None, whether any of them is an eager time): GPU time from
    CUDA-graph replays (common.measure_graph), the eager time where a call cannot be captured."""
    m = measure_graph(fn, wrt, backward)
    fwd = m["fwd"] if m["fwd"] is not None else m["fwd_eager"]
    bwd = None
    if backward:
        bwd = m["bwd"] if m["bwd"] is not None else m["bwd_eager"]
    eager = m["fwd"] is None or (backward and m["bwd"] is None)
    return fwd, bwd, eager


def _row(sink, name, ms, flops, **kw):
    tf = flops / ms / 1e9 if ms else None
    sink.write(dict(op="attention", provider="flashkernels", dtype="bf16", ms=ms, tflops=tf, mode=name,
                    **kw, **environment()))
    return tf


def _seqlens(n: int, total: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, generator=g) + 0.1
    lens = (w / w.sum() * total).floor().long().clamp(min=1)
    lens[-1] += total - int(lens.sum())
    return lens.tolist()


# `bench varlen`'s case: n sequences of random lengths (fixed seed) summing to total, H heads of D
VARLEN_CASE = dict(H=16, D=128, n=16, total=16384)


def varlen_case(dev):
    """(H, D, n, total, lens, mean, cu_seqlens int32 on ``dev``) of VARLEN_CASE."""
    H, D, n, total = (VARLEN_CASE[k] for k in ("H", "D", "n", "total"))
    lens = _seqlens(n, total)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=dev)
    return H, D, n, total, lens, total // n, cu


def run_varlen(args) -> int:
    import flashkernels

    if getattr(args, "paired", 0) < 0:
        print(f"flashkernels bench varlen: --paired must be 0 or more, got {args.paired}", file=sys.stderr)
        return 2

    why = gpu_missing("flashkernels bench varlen")
    if why:
        print(why, file=sys.stderr)
        return 2
    dev, dt = "cuda", torch.bfloat16
    H, D, n, total, lens, mean, cu = varlen_case(dev)
    csv = CsvSink(args.csv)
    warm_gpu()
    print(f"varlen: {n} sequences, lengths {min(lens)}..{max(lens)} (sum {total}), H={H} D={D} bf16; "
          f"dense: B={n} S={mean}; GPU time (CUDA graphs; * eager)")
    print(f"{'causal':>6s} {'pass':>4s} {'varlen TF/s':>12s} {'dense TF/s':>11s} {'ratio':>6s}")
    for causal in (False, True):
        q, k, v = (torch.randn(total, H, D, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
        qd, kd, vd = (torch.randn(n, mean, H, D, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
        # check_inputs=False: the offsets check reads cu_seqlens back (a device sync each call),
        # which a serving loop would do once, not per call
        f_var = lambda: flashkernels.flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), causal=causal,
                                                            check_inputs=False)
        f_den = lambda: flashkernels.flash_attn_func(qd, kd, vd, causal=causal)
        flops_var = sum(4 * _pairs(L, L, causal) * H * D for L in lens)
        flops_den = n * 4 * _pairs(mean, mean, causal) * H * D
        tv = _time(f_var, not args.no_backward, (q, k, v))
        td = _time(f_den, not args.no_backward, (qd, kd, vd))
        for name, a, b, mult in (("fwd", tv[0], td[0], 1.0), ("bwd", tv[1], td[1], 2.5)):
            if a is None:
                continue
            tf_v = _row(csv, f"varlen-{name}", a, mult * flops_var, batch=n, heads_q=H, heads_kv=H,
                        seqlen_q=max(lens), seqlen_k=max(lens), head_dim=D, causal=causal)
            tf_d = _row(csv, f"dense-{name}", b, mult * flops_den, batch=n, heads_q=H, heads_kv=H,
                        seqlen_q=mean, seqlen_k=mean, head_dim=D, causal=causal)
            mark = "*" if tv[2] or td[2] else ""
            print(f"{int(causal):>6d} {name:>4s} {tf_v:12.1f} {tf_d:11.1f} {tf_v / tf_d:6.3f}{mark}")
        if args.paired:
            _paired_varlen(f_var, f_den, (q, k, v), (qd, kd, vd), flops_var / flops_den, args.paired,
                           not args.no_backward)
    csv.close()
    return 0


def _paired_modes(calls, reps: int, backward: bool) -> list:
    """[(mode, times)] for the forward ("fwd") and (``backward``) the backward ("bwd") of ``calls``, (f, wrt)
    pairs: the CUDA graphs of each f() (or of the gradient of its output with respect to wrt, for a random
    dO), captured on a side stream and replayed in alternation ``reps`` times (common.paired_ms); times holds
    one list of ms a call."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    result = []
    with torch.cuda.stream(stream), warnings.catch_warnings():
        # (the inputs' AccumulateGrad nodes, made by the table's backward on the default stream, meet this
        # side stream: torch warns of a possible sync; the graphs capture and replay all the same)
        warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream")
        for mode in ("fwd", "bwd") if backward else ("fwd",):
            fns = []
            for f, wrt in calls:
                if mode == "fwd":
                    fns.append(f)
                else:
                    out = f()

                    def fn(out=out, do=torch.randn_like(out), wrt=wrt):
                        torch.autograd.grad(out, wrt, do, retain_graph=True)
                    fns.append(fn)  # (alive, with its out and dO, until the replays end)
            graphs = capture_calls(fns, stream)
            result.append((mode, paired_ms([g.replay for g in graphs], reps=reps)))
            del graphs, fns
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    return result


def _paired_varlen(f_var, f_den, wrt_var, wrt_den, flop_ratio: float, reps: int, backward: bool) -> None:
    """Print varlen's TF/s over dense's from ``reps`` alternating CUDA-graph replays of the two calls
    (_paired_modes), forward and (``backward``) backward: median [p10, p90] over repetitions."""
    for mode, times in _paired_modes(((f_var, wrt_var), (f_den, wrt_den)), reps, backward):
        # (varlen's TF/s over dense's in each repetition: dense's time scaled by the FLOP ratio over varlen's)
        med, lo, hi = paired_ratio([t * flop_ratio for t in times[1]], times[0])
        print(f"    paired {mode} ({reps} repetitions): varlen {statistics.median(times[0]):.3f} ms, dense "
              f"{statistics.median(times[1]):.3f} ms, varlen / dense TF/s {med:.3f} [{lo:.3f}, {hi:.3f}]")


def _paired_features(q, k, v, sink, variants: dict, reps: int, backward: bool) -> None:
    """Print each variant's time over the first's (plain) from ``reps`` alternating CUDA-graph
    replays of all of them (_paired_modes), forward and (``backward``) backward: median [p10, p90]."""
    import flashkernels

    print(f"paired ({reps} repetitions: each variant's median time, and its time over plain's in the same "
          "repetition: median [p10, p90])")
    calls = [(lambda kw=kw: flashkernels.flash_attn_func(q, k, v, causal=True, **kw),  # (grads on, as the table's)
              (q, k, v) + ((sink,) if "learnable_sink" in kw else ())) for kw in variants.values()]
    for mode, times in _paired_modes(calls, reps, backward):
        cells = [f"plain {statistics.median(times[0]):.3f} ms"]
        for name, t in zip(list(variants)[1:], times[1:]):
            med, lo, hi = paired_ratio(t, times[0])
            cells.append(f"{name} {statistics.median(t):.3f} ms, {med:.3f} [{lo:.3f}, {hi:.3f}]")
        print(f"  {mode}: " + "; ".join(cells))


def run_features(args) -> int:
    import flashkernels

    why = gpu_missing("flashkernels bench features")
    if why:
        print(why, file=sys.stderr)
        return 2
    dev, dt = "cuda", torch.bfloat16
    csv = CsvSink(args.csv)
    warm_gpu()
    B, S, H, D = 4, 4096, 16, 128
    q, k, v = (torch.randn(B, S, H, D, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)], device=dev)
    sink = torch.zeros(H, device=dev, requires_grad=True)
    variants = {
        "plain": {}, "softcap": dict(softcap=30.0), "alibi": dict(alibi_slopes=slopes),
        "sink": dict(learnable_sink=sink),
    }
    flops = B * H * D * 4 * _pairs(S, S, True)
    print(f"features: B={B} S={S} H={H} D={D} bf16 causal; GPU time (CUDA graphs; * eager)")
    print(f"{'variant':>8s} {'fwd ms':>8s} {'fwd TF/s':>9s} {'vs plain':>9s} {'bwd ms':>8s} {'bwd TF/s':>9s} "
          f"{'vs plain':>9s}")
    base = None
    for name, kw in variants.items():
        wrt = (q, k, v) + ((sink,) if "learnable_sink" in kw else ())
        fwd, bwd, eager = _time(lambda: flashkernels.flash_attn_func(q, k, v, causal=True, **kw),
                                not args.no_backward, wrt)
        base = base or (fwd, bwd)
        _row(csv, f"{name}-fwd", fwd, flops, batch=B, heads_q=H, heads_kv=H, seqlen_q=S, seqlen_k=S, head_dim=D,
             causal=True)
        line = f"{name:>8s} {fwd:8.3f} {flops / fwd / 1e9:9.1f} {fwd / base[0]:9.3f}"
        if bwd is not None:
            _row(csv, f"{name}-bwd", bwd, 2.5 * flops, batch=B, heads_q=H, heads_kv=H, seqlen_q=S, seqlen_k=S,
                 head_dim=D, causal=True)
            line += f" {bwd:8.3f} {2.5 * flops / bwd / 1e9:9.1f} {bwd / base[1]:9.3f}"
        print(line + (" *" if eager else ""))
    if args.paired:
        _paired_features(q, k, v, sink, variants, args.paired, not args.no_backward)

    S, B, W = 32768, 1, 4096
    q, k, v = (torch.randn(B, S, H, D, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
    print(f"sliding window: B={B} S={S} H={H} D={D} bf16, window ({W}, 0) vs causal")
    times = {}
    for name, kw in (("causal", {}), ("window", dict(window_size=(W, 0)))):
        fwd, bwd, _ = _time(lambda: flashkernels.flash_attn_func(q, k, v, causal=True, **kw),
                            not args.no_backward, (q, k, v))
        pairs = _pairs(S, S, True, W if name == "window" else -1)
        times[name] = (fwd, bwd, pairs)
        _row(csv, f"{name}-fwd", fwd, B * H * D * 4 * pairs, batch=B, heads_q=H, heads_kv=H, seqlen_q=S,
             seqlen_k=S, head_dim=D, causal=True)
        if bwd is not None:
            _row(csv, f"{name}-bwd", bwd, 2.5 * B * H * D * 4 * pairs, batch=B, heads_q=H, heads_kv=H,
                 seqlen_q=S, seqlen_k=S, head_dim=D, causal=True)
    (cf, cb, cp), (wf, wb, wp) = times["causal"], times["window"]
    print(f"  visible pairs window/causal {wp / cp:.3f}; time forward {wf / cf:.3f}"
          + (f", backward {wb / cb:.3f}" if wb is not None else ""))
    csv.close()
    return 0


__all__ = ["add_arguments", "run_varlen", "run_features"]
