"""A/B of a launcher switch in one process: each variant timed on the same inputs, alternately.

    PYTHONPATH=src python scripts/ab_attention.py --switch NAME [--modes fwd,bwd]
        [--seqlens 1024,4096,16384] [--head-dims 64,128] [--rounds 3] [--gluon] [--also "NAME=VALUE;..."]

``--switch`` names an attribute of flashkernels.ops.attention.launch (a module-level flag, added
for the experiment,) that selects a kernel variant through a constexpr: True vs False, or the
values ``--on`` / ``--off`` give (Python literals, e.g. ``--switch HOPPER_BWD_STAGES --on
"{(128, True): 3}" --off "{}"``); the original is restored after each shape. FA3-paper shapes (B*S = 16384, Hq*D = 2048),
bf16, causal and not; each (shape, mode) is timed with the switch on and off, `--rounds` times
alternating (so clock drift hits both), on first in even rounds and off first in odd ones (the first
variant timed in a shape read up to 6% faster than the second with both the same build: use an even
`--rounds`), do_bench medians; prints TF/s (the median over the rounds) and the on/off ratio. SDPA
cuDNN is timed once per shape and mode for scale. The Triton kernels by default; ``--gluon`` lets
the library pick its Gluon kernels on an H100 (a switch of theirs), and then the backward's
gradients with the switch on and off are compared first (max |diff|). ``--also`` sets more
launch attributes (Python literals) for the whole run, on and off alike (e.g. ``--switch
HOPPER_FWD_CHAIN --also "HOPPER_FWD_PERSISTENT_DIMS=(64, 128)"``); ``--softcap X``, ``--alibi``,
``--sink`` give our calls those features (cuDNN's stays plain). ``--graph`` times CUDA-graph replays
of the calls (GPU time, no host cost: at 1k our eager calls can take longer on the host than the
kernel on the GPU) instead of eager calls. ``--paired N`` (implies ``--graph``): both variants'
CUDA graphs replayed in alternation, N repetitions each (bench.common.paired_ms: A B, B A, ...,
the L2 flushed before each), and the on/off ratio read per repetition (median, with its 10th and
90th percentiles): a clock drift over the run lands on both variants alike (with separate medians
the same build read up to 7% apart at 16k, session 19); ``--rounds`` is then not used. Each
variant's call (its out and dO) stays alive until the replays end: a later capture's empty_cache
would otherwise unmap what an earlier graph reads (perf-notes, session 19: its first runs, and the
causal backward not yet re-run since that fix). Needs a CUDA GPU.
"""
import argparse
import ast
import os
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import flashkernels
from flashkernels.bench.common import capture_graph, do_bench_median, graph_ms, paired_ms, paired_ratio, warm_gpu
from flashkernels.ops.attention import launch
from pytest_switch import set_switches



def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--switch", required=True)
    ap.add_argument("--modes", default="fwd")
    ap.add_argument("--causal", default="0,1", help="the mask settings to time: 0 (none), 1 (causal) or both")
    ap.add_argument("--seqlens", default="1024,4096,16384")
    ap.add_argument("--head-dims", default="128")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gluon", action="store_true", help="the Gluon kernels (the switch is theirs)")
    ap.add_argument("--on", default="True", help="the switch's value for 'on' (a Python literal)")
    ap.add_argument("--off", default="False", help="the switch's value for 'off' (a Python literal)")
    ap.add_argument("--also", default="", help="'NAME=VALUE;...': launch attributes set for the whole run")
    ap.add_argument("--softcap", type=float, default=0.0, help="flash_attn_func's softcap for our calls")
    ap.add_argument("--alibi", action="store_true", help="ALiBi slopes (H,) 2^(-8 (h + 1) / H) for our calls")
    ap.add_argument("--sink", action="store_true", help="a learnable sink (H,) randn for our calls")
    ap.add_argument("--graph", action="store_true", help="time CUDA-graph replays (GPU time), not eager calls")
    ap.add_argument("--paired", type=int, default=0, metavar="N",
                    help="both variants' CUDA graphs replayed in alternation, N repetitions; the ratio per repetition")
    args = ap.parse_args()
    if args.paired < 0:
        raise SystemExit("--paired: a count of repetitions (> 0), or 0 for off")
    args.graph = args.graph or args.paired > 0
    stream = torch.cuda.Stream()  # (--graph: everything on a side stream, which a CUDA graph can capture)

    def bench(fn):
        if not args.graph:
            return do_bench_median(fn)
        fn()  # (warm: compiles stay out of the capture)
        torch.cuda.synchronize()
        ms = graph_ms(fn, stream)
        if ms is None:
            raise SystemExit("--graph: the call could not be captured in a CUDA graph")
        return ms

    try:
        set_switches(args.also, "--also (whole run)")
    except ValueError as e:
        raise SystemExit(str(e))
    if not args.gluon:  # the Triton kernels: on an H100 the library would otherwise run its Gluon ones
        os.environ["FLASHKERNELS_HOPPER_FWD"] = "0"
        os.environ["FLASHKERNELS_HOPPER_BWD"] = "0"
    if not hasattr(launch, args.switch):
        raise SystemExit(f"--switch: launch has no {args.switch}")
    original = getattr(launch, args.switch)
    value = {True: ast.literal_eval(args.on), False: ast.literal_eval(args.off)}
    print(f"launch.{args.switch}: on = {value[True]!r}, off = {value[False]!r}")
    warm_gpu()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run(args, value, original, bench, stream)
    torch.cuda.synchronize()


