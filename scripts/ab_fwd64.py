"""A/B: the Gluon forward (kernels/fwd_hopper.py) at head dim 64, two vs three consumer warpgroups.

    PYTHONPATH=src python scripts/ab_fwd64.py [--seqlens 512 1024 ...] [--rep 100] [--dry]

One GPU process (an H100): for each variant of ``VARIANTS`` ((BLOCK_N, STAGES, BLOCK_M[, persistent]),
set as ``launch.HOPPER_FWD_CONFIGS[64]`` for the call, with HOPPER_FWD_MIN_SEQLEN lifted and, when
persistent, 64 added to HOPPER_FWD_PERSISTENT_DIMS), first its out and lse on small shapes against the
float64 definition under TESTING.md's policy (max|out - ref| <= 2 max|pt - ref| + one rounding
step; pt: the reference in bf16): plain and causal with Sq = 640 (not a multiple of 192: the last
tile's last warpgroup has no rows), Sq = 128 causal (one tile, 3 WGs: two of them idle), GQA,
causal Sq != Sk both ways (the WINDOW build, rows that see no key), a sliding window, softcap +
sink causal and with a window, and softcap + ALiBi + sink causal (ALiBi runs BLOCK_M 128). A
variant that fails is not timed (the script goes on and says so; exit status 1 at the end).

Then times (``triton.testing.do_bench`` medians, flash_attn_func) at D = 64, bf16, B·S = 16k,
H·D = 2048 (the FA3 grid), causal and not: the Triton forward (64 out of HOPPER_FWD_CONFIGS),
each variant, SDPA cuDNN and SDPA flash (FA2) on the same tensors; each variant's output at each
shape is compared with the Triton kernel's before it is timed. Prints TF/s (4·B·H·S²·D, halved
when causal) and ratios, writes ``$OUT/ab_fwd64.csv`` when OUT is set.

``--dry`` (no GPU): builds the variant and shape lists, compiles each variant for sm_90a through
compile_check (plain, causal; registers, spills, shared memory) and stops.
"""
import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests")]

from flashkernels import flash_attn_func  # noqa: E402
from flashkernels.ops.attention import launch  # noqa: E402

D = 64
# name -> (BLOCK_N, STAGES, BLOCK_M): BLOCK_M 128 = two consumer warpgroups (the library's config
# at D = 128), 192 = three (FA3's at D = 64). BLOCK_N 256 spills with two (288 B, serialised wgmma)
# and does not compile with three (128-register cap); 192 is no power of two (Gluon's shapes).
VARIANTS = {
    "wg2-n128-s2": (128, 2, 128),
    "wg2-n128-s2-persist": (128, 2, 128, True),  # (launch.hopper_fwd_persistent: the plain non-causal build)
    "wg2-n128-s2-chain": (128, 2, 128, "chain"),  # (persistent with launch.HOPPER_FWD_CHAIN)
    "wg2-n128-s3-chain": (128, 3, 128, "chain"),
    "wg2-n128-s3-chain-causal": (128, 3, 128, "chain-causal"),  # (causal persistent too: pairs of tiles)
    "wg2-n128-s3": (128, 3, 128),
    "wg3-n128-s2": (128, 2, 192),
    "wg3-n128-s3": (128, 3, 192),
}
# (B, Hq, Hkv, Sq, Sk, causal, window, softcap, alibi, sink)
CHECKS = [
    (2, 4, 2, 640, 640, False, (-1, -1), 0.0, False, False),
    (2, 4, 2, 640, 640, True, (-1, -1), 0.0, False, False),
    (1, 2, 1, 128, 128, True, (-1, -1), 0.0, False, False),
    (2, 4, 1, 256, 640, True, (-1, -1), 0.0, False, False),
    (2, 4, 1, 640, 256, True, (-1, -1), 0.0, False, False),
    (2, 4, 2, 512, 512, False, (100, 37), 0.0, False, False),
    (2, 4, 2, 384, 384, True, (-1, -1), 2.0, False, True),
    (2, 4, 2, 640, 640, False, (200, 0), 2.0, False, True),
    (2, 4, 2, 384, 384, True, (-1, -1), 2.0, True, True),  # (ALiBi: BLOCK_M 128, launch.hopper_fwd_config)
]


