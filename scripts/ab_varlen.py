"""The varlen forward's launches side by side: `bench varlen`'s case (16 sequences of lengths 242-1977
summing to 16384, bf16, forward), each variant of VARIANTS (the launch switches it sets): grid (the
packed-tile grid launch), persistent (the dynamic tile scheduler, launch.HOPPER_FWD_VARLEN_PERSISTENT),
qsets (+ two sets of Q buffers, HOPPER_FWD_VARLEN_QSETS), sorted / sorted-outer (qsets', the tiles
longest first: HOPPER_FWD_VARLEN_SORT 1, the heads innermost, or 2, head by head), pub / defer /
pub-defer (qsets' with HOPPER_FWD_VARLEN_PUB, _DEFER or both), pub-defer-st3 (pub-defer's with a
three-stage K / V ring at any length, HOPPER_FWD_VARLEN_SHORT); and the dense
forward at the mean length (B = 16, S = 1024) for issue 5's ratio; CUDA graphs of all replayed in
alternation (bench.common.paired_ms, the L2 flushed before each), so each ratio is read per repetition.

    PYTHONPATH=src python scripts/ab_varlen.py [--paired 24] [--head-dims 128,256] [--causal 0,1]
        [--variants grid,persistent,qsets,sorted,sorted-outer] [--scale 4]

--scale K multiplies every length by K (K = 4: 968-7908, summing to 65536; dense S = 4096), so that
the longest sequence passes a head dim's row floor (launch.HOPPER_FWD_MIN_SEQLEN: D = 64's 2048).

H = 2048 / D heads (16 at D = 128: `bench varlen`'s), FLOPs counted on real tokens only (4 · D · H ·
Σ L², half the pairs causal, bench.features._pairs). Prints each variant's median ms and TF/s and
the ratios (median [p10, p90] over repetitions): each varlen launch's TF/s over dense's, and its
speed over the first variant's (> 1: faster). Needs a GPU.
"""
import argparse
import statistics

import torch

import flashkernels
from flashkernels.bench.common import capture_calls, paired_ms, paired_ratio, warm_gpu
from flashkernels.bench.features import _pairs, varlen_case
from flashkernels.ops.attention import launch


SWITCHES = ("HOPPER_FWD_VARLEN_PERSISTENT", "HOPPER_FWD_VARLEN_SORT", "HOPPER_FWD_VARLEN_QSETS",
            "HOPPER_FWD_VARLEN_PUB", "HOPPER_FWD_VARLEN_DEFER", "HOPPER_FWD_VARLEN_PERSISTENT_CAUSAL",
            "HOPPER_FWD_VARLEN_SHORT")
# variant -> the launch switches of SWITCHES (at the head dim, or off; the sort's value; the ring's stages at any
# length, HOPPER_FWD_VARLEN_SHORT, 0: none, the config's)
VARIANTS = {"grid": (False, 0, False, False, False, False, 0), "persistent": (True, 0, False, False, False, False, 0),
            "qsets": (True, 0, True, False, False, False, 0), "sorted": (True, 1, True, False, False, False, 0),
            "sorted-outer": (True, 2, True, False, False, False, 0), "pub": (True, 0, True, True, False, False, 0),
            "defer": (True, 0, True, False, True, False, 0), "pub-defer": (True, 0, True, True, True, False, 0),
            "pub-defer-st3": (True, 0, True, True, True, False, 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paired", type=int, default=24, help="repetitions of the alternating replays")
    ap.add_argument("--head-dims", default="128")
    ap.add_argument("--causal", default="0,1")
    ap.add_argument("--variants", default="grid,persistent,qsets",
                    help=f"of {', '.join(VARIANTS)} (VARIANTS); ratios over the first")
    ap.add_argument("--scale", type=int, default=1, help="every sequence's length times this")
    args = ap.parse_args()
    names = args.variants.split(",")
    assert names and set(names) <= set(VARIANTS), names
    dev, dt = "cuda", torch.bfloat16
    _, _, n, total, lens, mean, cu = varlen_case(dev)
    if args.scale != 1:
        assert args.scale > 0, args.scale
        lens, total, mean = [L * args.scale for L in lens], total * args.scale, mean * args.scale
        cu = cu * args.scale
    warm_gpu()
    print(f"varlen: {n} sequences, lengths {min(lens)}..{max(lens)} (sum {total}); dense B={n} S={mean}; bf16, "
          f"forward, CUDA-graph replays paired {args.paired}x; {torch.cuda.get_device_name()}")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    for D in (int(x) for x in args.head_dims.split(",")):
        H = 2048 // D
        q, k, v = (torch.randn(total, H, D, device=dev, dtype=dt) for _ in range(3))
        qd, kd, vd = (torch.randn(n, mean, H, D, device=dev, dtype=dt) for _ in range(3))
        for causal in (bool(int(x)) for x in args.causal.split(",")):
            fl_var = sum(4 * _pairs(L, L, causal) * H * D for L in lens)
            fl_den = n * 4 * _pairs(mean, mean, causal) * H * D

            def varlen(name, causal=causal, D=D, q=q, k=k, v=v):
                saved = {sw: getattr(launch, sw) for sw in SWITCHES}
                for sw, on in zip(SWITCHES, VARIANTS[name]):
                    setattr(launch, sw, on if sw == "HOPPER_FWD_VARLEN_SORT" else ({D: (1 << 30, on)} if on else {})
                            if sw == "HOPPER_FWD_VARLEN_SHORT" else (D,) if on else ())
                try:
                    flashkernels.flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), causal=causal,
                                                        check_inputs=False)
                finally:
                    for sw, value in saved.items():
                        setattr(launch, sw, value)

            fns = [lambda name=name: varlen(name) for name in names]
            fns.append(lambda causal=causal, qd=qd, kd=kd, vd=vd: flashkernels.flash_attn_func(qd, kd, vd,
                                                                                                causal=causal))
            with torch.no_grad(), torch.cuda.stream(stream):
                before = launch.hopper_fwd_launches
                graphs = capture_calls(fns, stream)
                assert launch.hopper_fwd_launches > before, "the Gluon forward did not run"
                times = paired_ms([g.replay for g in graphs], reps=args.paired)
            torch.cuda.current_stream().wait_stream(stream)
            ms = [statistics.median(t) for t in times]
            print(f"D={D} H={H} causal={int(causal)}: " + "; ".join(
                f"{name} {m:.3f} ms {f / m * 1e-9:.1f} TF/s"
                for name, m, f in zip(names + ["dense"], ms, [fl_var] * len(names) + [fl_den])))
            cells = []
            for i, name in enumerate(names):
                # (its TF/s over dense's, and over the first variant's, per repetition)
                d = paired_ratio([t * fl_var / fl_den for t in times[-1]], times[i])
                cells.append(f"{name}: to dense {d[0]:.3f} [{d[1]:.3f}, {d[2]:.3f}]")
                if i:
                    r = paired_ratio(times[0], times[i])
                    cells[-1] += f", over {names[0]} {r[0]:.3f} [{r[1]:.3f}, {r[2]:.3f}]"
            print("   " + "; ".join(cells), flush=True)
            del graphs
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