def run(args, value, original, bench, stream):
    """The shapes, each timed with the switch on and off (main()'s docstring)."""
    spread = f" {'p10':>6s} {'p90':>6s}" if args.paired else ""
    print(f"{'D':>4s} {'S':>6s} {'causal':>6s} {'mode':>4s} {'on TF/s':>8s} {'off TF/s':>9s} {'on/off':>7s}{spread} "
          f"{'cudnn':>7s}")
    for D in map(int, args.head_dims.split(",")):
        H = 2048 // D
        for S in map(int, args.seqlens.split(",")):
            B = 16384 // S
            q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            feats = dict(softcap=args.softcap)  # (ours only; cuDNN runs plain attention, for scale)
            if args.alibi:
                feats["alibi_slopes"] = torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)], device="cuda")
            if args.sink:
                feats["learnable_sink"] = torch.randn(H, device="cuda")
            for causal in (bool(int(x)) for x in args.causal.split(",")):
                flops = 4 * B * H * S * S * D / (2 if causal else 1)
                qt, kt, vt = (x.detach().transpose(1, 2) for x in (q, k, v))
                for mode in args.modes.split(","):
                    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                        if mode == "fwd":
                            with torch.no_grad():
                                ms = bench(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal))
                        else:
                            qc, kc, vc = (x.detach().requires_grad_() for x in (qt, kt, vt))
                            oc = F.scaled_dot_product_attention(qc, kc, vc, is_causal=causal)
                            doc = torch.randn_like(oc)
                            ms = bench(lambda: torch.autograd.grad(oc, (qc, kc, vc), doc, retain_graph=True))
                    cudnn = (1.0 if mode == "fwd" else 2.5) * flops / ms / 1e9
                    if mode == "bwd" and args.gluon:
                        grads = {}
                        for on in (True, False):
                            setattr(launch, args.switch, value[on])
                            out = flashkernels.flash_attn_func(q, k, v, causal=causal, **feats)
                            grads[on] = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
                        diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(grads[True], grads[False]))
                        print(f"  D={D} S={S} causal={int(causal)}: gradients on vs off max |diff| {diff:.3e}", flush=True)
                    mult = 1.0 if mode == "fwd" else 2.5
                    if args.paired:
                        tf, (ratio, p10, p90) = paired_shape(args, value, original, q, k, v, causal, feats, mode,
                                                             stream, mult * flops)
                        print(f"{D:>4d} {S:>6d} {int(causal):>6d} {mode:>4s} {tf[True]:8.1f} {tf[False]:9.1f} "
                              f"{ratio:7.3f} {p10:6.3f} {p90:6.3f} {cudnn:7.1f}", flush=True)
                        continue
                    times = {True: [], False: []}
                    for r in range(args.rounds):
                        # (the first variant timed in a shape can read a few % faster than the second, even
                        # for the same build: session 17; so the order alternates by round)
                        for on in ((True, False) if r % 2 == 0 else (False, True)):
                            setattr(launch, args.switch, value[on])
                            if mode == "fwd":
                                with torch.no_grad():
                                    ms = bench(lambda: flashkernels.flash_attn_func(q, k, v, causal=causal,
                                                                                    **feats))
                            else:
                                out = flashkernels.flash_attn_func(q, k, v, causal=causal, **feats)
                                do = torch.randn_like(out)
                                ms = bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
                            times[on].append(ms)
                    setattr(launch, args.switch, original)
                    tf = {on: mult * flops / statistics.median(t) / 1e9 for on, t in times.items()}
                    print(f"{D:>4d} {S:>6d} {int(causal):>6d} {mode:>4s} {tf[True]:8.1f} {tf[False]:9.1f} "
                          f"{tf[True] / tf[False]:7.3f} {cudnn:7.1f}", flush=True)


def paired_shape(args, value, original, q, k, v, causal, feats, mode, stream, flops):
    """--paired: ({on: TF/s from the median time}, paired_ratio(off times, on times)) of one shape
    and mode, each variant's call captured in its own CUDA graph with the switch set for it."""
    graphs, alive = {}, []
    for on in (True, False):
        setattr(launch, args.switch, value[on])
        if mode == "fwd":
            def fn():
                with torch.no_grad():
                    flashkernels.flash_attn_func(q, k, v, causal=causal, **feats)
        else:
            out = flashkernels.flash_attn_func(q, k, v, causal=causal, **feats)
            do = torch.randn_like(out)

            def fn(out=out, do=do):
                torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
        alive.append(fn)  # (its out and dO, which the graph reads, must outlive the replays)
        fn()  # (warm: compiles stay out of the capture)
        torch.cuda.synchronize()
        graphs[on] = capture_graph(fn, stream)
        if graphs[on] is None:
            raise SystemExit("--paired: the call could not be captured in a CUDA graph")
    setattr(launch, args.switch, original)
    t_on, t_off = paired_ms([graphs[True].replay, graphs[False].replay], reps=args.paired)
    tf = {True: flops / statistics.median(t_on) / 1e9, False: flops / statistics.median(t_off) / 1e9}
    return tf, paired_ratio(t_off, t_on)


if __name__ == "__main__":
    main()
