"""Compile the KV-cache kernels for sm_90a on any machine (no GPU needed) and report resources.

    PYTHONPATH=src python scripts/compile_check_kvcache.py [--dims 64,128,256] [--dtypes bf16,fp16,fp32]
        [--rows 4,64] [--pages 0,16,256] [--configs BM:BN:W:S,...]

Same idea as scripts/compile_check.py (attention): Triton's compiler, then ptxas -v on the PTX,
printing shared memory, registers and spill bytes. For each dtype x head dim x packed rows
(Sq * Hq / Hkv: 4 is GQA-4 decode, 64 a prefill chunk) x cache layout (0 contiguous, else the
page size) the attention kernel is compiled with the config ``launch.attn_config`` picks on an
H100 (or each of ``--configs``), with and without SPLIT, plus the feature flags in --flags;
then the append and combine kernels. Exit 1 on a compile failure or smem over the H100's.
"""
import argparse
import itertools
import os
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compile_check as cc  # noqa: E402  (ptxas_report, H100_SMEM)

from flashkernels.ops.attention.launch import block_d, dot_precision  # noqa: E402
from flashkernels.ops.kvcache import launch  # noqa: E402
from flashkernels.ops.kvcache.kernels.decode import (kvcache_append_kernel, kvcache_attn_kernel,  # noqa: E402
                                                     kvcache_combine_kernel)

TT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
INT_PTRS = {"CacheSeqlens", "BatchIdx", "Leftpad", "BlockTable"}
F32_PTRS = {"Lse", "OPart", "LPart", "Alibi"}


def build(fn, dt: str, consts: dict) -> ASTSource:
    sig = {}
    for i, n in enumerate(fn.arg_names):
        if fn.params[i].is_constexpr:
            sig[n] = "constexpr"
        elif n in INT_PTRS:
            sig[n] = "*i32"
        elif n in F32_PTRS:
            sig[n] = "*fp32"
        elif n[0].isupper():
            sig[n] = f"*{dt}"
        elif n in ("sm_scale", "softcap"):
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
    names = fn.arg_names
    # What Triton's launcher specialises on a real call: pointers (torch allocations) and strides
    # that are multiples of 16 get tt.divisibility=16, which lets the loads vectorise. Every
    # stride here is a multiple of 16 at the shapes that matter (D = 64..256) except the block
    # table's and the alibi slopes' batch strides (max_blocks, Hq: anything).
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if sig[n].startswith("*") or (n.startswith("stride_") and n not in ("stride_btb", "stride_ab"))}
    return ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()},
                     attrs=attrs)


def go(tag, fn, dt, consts, warps, stages=1) -> bool:
    try:
        out = triton.compile(build(fn, dt, consts), target=GPUTarget("cuda", 90, 32),
                             options={"num_warps": warps, "num_stages": stages})
        smem = out.metadata.shared
        flag = "" if smem <= cc.H100_SMEM else "  SMEM TOO LARGE"
        print(f"{tag:72s} smem {smem:>6}  {cc.ptxas_report(out.asm['ptx'])}{flag}", flush=True)
        return not flag
    except Exception as e:  # report and go on
        print(f"{tag:72s} FAILED {str(e)[-1200:]}", flush=True)
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="64,128,256")
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--rows", default="4,64", help="packed query rows Sq * Hq / Hkv")
    ap.add_argument("--pages", default="0,16,256", help="0 = contiguous cache, else the page size")
    ap.add_argument("--flags", default="causal", help="comma list of causal,window,softcap,alibi,leftpad "
                    "(all on together in one extra compile each config), or 'none'")
    ap.add_argument("--configs", default="", help="BM:BN:WARPS:STAGES,... instead of launch.attn_config")
    ap.add_argument("--paths", default="old,fast,tma", help="K/V paths (launch.Config fast/evict/tma): comma "
                    "list of old, fast, evict (fast + evict_first), tma (contiguous and page %% BLOCK_N == 0)")
    args = ap.parse_args()
    dev = torch.device("cuda", 0)
    launch._smem_limit = lambda idx: cc.H100_SMEM  # what an H100 reports (no GPU here)
    ok = True
    extra = [] if args.flags == "none" else args.flags.split(",")
    for dname in args.dtypes.split(","):
        dtype, dt = DTYPES[dname], TT[DTYPES[dname]]
        for d in map(int, args.dims.split(",")):
            bd = block_d(d)
            for rows in map(int, args.rows.split(",")):
                for i_cfg in range(len(args.configs.split(",")) if args.configs else 1):
                    for page in map(int, args.pages.split(",")):
                        cfg = (launch.Config(*map(int, args.configs.split(",")[i_cfg].split(":"))) if args.configs
                               else launch.attn_config(rows, d, dtype, dev, page > 0))  # (as launched)
                        for split, feats, path in itertools.product(
                                (False, True), [()] + ([tuple(extra)] if extra else []), args.paths.split(",")):
                            if path == "tma" and page % cfg.block_n:
                                continue
                            consts = dict(
                                HEAD_DIM=d, BLOCK_D=bd, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                                PAGE_SIZE=max(page, 1), PAGED=page > 0, HAS_BATCH_IDX=False,
                                HAS_LEFTPAD="leftpad" in feats, IS_CAUSAL="causal" in feats,
                                HAS_WINDOW="window" in feats, HAS_SOFTCAP="softcap" in feats,
                                HAS_ALIBI="alibi" in feats, SPLIT=split,
                                DOT_PRECISION=dot_precision(dtype, False),
                                FAST=path != "old", KV_EVICT="evict_first" if path == "evict" else "",
                                USE_TMA=path == "tma")
                            if consts["IS_CAUSAL"] and consts["HAS_WINDOW"]:
                                consts["IS_CAUSAL"] = False  # the launcher folds causal into the window
                            tag = (f"attn {dname} D={d:<3} rows={rows:<3} {tuple(cfg[:4])} "
                                   f"{'paged' + str(page) if page else 'contig'} split={int(split)}"
                                   f"{' +' + '+'.join(feats) if feats else ''} {path}")
                            ok &= go(tag, kvcache_attn_kernel, dt, consts, cfg.num_warps, cfg.num_stages)
            for ns in (2, 33, 128):
                bs, bdc = launch.combine_config(ns, d)
                ok &= go(f"combine {dname} D={d} splits={ns}", kvcache_combine_kernel, dt,
                         dict(HEAD_DIM=d, BLOCK_S=bs, BLOCK_DC=bdc), 4)
            for page in (0, 16):
                ok &= go(f"append {dname} D={d} Hkv=8 {'paged' if page else 'contig'}", kvcache_append_kernel, dt,
                         dict(HEAD_DIM=d, BLOCK_D=triton.next_power_of_2(d), BLOCK_H=8, PAGE_SIZE=max(page, 1),
                              PAGED=page > 0, HAS_BATCH_IDX=page == 0), 4)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
