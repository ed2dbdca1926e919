"""A count, not a measurement: list-scheduling model of the varlen forward's launches (session 25).

    python scripts/sim_varlen_schedule.py [--sms 132] [--block-us 1.7] [--grid-us 3.0] [--persistent-us 1.9]

`bench varlen`'s case (bench.features.VARLEN_CASE's lengths, H 16, 128-row query tiles) against dense
at the mean length (B 16, S 1024: persistent and chained, 1.5 µs a tile). A tile of n key blocks costs
n · block_us plus a per-tile overhead: grid_us for a CTA of the grid launch, persistent_us for a tile
of a persistent CTA. Schedules: the grid (tiles in grid order, each to the SM that frees first, one empty
CTA a sequence at 1 µs), a persistent launch whose CTAs take tiles from a counter (the same list
scheduling), one whose CTAs stride the tiles statically, and the dynamic one with the sequences longest
first (each one's tiles from its last, the heads innermost). Prints each schedule's time and its
TF/s over dense's (FLOPs on real tokens only). No GPU, no torch needed.
"""
import argparse
import heapq
import math

LENS = [1183, 1723, 374, 460, 808, 1456, 1171, 1977, 1102, 1453, 890, 995, 242, 533, 781, 1236]  # (_seqlens(16, 16384))
H, BLOCK = 16, 128


def tiles(causal, order="grid"):
    """(key blocks) of every tile in launch order; 0 for an empty grid CTA."""
    out = []
    seqs = sorted(range(len(LENS)), key=lambda b: -LENS[b]) if order == "sorted" else range(len(LENS))
    if order == "sorted":  # (the heads innermost, each sequence's tiles from its last)
        for b in seqs:
            nt = math.ceil(LENS[b] / BLOCK)
            for x in reversed(range(nt)):
                out += [math.ceil(min(x * BLOCK + BLOCK, LENS[b]) / BLOCK) if causal else nt] * H
        return out
    for _ in range(H):
        for L in LENS:
            nt = math.ceil(L / BLOCK)
            out += [math.ceil(min(x * BLOCK + BLOCK, L) / BLOCK) if causal else nt for x in range(nt)]
            if order == "grid":
                out.append(0)  # (at most one empty CTA a sequence: counted as one)
    return out


def list_schedule(work, sms, block_us, tile_us, empty_us=1.0):
    free = [0.0] * sms
    for n in work:
        t = heapq.heappop(free)
        heapq.heappush(free, t + (n * block_us + tile_us if n else empty_us))
    return max(free)


def static_stride(work, sms, block_us, tile_us):
    load = [0.0] * sms
    for i, n in enumerate(w for w in work if w):
        load[i % sms] += n * block_us + tile_us
    return max(load)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sms", type=int, default=132)
    ap.add_argument("--block-us", type=float, default=1.7)
    ap.add_argument("--grid-us", type=float, default=3.0)
    ap.add_argument("--persistent-us", type=float, default=1.9)
    a = ap.parse_args()
    for causal in (False, True):
        half = 0.5 if causal else 1.0
        fl_var, fl_den = sum(L * L for L in LENS) * half, 16 * 1024 * 1024 * half
        if causal:  # (dense: pairs of query tiles, n_m + 1 blocks a pair, statically strided)
            dense = static_stride([9] * (16 * H * 4), a.sms, a.block_us, 2 * 1.5)
        else:
            dense = static_stride([8] * (16 * H * 8), a.sms, a.block_us, 1.5)
        rows = {
            "grid": list_schedule(tiles(causal), a.sms, a.block_us, a.grid_us),
            "persistent, static stride": static_stride(tiles(causal, "packed"), a.sms, a.block_us, a.persistent_us),
            "persistent, dynamic": list_schedule(tiles(causal, "packed"), a.sms, a.block_us, a.persistent_us),
            "persistent, dynamic, sorted": list_schedule(tiles(causal, "sorted"), a.sms, a.block_us, a.persistent_us),
        }
        print(f"{'causal' if causal else 'non-causal'}: dense {dense:.1f} us")
        for name, t in rows.items():
            print(f"  {name:30s} {t:7.1f} us  varlen / dense {(fl_var / t) / (fl_den / dense):.3f}")


if __name__ == "__main__":
    main()
