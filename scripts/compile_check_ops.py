"""Compile the RMSNorm, GLU and RoPE kernels for sm_90a on any machine (no GPU needed).

    PYTHONPATH=src python scripts/compile_check_ops.py

Same idea as scripts/compile_check.py (which covers attention): Triton's compiler plus ptxas -v
on the PTX, printing shared memory, registers and spill bytes for representative constexprs
(the block widths launch.py picks on a GPU). 2026-11-25: all compile; the 65536-column RMSNorm
blocks spill 1-4.5 KB (32 warps leave 64 registers a thread), to tune in issue 4.
"""
import os
import sys

import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compile_check as cc  # noqa: E402  (ptxas_report)
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from flashkernels.ops.rms_norm.kernels.rms_norm import (rms_norm_bwd_kernel,  # noqa: E402
                                                        rms_norm_dw_reduce_kernel, rms_norm_fwd_kernel)
from flashkernels.ops.rope.kernels.rope import rope_kernel  # noqa: E402
from flashkernels.ops.swiglu.kernels.glu import glu_bwd_kernel, glu_fwd_kernel  # noqa: E402


def build(fn, ptr, floats, consts, i64=()):
    """ASTSource for ``fn``: pointer params typed by ``ptr``, fp32 for ``floats``, i64 for
    ``i64``, i32 for the other scalars, and ``consts`` for the constexprs."""
    sig = {}
    for i, n in enumerate(fn.arg_names):
        if fn.params[i].is_constexpr:
            sig[n] = "constexpr"
        elif n in ptr:
            sig[n] = "*" + ptr[n]
        elif n in floats:
            sig[n] = "fp32"
        else:
            sig[n] = "i64" if n in i64 else "i32"
    names = fn.arg_names
    return ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()})


def go(tag, fn, ptr, floats, consts, warps, i64=()):
    try:
        out = triton.compile(build(fn, ptr, floats, consts, i64), target=GPUTarget("cuda", 90, 32),
                             options={"num_warps": warps})
        print(f"{tag:50s} smem {out.metadata.shared:>6} {cc.ptxas_report(out.asm['ptx'])}", flush=True)
    except Exception as e:  # report and go on
        print(f"{tag:50s} FAILED {str(e)[-800:]}", flush=True)


def main():
    for dt in ("bf16", "fp32"):
        for block, single, w in ((4096, True, 8), (65536, True, 32), (65536, False, 32)):
            for mode in (0, 1, 2):
                p = {n: dt for n in "X R W Y H".split()}; p["RSTD"] = "fp32"
                go(f"rms_fwd {dt} B{block} single={single} mode={mode}", rms_norm_fwd_kernel, p, {"eps", "offset"},
                   dict(HAS_WEIGHT=True, HAS_RESIDUAL=True, MODE=mode, BLOCK=block, SINGLE=single), w)
            p = {n: dt for n in "X W DY DH DX".split()}; p["RSTD"] = "fp32"; p["DW"] = "fp32"
            for prefetch, strided in (((0, False), (1, False), (1, True)) if single else ((1, False),)):
                go(f"rms_bwd {dt} B{block} single={single} prefetch={prefetch} strided={strided}",
                   rms_norm_bwd_kernel, p, {"offset"}, dict(HAS_WEIGHT=True, HAS_DH=True, BLOCK=block, SINGLE=single,
                                                            PREFETCH=prefetch, STRIDED=strided), w)
        go(f"rms_dw {dt}", rms_norm_dw_reduce_kernel, {"P": "fp32", "DW": dt}, set(), dict(BLOCK_N=16, BLOCK_P=512), 4)
        for act in (0, 1, 2):
            go(f"glu_fwd {dt} act={act}", glu_fwd_kernel, {n: dt for n in "G U OUT".split()}, set(), dict(ACT=act, BLOCK=1024), 4, i64=("n",))
            go(f"glu_bwd {dt} act={act}", glu_bwd_kernel, {n: dt for n in "DO G U DG DU".split()}, set(), dict(ACT=act, BLOCK=1024), 4, i64=("n",))
        for pos_mode in (0, 1, 2):
            for inter in (False, True):
                p = {n: dt for n in "X OUT K KOUT".split()}; p["COS"] = dt; p["SIN"] = dt; p["POS"] = "i64"
                go(f"rope {dt} pos={pos_mode} inter={inter}", rope_kernel, p, set(),
                   dict(POS_MODE=pos_mode, INTERLEAVED=inter, FULL_TABLE=False, CONJ=False, HAS_K=True, BLOCK_H=16, BLOCK_R=64, BLOCK_P=0), 4)


if __name__ == "__main__":
    main()
