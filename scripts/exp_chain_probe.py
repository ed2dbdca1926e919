#!/usr/bin/env python3
"""Where a chained persistent forward's tile time goes (session 23's experiment, extended in session 34; Hopper).

    PYTHONPATH=src:scripts python scripts/exp_chain_probe.py [--cases 64:1024:0,64:1024:1,128:1024:0,128:4096:0]
        [--defer 0,1]   (1: launch.HOPPER_FWD_CHAIN_DEFER at both chained head dims, 0: at none)
        [--global-timer] [--set "NAME=VALUE;..."]

With launch.HOPPER_FWD_PROBE set, each consumer warpgroup of the chained forward (kernels/fwd_hopper.py
_ws_attend_chain) records %clock64 at four points of its first 64 tiles: after the tile's loop (T0),
before the wait for the next tile's Q (its place computed: T3), after the boundary step that issues
the next tile's first q·kᵀ with this tile's last p·v (T1), and after the tile's end (output and lse
stored; T2). Per case (head dim : query rows : causal, FA3 grid B·S = 16384, Hq·D = 2048, bf16) and
launch.HOPPER_FWD_CHAIN_DEFER value (--defer) it prints medians over every CTA, warpgroup and tile
of: the boundary step (T1 - T0; the next tile's place T3 - T0, the Q wait and the step T1 - T3), the
tile end (T2 - T1), the next tile's loop (T0' - T2) and that loop per step, in SM clocks, and the
share of a tile's time the boundary and the end take. Then (session 34) where the kernel's time goes
as a whole: the kernel's median time (do_bench, eager) in SM clocks at NVML's clock (which read 1980 MHz
where the global timer below put the SM at ~1.8 GHz: a reading to compare within a run, not to trust); each
warpgroup's span from its first tile's loop end to its last tile's end, against the sum of its steps at
the median step (causal: each tile's blocks from _ws_tile_c's pair order, n_m - 1 - j then j, a tile
of pid_m + 1 blocks, its loop pid_m steps), its boundary steps and its tile ends.

--global-timer: the same launch again with launch.HOPPER_FWD_PROBE_GLOBAL (%globaltimer, ns, one clock for every
SM; the kernel's PROBE = 2, which also records each warpgroup's start and end): when the warpgroups start and end
against the kernel's do_bench time, the spread of their ends (a last round's imbalance), the loop step in ns (so
the SM clock the kernel ran at, against the %clock64 step) and the tiles a warpgroup ran. --set: launch attributes
(Python literals) for the whole run, e.g. a switch under test. --dump CSV: each warpgroup's start, end and tiles of the
global-timer runs, appended.
"""
import argparse
import statistics

import torch
import triton.testing

import flashkernels
from flashkernels.ops.attention import launch
from paired_peer import _clock_mhz
from pytest_switch import set_switches

DUMP = None  # --dump: a CSV (D, S, causal, defer, cta, warpgroup, start_us, end_us, tiles) of the global-timer runs