def shapes(seqlens):
    """(B, H, S, causal) of the FA3 grid at D = 64."""
    return [(16384 // S, 2048 // D, S, causal) for S in seqlens for causal in (False, True)]


def tflops(B, H, S, causal, ms):
    return 4 * B * H * S * S * D * (0.5 if causal else 1.0) / ms / 1e9


_SAVED = (dict(launch.HOPPER_FWD_MIN_SEQLEN), launch.HOPPER_FWD_PERSISTENT_DIMS, launch.HOPPER_FWD_CHAIN,
          launch.HOPPER_FWD_PERSISTENT_CAUSAL)


def set_variant(cfg):
    """The Gluon forward at D = 64 with ``cfg`` ((BLOCK_N, STAGES, BLOCK_M[, persistent])) at every
    seqlen (HOPPER_FWD_MIN_SEQLEN lifted); None: the Triton one."""
    launch.HOPPER_FWD_CONFIGS.pop(D, None)
    launch.HOPPER_FWD_MIN_SEQLEN.clear()
    launch.HOPPER_FWD_MIN_SEQLEN.update(_SAVED[0])
    launch.HOPPER_FWD_PERSISTENT_DIMS = _SAVED[1]
    launch.HOPPER_FWD_CHAIN = _SAVED[2]
    launch.HOPPER_FWD_PERSISTENT_CAUSAL = _SAVED[3]
    if cfg is not None:
        launch.HOPPER_FWD_CONFIGS[D] = tuple(cfg[:3])
        launch.HOPPER_FWD_MIN_SEQLEN.pop(D, None)
        if len(cfg) > 3 and cfg[3]:
            launch.HOPPER_FWD_PERSISTENT_DIMS = (*_SAVED[1], D)
            launch.HOPPER_FWD_CHAIN = str(cfg[3]).startswith("chain")
            launch.HOPPER_FWD_PERSISTENT_CAUSAL = cfg[3] == "chain-causal"


def dry(args):
    import compile_check as cc

    print(f"variants {VARIANTS}\nshapes {shapes(args.seqlens)}\nchecks {len(CHECKS)}", flush=True)
    ok = True
    for name, (bn, st, bm, *_) in VARIANTS.items():
        for causal in (False, True):
            ok &= cc.report(f"{name} causal={int(causal)}",
                            lambda: cc.compile_hopper_fwd(torch.bfloat16, causal, args.sass, D=D, config=(bm, bn, st)))
    return ok


def check_inputs():
    """CHECKS with their inputs (CUDA, (B, S, H, D)), keywords and float64 / bf16 references."""
    from helpers import f64_flash_attention
    from flashkernels.ops.attention.reference import attention_reference

    out = []
    g = torch.Generator().manual_seed(0)
    for B, Hq, Hkv, Sq, Sk, causal, window, softcap, alibi, sink in CHECKS:
        q = torch.randn(B, Sq, Hq, D, generator=g).bfloat16().cuda()
        k, v = (torch.randn(B, Sk, Hkv, D, generator=g).bfloat16().cuda() for _ in range(2))
        kw = dict(causal=causal, window_size=window, softcap=softcap)
        if alibi:
            kw["alibi_slopes"] = (torch.rand(B, Hq, generator=g) * 0.3).cuda()
        if sink:
            kw["learnable_sink"] = (torch.randn(Hq, generator=g) * 2).cuda()
        cpu = {n: x.cpu() for n, x in kw.items() if torch.is_tensor(x)}
        ref = f64_flash_attention(q.cpu(), k.cpu(), v.cpu(), causal=causal, window_size=window, softcap=softcap,
                                  alibi=cpu.get("alibi_slopes"), sink=cpu.get("learnable_sink"))
        pt_out, pt_lse = attention_reference(*(x.transpose(1, 2) for x in (q, k, v)), causal=causal,
                                             causal_align="bottom_right", window_size=window, softcap=softcap,
                                             alibi_slopes=kw.get("alibi_slopes"), sink=kw.get("learnable_sink"),
                                             compute_dtype=torch.bfloat16)
        tag = f"B{B} H{Hq}/{Hkv} Sq{Sq} Sk{Sk} causal{int(causal)} win{window}" + \
            "".join(f" +{n}" for n, on in (("softcap", softcap), ("alibi", alibi), ("sink", sink)) if on)
        out.append((tag, (q, k, v), kw, ref, (pt_out.transpose(1, 2), pt_lse)))
    return out


def check_variant(name, cfg, cases) -> bool:
    from helpers import assert_close_policy, data_magnitude

    set_variant(cfg)
    good = True
    for tag, (q, k, v), kw, (ref_out, ref_lse), (pt_out, pt_lse) in cases:
        n = launch.hopper_fwd_launches
        try:
            o, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True, **kw)
            torch.cuda.synchronize()
            assert launch.hopper_fwd_launches == n + 1, "the Gluon forward did not run"
            mag = data_magnitude(q, k, v)
            e_out, b_out = assert_close_policy(o, ref_out, pt_out, name="out", data_magnitude=mag)
            e_lse, b_lse = assert_close_policy(lse, ref_lse, pt_lse, name="lse", data_magnitude=mag)
            print(f"  check {name:12s} {tag}: out {e_out:.2e} <= {b_out:.2e}, lse {e_lse:.2e} <= {b_lse:.2e}",
                  flush=True)
        except Exception as exc:  # report, do not time this variant
            print(f"  check {name:12s} {tag}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            good = False
    return good


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqlens", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--rep", type=float, default=100)
    ap.add_argument("--dry", action="store_true", help="no GPU: compile the variants for sm_90a and stop")
    ap.add_argument("--sass", action="store_true", help="with --dry: per-loop SASS counts")
    args = ap.parse_args()
    # (this script changes switch dicts in place, which the forward's launch plans do not see: plans off)
    launch.HOPPER_FWD_PLANS = False
    if args.dry:
        sys.exit(0 if dry(args) else 1)

    import triton
    from triton.testing import do_bench

    from exp_fwd_dims import sdpa_times

    t0 = time.time()
    gpu = torch.cuda.get_device_name()
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=ROOT).stdout.strip()
    print(f"{gpu}, torch {torch.__version__}, triton {triton.__version__}, {sha}; D={D} bf16 fwd", flush=True)
    saved = dict(launch.HOPPER_FWD_CONFIGS)
    cases = check_inputs()
    variants = {}
    for name in args.variants:
        if check_variant(name, VARIANTS[name], cases):
            variants[name] = VARIANTS[name]
        else:
            print(f"{name}: NOT TIMED (a check failed)", flush=True)
    print(f"checks done in {time.time() - t0:.0f} s", flush=True)

    rows = []
    for B, H, S, causal in shapes(args.seqlens):
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        ms = {}
        set_variant(None)
        ref, ref_lse, _ = flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
        ms["triton"] = do_bench(lambda: flash_attn_func(q, k, v, causal=causal), rep=args.rep, return_mode="median")
        for name, cfg in variants.items():
            set_variant(cfg)
            n = launch.hopper_fwd_launches
            out, lse, _ = flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
            err = (out.float() - ref.float()).abs().max().item()
            lerr = (lse - ref_lse).abs().max().item()
            if launch.hopper_fwd_launches == n or not err <= 2e-2 or not lerr <= 1e-3:
                print(f"  {name} S={S} causal={int(causal)}: Gluon ran {launch.hopper_fwd_launches > n}, "
                      f"|out - triton| {err:.3g}, |lse - triton| {lerr:.3g}: NOT TIMED", flush=True)
                continue
            ms[name] = do_bench(lambda: flash_attn_func(q, k, v, causal=causal), rep=args.rep, return_mode="median")
        set_variant(None)
        ms.update(sdpa_times(q, k, v, causal, args.rep))
        cells = "  ".join(f"{n} {tflops(B, H, S, causal, t):5.0f}" for n, t in ms.items())
        print(f"B={B:2d} H={H} S={S:5d} causal={int(causal)}  {cells}", flush=True)
        for n, t in ms.items():
            ratio = {f"x_{p}": (ms[p] / t if p in ms else float("nan")) for p in ("cudnn", "fa2", "triton")}
            rows.append(dict(provider=n, config=str(VARIANTS.get(n, "")), D=D, B=B, H=H, S=S, causal=int(causal),
                             ms=t, tflops=tflops(B, H, S, causal, t), **ratio, gpu=gpu, torch=torch.__version__,
                             triton=triton.__version__, git_sha=sha))
    launch.HOPPER_FWD_CONFIGS.clear()
    launch.HOPPER_FWD_CONFIGS.update(saved)

    print("\nratios over the grid (min-max; non-causal | causal):", flush=True)
    for n in ["triton", *variants]:
        parts = []
        for c in (0, 1):
            r = [x for x in rows if x["provider"] == n and x["causal"] == c]
            if r:
                parts.append(" ".join(f"{p} {min(x[f'x_{p}'] for x in r):.2f}-{max(x[f'x_{p}'] for x in r):.2f}"
                                      for p in ("cudnn", "fa2", "triton")))
        print(f"  {n:12s} " + " | ".join(parts), flush=True)
    if os.environ.get("OUT") and rows:
        path = Path(os.environ["OUT"]) / "ab_fwd64.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {path}", flush=True)
    print(f"total {time.time() - t0:.0f} s", flush=True)
    sys.exit(0 if len(variants) == len(args.variants) else 1)


if __name__ == "__main__":
    main()