def _next_steps(p, c, sms, n_m, causal):
    """The loop steps of CTA p's tile c + 1 in the static order (_ws_tile_c): non-causal n_m - 1; causal, pair p + (c +
    1) // 2 · programs of (n_m - 1 - j, j), a tile of pid_m + 1 blocks running pid_m loop steps (its first block is
    the boundary's). Returns (steps, pair index)."""
    if not causal:
        return n_m - 1, None
    pn = p + ((c + 1) // 2) * sms
    jn = pn % (n_m // 2)
    return (n_m - 1 - jn if (c + 1) % 2 == 0 else jn), pn


def _probed(D, S, causal, defer, glob):
    """The case's inputs (FA3-paper shape, bf16) and three probed forwards (launch.HOPPER_FWD_PROBE; ``glob``:
    HOPPER_FWD_PROBE_GLOBAL, whose probe holds each warpgroup's start and end after the tiles' slots); returns (B, H,
    q, k, v, SMs, the probe of the last)."""
    B, H = 16384 // S, 2048 // D
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    probe = torch.zeros(sms * 64 * 2 * 4 + (sms * 4 if glob else 0), dtype=torch.int64, device="cuda")
    saved = launch.HOPPER_FWD_CHAIN_DEFER
    launch.HOPPER_FWD_CHAIN_DEFER = (64, 128) if defer else ()
    launch.HOPPER_FWD_PROBE, launch.HOPPER_FWD_PROBE_GLOBAL = probe, glob
    try:
        for _ in range(3):
            probe.zero_()
            flashkernels.flash_attn_func(q, k, v, causal=causal)
        torch.cuda.synchronize()
    finally:
        launch.HOPPER_FWD_PROBE, launch.HOPPER_FWD_PROBE_GLOBAL = None, False
        launch.HOPPER_FWD_CHAIN_DEFER = saved
    return B, H, q, k, v, sms, probe


def run_global(D, S, causal, defer):
    """The same launch with %globaltimer (ns, one clock for all SMs): when each warpgroup starts and ends against the
    kernel's time, and a loop step in ns (against the %clock64 run's clocks: the SM clock the kernel ran at); causal,
    the ends grouped by the static order's pairs a CTA and j (its id mod n_m / 2). The FA3-paper shapes make at least
    as many tiles (pairs) as SMs, so the grid is one CTA an SM, as the probe's layout here assumes."""
    B, H, q, k, v, sms, probe = _probed(D, S, causal, defer, True)
    ms = triton.testing.do_bench(lambda: flashkernels.flash_attn_func(q, k, v, causal=causal))
    t = probe[: sms * 512].view(sms, 64, 2, 4).cpu()
    se = probe[sms * 512:].view(sms, 2, 2).cpu()
    t_start, t_end = se[..., 0].flatten(), se[..., 1].flatten()
    ok = (t_start > 0) & (t_end > 0)
    t0 = int(t_start[ok].min())
    starts = [(int(x) - t0) / 1e3 for x in t_start[ok]]
    ends = [(int(x) - t0) / 1e3 for x in t_end[ok]]
    med = statistics.median
    loops = []
    n_m = S // 128
    for p in range(sms):
        for w in range(2):
            for c in range(63):
                t2, t0n = int(t[p, c, w, 2]), int(t[p, c + 1, w, 0])
                if not (t2 and t0n):
                    continue
                steps, _ = _next_steps(p, c, sms, n_m, causal)
                if steps:
                    loops.append((steps, t0n - t2))
    step_ns = sum(dt for _, dt in loops) / max(1, sum(s for s, _ in loops))
    counts = [int((t[p, :, w, 0] != 0).sum()) for p in range(sms) for w in range(2)]
    print(f"D={D:3d} S={S:5d} causal={int(causal)} defer={defer} (globaltimer): kernel {ms * 1e3:7.1f} us; warpgroups"
          f" start {med(starts):6.2f} us after the first (max {max(starts):6.2f}), end at {med(ends):7.1f} (min"
          f" {min(ends):7.1f}, max {max(ends):7.1f}); kernel - last end {ms * 1e3 - max(ends):6.1f} us; a loop step"
          f" {step_ns:6.1f} ns; tiles a warpgroup {min(counts)}-{max(counts)}"
          f" (n = {len(starts)} warpgroups)", flush=True)
    if causal:  # (the ends by the static order's pairs a CTA and its pairs' j: CTA i runs j = i mod n_m / 2 when the
        # programs are a multiple of it; rotated or dynamic orders mix them)
        half, n_p = n_m // 2, B * H * (n_m // 2)
        groups = {}
        for p in range(sms):
            for w in range(2):
                if ok[p * 2 + w]:
                    key = (-(-(n_p - p) // sms), p % half)
                    groups.setdefault(key, []).append((int(t_end[p * 2 + w]) - t0) / 1e3)
        print("    ends by (static pairs, CTA id mod n_m / 2): " + ", ".join(
            f"{k}: {med(v):6.1f} [{min(v):6.1f}, {max(v):6.1f}]" for k, v in sorted(groups.items())), flush=True)
    if DUMP:  # (one row a warpgroup)
        with open(DUMP, "a") as f:
            for p in range(sms):
                for w in range(2):
                    f.write(f"{D},{S},{int(causal)},{defer},{p},{w},{(int(t_start[p * 2 + w]) - t0) / 1e3:.3f},"
                            f"{(int(t_end[p * 2 + w]) - t0) / 1e3:.3f},{counts[p * 2 + w]}\n")


def run(D, S, causal, defer):
    B, H, q, k, v, sms, probe = _probed(D, S, causal, defer, False)
    box = []
    try:
        mhz = _clock_mhz(lambda: box.append(triton.testing.do_bench(
            lambda: flashkernels.flash_attn_func(q, k, v, causal=causal))))
    except Exception:  # (no NVML)
        mhz = None
    ms = box[0] if box else triton.testing.do_bench(lambda: flashkernels.flash_attn_func(q, k, v, causal=causal))
    t = probe.view(sms, 64, 2, 4).cpu()
    pair, epi, loop, per_step, place, qwait = [], [], [], [], [], []
    n_blk = S // 128
    n_m, n_bh = S // 128, B * H
    steps_of, spans, n_tiles = [], [], []
    for p in range(sms):
        for w in range(2):
            for c in range(63):
                t0, t1, t2, t3 = (int(t[p, c, w, i]) for i in range(4))
                t0n = int(t[p, c + 1, w, 0])
                if not (t0 and t1 and t2 and t3 and t0n):
                    continue
                pair.append(t1 - t0)
                place.append(t3 - t0)
                qwait.append(t1 - t3)
                epi.append(t2 - t1)
                loop.append(t0n - t2)
                if not causal:
                    per_step.append((t0n - t2) / (n_blk - 1))
                else:
                    steps, pn = _next_steps(p, c, sms, n_m, causal)
                    if pn < n_bh * (n_m // 2):
                        steps_of.append((steps, t0n - t2))
            last = max((c for c in range(64) if int(t[p, c, w, 2])), default=None)
            if last is not None and int(t[p, 0, w, 0]):
                spans.append(int(t[p, last, w, 2]) - int(t[p, 0, w, 0]))
                n_tiles.append(last + 1)
    med = statistics.median
    tile = med(pair) + med(epi) + med(loop)
    line = (f"D={D:3d} S={S:5d} causal={int(causal)} defer={defer}: boundary step {med(pair):6.0f} (next tile's place"
            f" {med(place):5.0f}, Q wait and step {med(qwait):5.0f})  end {med(epi):6.0f}"
            f"  next loop {med(loop):7.0f}")
    if per_step:
        line += f" ({med(per_step):5.0f} a step)"
    line += f"  | boundary + end {100 * (med(pair) + med(epi)) / tile:4.1f}% of a tile  (n = {len(pair)})"
    print(line, flush=True)
    if causal and steps_of:
        long = [dt / s for s, dt in steps_of if s >= 2]
        per = sum(dt for _, dt in steps_of) / max(1, sum(s for s, _ in steps_of))
        print(f"    causal loop: {per:6.0f} clocks a step over all tiles, median {med(long):6.0f} over tiles of >= 3"
              " blocks", flush=True)
    step = med(per_step) if per_step else sum(dt for _, dt in steps_of) / max(1, sum(s for s, _ in steps_of))
    clocks = ms * 1e3 * mhz if mhz else float("nan")
    n_t = med(n_tiles) if n_tiles else 0
    # a warpgroup's steps in its span: every tile's loop but the first's (T0 of tile 0 is after it)
    pairs_total = n_bh * (n_m // 2) if causal else None
    print(f"    kernel {ms * 1e3:7.1f} us at {mhz} MHz = {clocks:8.0f} clocks; a warpgroup's span (tile 0's loop end to"
          f" its last tile's end, {n_t:.0f} tiles) median {med(spans) if spans else 0:8.0f}, max"
          f" {max(spans) if spans else 0:8.0f}; {n_t - 1:.0f} x (boundary + end + next loop) at the medians"
          f" {(n_t - 1) * tile:8.0f}; step used {step:5.0f}"
          + (f"; {pairs_total} pairs on {sms} CTAs" if causal else ""), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="64:1024:0,64:1024:1,128:1024:0,128:4096:0")
    ap.add_argument("--defer", default="0,1")
    ap.add_argument("--set", default="", help="'NAME=VALUE;...': launch attributes (Python literals) set for the whole"
                    " run, e.g. 'HOPPER_FWD_SHORT={64: (128, 4, 2048, 4096)}'")
    ap.add_argument("--global-timer", action="store_true", help="also a run with %%globaltimer (launch."
                    "HOPPER_FWD_PROBE_GLOBAL): each warpgroup's start and end against the kernel's time")
    ap.add_argument("--dump", default=None, help="with --global-timer: append each warpgroup's start, end (us after the"
                    " first start) and tile count to this CSV")
    a = ap.parse_args()
    global DUMP
    DUMP = a.dump
    try:
        set_switches(a.set, "--set")
    except ValueError as e:
        raise SystemExit(str(e))
    print(torch.cuda.get_device_name(0), "SM clocks (%clock64)")
    for case in a.cases.split(","):
        D, S, causal = (int(x) for x in case.split(":"))
        for d in (int(x) for x in a.defer.split(",")):
            run(D, S, bool(causal), d)
            if a.global_timer:
                run_global(D, S, bool(causal), d)


if __name__ == "__main__":
    main()
