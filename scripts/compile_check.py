"""Compile the attention kernels for sm_90 on any machine (no GPU needed) and report resources.

    PYTHONPATH=src python scripts/compile_check.py [--dims 64,128,256] [--dtypes bf16,fp16,fp32]
        [--causal 0,1] [--mask 0,1,2] [--window 0,1] [--softcap 0,1] [--alibi 0,1] [--sink 0,1]
        [--varlen 0,1]

For each kernel x head dim x dtype x flags it runs Triton's compiler with the block sizes that
launch.py would pick on an H100, then ptxas -v on the PTX, and prints registers, spill bytes
and shared memory. Catches compile errors and register spills before any GPU time is spent.
With the kernel "hopper" (in --kernels by default) it also builds the Gluon Hopper forward and
backward (kernels/fwd_hopper.py, bwd_hopper.py, bwd_hopper256.py: what launch.py runs on an H100 for
bf16/fp16) at their head dims among --dims, for the dtypes and causal values asked, with the feature
flags asked (no mask): the forward's --softcap / --alibi / --sink / --window / --varlen (a varlen
build is a window build, causal or not: the same kernel for both), the backward's (D = 64 and 128)
--softcap / --alibi / --window / --varlen (a sink is the build without).
With --sass it also disassembles the cubin (Triton's bundled nvdisasm) and prints, for every
loop that issues HGMMA (the tensor-core loops), its instruction count, the counts of the
instructions that matter there, and ``shortest``: the instructions of an iteration that takes every
branch over code (loop_shortest_path: the masks of the blocks a diagonal or a sequence end cuts, the
rare rescale of O), which is the usual iteration's issue count where the count includes such code
(the varlen forward's loop: 772 instructions, 415 on its fast path against plain's 410): what a
kernel edit changes in the inner loops, without a GPU.
With --dump-sass DIR it writes each build's whole SASS to DIR (one file a build, named by its
line's tag): run it before and after a change, then ``diff -r`` the two folders.
"""
import collections
import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from flashkernels.ops.attention import launch
from flashkernels.ops.attention.kernels.bwd import attn_bwd_dkdv_kernel, attn_bwd_dq_kernel
from flashkernels.ops.attention.kernels.fwd import attn_fwd_kernel

H100_SMEM = 232448
TORCH_TO_TT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def signature(fn, dtype_tt, mask_tt, consts):
    sig = {}
    for i, name in enumerate(fn.arg_names):
        if fn.params[i].is_constexpr:
            sig[name] = "constexpr"
        elif name in ("Lse", "Delta", "Alibi", "Sink"):
            sig[name] = "*fp32"
        elif name in ("CuQ", "CuK"):
            sig[name] = "*i32"
        elif name == "Mask":
            sig[name] = mask_tt
        elif name[0].isupper():
            sig[name] = f"*{dtype_tt}"
        elif name in ("sm_scale", "softcap"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def ptxas_report(ptx: str) -> str:
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "k.ptx")
        open(p, "w").write(ptx)
        r = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", p, "-o", os.path.join(d, "k.cubin")],
                           capture_output=True, text=True)
    txt = r.stdout + r.stderr
    regs = re.search(r"Used (\d+) registers", txt)
    spill = re.search(r"(\d+) bytes spill stores", txt)
    # ptxas serialises wgmma (and says so only here) when it cannot keep the async pipeline:
    # "Potential Performance Loss: wgmma.mma_async instructions are serialized due to ...".
    loss = sorted(set(re.findall(r"Potential Performance Loss: (.*)", txt)))
    warn = "".join(f"\n      ptxas: {w.strip()}" for w in loss)
    return f"regs {regs.group(1) if regs else '?':>3}  spill {spill.group(1) if spill else '?':>4}B{warn}"


LOOP_KEYS = ("HGMMA", "FFMA", "FMUL", "FADD", "FMNMX", "FSEL", "MUFU", "IMAD", "LDL", "STL")


def disassemble(cubin: bytes) -> str:
    """The cubin's SASS (Triton's bundled nvdisasm -c: code sections only)."""
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        open(path, "wb").write(cubin)
        return subprocess.run([nvdisasm, "-c", path], capture_output=True, text=True, check=True).stdout


# --dump-sass DIR: report() writes the SASS of each build there (the compile functions leave
# their last cubin here), so that two trees' builds can be diffed file by file
DUMP_SASS_DIR = None
_last_cubin = None


def sass_loops(cubin: bytes, keys=LOOP_KEYS, min_instr=None) -> str:
    """'loop N instr: HGMMA a FMUL b ...' (the opcode counts of ``keys``) for each backward branch
    whose body issues HGMMA, or, with ``min_instr``, whose body has at least that many
    instructions (loops without tensor-core work too, e.g. a Gluon kernel's dQ-writer warp)."""
    lines = disassemble(cubin).splitlines()
    out = []
    for seg in loop_segments(lines):
        body = [x.split(";")[0].split("*/", 1)[1].split() for x in seg if re.search(r"/\*[0-9a-f]{4,6}\*/", x)]
        ops = collections.Counter((b[1] if b[0].startswith("@") else b[0]).split(".")[0] for b in body if b)
        if (len(body) >= min_instr) if min_instr is not None else ops["HGMMA"]:
            out.append(f"loop {len(body)} instr: " + " ".join(f"{k} {ops[k]}" for k in keys)
                       + f"  shortest {loop_shortest_path(seg)}")
    return "\n".join(out)


def loop_segments(lines: list[str]) -> list[list[str]]:
    """The SASS lines (``disassemble``'s) of each loop's body, from its label to its backward branch."""
    labels = {ln[:-1]: i for i, ln in enumerate(lines) if re.match(r"^\.L_x_\d+:", ln)}
    segs = []
    for i, ln in enumerate(lines):
        # A loop ends in a predicated backward branch; an unpredicated one is the return jump of
        # an out-of-line block (e.g. an mbarrier wait's retry loop), not a loop.
        m = re.search(r"@!?U?P\w+\s+BRA `\((\.L_x_\d+)\)", ln)
        if m and labels.get(m.group(1), i) < i:
            segs.append(lines[labels[m.group(1)]:i])
    return segs


_BRANCH = re.compile(r"/\*[0-9a-f]{4,6}\*/\s+(@!?U?P\w+\s+)?BRA(?:\.\w+)*\s+(?:!?U?P\w+,\s*)?`\((\.L_x_\d+)\)")


def loop_shortest_path(seg: list[str]) -> int:
    """Instructions on the shortest way through one iteration of a loop, ``seg`` being its SASS from
    the head's label on (sass_loops passes it up to the back-edge branch, which its counts leave
    out). A loop's count holds every branch's code, e.g. the forward's masking of the blocks a
    diagonal or a sequence end cuts and its rare rescale of O, which most iterations jump over. This
    count takes every forward branch inside the loop that skips code, and none that leaves the loop
    (an mbarrier wait's out-of-line retry) or goes back (an inner loop, counted once). Where a loop's
    usual iteration is its fast path (masks off, no rescale), that is the iteration's issue count."""
    blocks = [[0, None, False]]  # [instructions, branch target label, conditional], split at labels / branches
    where = {}  # label -> block index
    for ln in seg:
        lab = re.match(r"^\s*(\.L_x_\d+):", ln)
        if lab:
            if blocks[-1][0] or blocks[-1][1]:
                blocks.append([0, None, False])
            where[lab.group(1)] = len(blocks) - 1
            continue
        if not re.search(r"/\*[0-9a-f]{4,6}\*/", ln):
            continue
        blocks[-1][0] += 1
        br = _BRANCH.search(ln)
        if br:
            blocks[-1][1], blocks[-1][2] = br.group(2), bool(br.group(1))
            blocks.append([0, None, False])
    dist = [None] * len(blocks)
    dist[0] = 0
    for b, (n, target, cond) in enumerate(blocks[:-1]):
        if dist[b] is None:
            continue
        t = where.get(target)
        nxt = [b + 1] if (target is None or cond or t is None) else []  # (leaving the loop: it comes back)
        if t is not None and t > b:
            nxt.append(t)
        for c in nxt:
            if dist[c] is None or dist[b] + n < dist[c]:
                dist[c] = dist[b] + n
    ends = [d + blocks[b][0] for b, d in enumerate(dist) if d is not None and blocks[b][0]]
    return ends[-1] if ends else 0


def compile_one(fn, dtype, mask_kind, consts, cfg, sass=False):
    mask_tt = {0: f"*{TORCH_TO_TT[dtype]}", 1: "*u8", 2: f"*{TORCH_TO_TT[dtype]}"}[mask_kind]
    sig = signature(fn, TORCH_TO_TT[dtype], mask_tt, consts)
    names = fn.arg_names
    # What Triton's launcher specialises on a real call: pointers (torch allocations) and integer
    # arguments that are multiples of 16 get tt.divisibility=16 (vectorised loads). The q/k/v/out
    # strides are (H*D, D or S*D, ...) multiples of 16 at the shapes that matter; the mask's and
    # the ALiBi slopes' strides may be anything, and do_not_specialize arguments never get it.
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if sig[n].startswith("*") or (n.startswith("stride_") and not n.startswith(("stride_m", "stride_a"))
                                           and n not in ("stride_lb", "stride_lh"))}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()},
                    attrs=attrs)
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                         options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    global _last_cubin
    _last_cubin = out.asm["cubin"]
    rep = ptxas_report(out.asm["ptx"])
    if sass:
        rep += "\n" + "\n".join("      " + ln for ln in sass_loops(out.asm["cubin"]).splitlines())
    return out.metadata.shared, rep


def _compile_gluon(fn, descs: dict, ptrs: dict, consts: dict, maxnreg: int, sass: bool, plain=("H", "GROUP")):
    """(smem, report) of a Gluon kernel built as a real launch builds it (GluonASTSource): the
    TMA descriptors ``descs`` and pointer types ``ptrs`` by argument name, every other argument
    i32 except sm_scale (fp32); the pointers, S and the layout integers a multiple of 16 (as
    Triton specialises them with (B, S, H, D) storage), the arguments in ``plain`` (H and GROUP
    by default) not."""
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from flashkernels._launch import real_desc

    descs = {n: real_desc(d) for n, d in descs.items()}  # (the launcher's TmaDesc -> TensorDescriptor)
    names = fn.arg_names
    # Every constexpr by value, defaults too: triton 3.6's ASTSource.hash keys the on-disk cache by
    # the constants' values in argument order without their names, so two builds that set different
    # flags to the same value (PAIRS=True here, PRESCALE=True there) shared one cached binary
    consts = {**{n: p.default for n, p in zip(names, fn.params)
                 if p.is_constexpr and p.has_default and n != "num_warps"}, **consts}
    sig = {n: "constexpr" if fn.params[i].is_constexpr else mangle_type(descs[n]) if n in descs else
           ptrs.get(n, "fp32" if n == "sm_scale" else "i32") for i, n in enumerate(names)}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if sig[n] != "constexpr" and n != "sm_scale" and n not in plain and n not in descs
             and not sig[n].startswith("fp")}
    src = GluonASTSource(fn, sig, {(names.index(k),): v for k, v in consts.items()}, attrs)
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "maxnreg": maxnreg})
    global _last_cubin
    _last_cubin = out.asm["cubin"]
    rep = ptxas_report(out.asm["ptx"]) + f" (maxnreg {maxnreg})"
    if sass:
        rep += "\n" + "\n".join("      " + ln for ln in sass_loops(out.asm["cubin"]).splitlines())
    return out.metadata.shared, rep


def compile_hopper_fwd(dtype, causal: bool, sass=False, D=launch.HOPPER_HEAD_DIM, softcap=False, alibi=False,
                       sink=False, window=False, config=None, varlen=False, persistent=None, rows=None):
    """(smem, report) of the Gluon forward built as launch.hopper_fwd launches it at head dim D
    (its launch.HOPPER_FWD_CONFIGS entry, or ``config`` = (BLOCK_M, BLOCK_N, STAGES)), with its
    feature flags (kernels/fwd_hopper.py: SOFTCAP, ALIBI, SINK, WINDOW; WINDOW replaces CAUSAL, as
    the launcher passes them; VARLEN: packed sequences, always with WINDOW, causal or not, as the
    launcher passes them: one build for both; ``rows``: their max_seqlen_q, None: past every row floor)."""
    from flashkernels.ops.attention.kernels import fwd_hopper

    block_m, block_n, stages = config or launch.hopper_fwd_config(D, alibi)
    if varlen and config is None and launch.hopper_fwd_varlen_two_wg(D, causal, rows):  # (as launched)
        block_m = launch.HOPPER_BLOCK_M
        stages = launch.hopper_fwd_varlen_short_stages(D, rows) or stages
    window = window or varlen
    x = torch.empty(1, 1024, 2, D, dtype=dtype).transpose(1, 2)  # (B, H, S, D) view of (B, S, H, D)
    wg_m = 64  # rows of one consumer warpgroup
    descs = {n: launch._hopper_desc(x, rows)[0] for n, rows in (("desc_q", wg_m), ("desc_k", block_n),
                                                              ("desc_v", block_n), ("desc_o", wg_m))}
    consts = dict(HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages,
                  CAUSAL=causal and not window, num_warps=4, SOFTCAP=softcap,
                  ALIBI=launch.hopper_fwd_alibi_mode(D, alibi, causal and not window, bool(softcap)), SINK=sink,
                  WINDOW=window)
    if softcap:  # (as launched, for a cap of 30)
        consts["SOFTCAP"] = launch._hopper_fwd_softcap_mode(30.0, bool(alibi or sink or window), D, causal, dtype)
    types = {"Lse": "*fp32", "Alibi": "*fp32", "Sink": "*fp32", "softcap": "fp32", "Out": f"*{TORCH_TO_TT[dtype]}",
             "CuQ": "*i32", "CuK": "*i32"}
    plain = ("H", "GROUP", "n_bh")
    if persistent is None:  # (as the launcher builds it)
        persistent = launch.hopper_fwd_persistent(D, block_m, window or varlen, causal, softcap or alibi or sink)
        if varlen:  # (the packed tiles by the dynamic scheduler)
            persistent = launch.hopper_fwd_varlen_two_wg(D, causal, rows) and block_m == launch.HOPPER_BLOCK_M
    if persistent and varlen:
        consts["PERSISTENT"] = True
        types["Sched"] = "*i32"
        if launch.HOPPER_FWD_VARLEN_SORT:  # (as launched for 16 sequences)
            consts["VARLEN_SORT"] = int(launch.HOPPER_FWD_VARLEN_SORT)
        if launch.hopper_fwd_varlen_qsets(D) == 2:  # (as launched)
            consts["VARLEN_QSETS"] = 2
            if D in launch.HOPPER_FWD_VARLEN_PUB:
                consts["VARLEN_PUB"] = True
            if D in launch.HOPPER_FWD_VARLEN_DEFER:
                consts["VARLEN_DEFER"] = True
    elif persistent:
        consts["PERSISTENT"] = True
        if launch.hopper_fwd_chained(D):  # (as launched)
            consts["CHAIN"] = launch.hopper_fwd_chain_flag(D)
            if config is None and launch.hopper_fwd_split_tail(D, causal, bool(softcap or alibi or sink or window)):
                consts["SPLIT_TAIL"] = True  # (as launched where the tiles leave a last round)
                types.update(Part="*fp32", Flags="*i32")
    elif causal and not (window or varlen) and launch.HOPPER_FWD_CAUSAL_REVERSE:  # (as launched)
        consts["REVERSE_M"] = True
    if launch.hopper_fwd_alibi_mma(D, alibi, softcap or window):  # (as launched at 4k rows)
        consts["ALIBI_MMA"] = True
    if launch.hopper_fwd_alibi_rotate(alibi, window or softcap, block_m, D):  # (as launched at 4k rows)
        consts["ROT_N"] = True
    if varlen:  # (total_q / total_k and the window's bounds, from the max lengths: any integers)
        consts["VARLEN"] = True
        if launch.HOPPER_FWD_VARLEN_PACKED:  # (the packed-tile grid, as launched for 16 sequences)
            consts["VARLEN_NB"] = 128
        plain += ("SQ", "SK", "causal_offset", "window_left", "window_right", "alibi_sb", "alibi_sh")
    return _compile_gluon(fwd_hopper.attn_fwd_hopper_kernel, descs, types, consts, fwd_hopper.maxnreg(block_m), sass,
                          plain=plain)


def compile_hopper_bwd(dtype, causal: bool, sass=False, D=128, softcap=False, alibi=False, window=False,
                       varlen=False, dq_tma=None, tail_parts=0, pdl_trigger=False, keys=4096, dq_convert=False):
    """(smem, report) of the Gluon backward built as launch.attn_bwd_hopper_impl launches it:
    kernels/bwd_hopper256.py at D = 256 (64 keys a CTA, no feature flags), else kernels/bwd_hopper.py
    (128 keys a CTA) with its feature flags (SOFTCAP, ALIBI, WINDOW (replaces CAUSAL, as the
    launcher passes them); a sink needs no flag; VARLEN: packed sequences; DQ_TMA: dQ by a TMA
    reduce-add, launch.HOPPER_BWD_DQ_TMA's (D = 256: HOPPER_BWD256_DQ_TMA's) value unless ``dq_tma``
    says); ``tail_parts``: the tail launch's build (TAIL_PARTS, launch.hopper_bwd_tail_plan's parts);
    ``pdl_trigger``: the main grid's before a tail launch (PDL_TRIGGER); ``keys``: the launch's key count (the
    TMA epilogue's bound, launch.HOPPER_BWD_EPI_TMA); ``dq_convert``: the kernel writes dQ itself (DQ_CONVERT, the
    plain non-causal build: launch.HOPPER_BWD_DQ_CONVERT)."""
    from flashkernels.ops.attention.kernels import bwd_hopper, bwd_hopper256

    kernel, block_n = ((bwd_hopper256.attn_bwd_hopper256_kernel, 64) if D == 256 else
                       (bwd_hopper.attn_bwd_hopper_kernel, launch.HOPPER_BLOCK_N))
    rows = launch.HOPPER_BWD_BLOCK_M  # (K / V tiles)
    block_m = rows if D == 256 else launch.hopper_bwd_block_m(D, softcap or alibi or window or varlen)
    x = torch.empty(1, 1024, 2, D, dtype=dtype).transpose(1, 2)  # (B, H, S, D) view of (B, S, H, D)
    lse = torch.empty(1, 2, 1024)
    descs = {n: launch._hopper_desc(x, block_m if n in ("desc_q", "desc_do") else rows)[0]
             for n in ("desc_q", "desc_k", "desc_v", "desc_do")}
    ptrs = {"DQ": "*fp32", "DK": f"*{TORCH_TO_TT[dtype]}", "DV": f"*{TORCH_TO_TT[dtype]}"}
    if varlen:  # lse / Delta as pointers (launch.attn_bwd_hopper_impl: a TMA start must be 16-byte aligned)
        ptrs.update(desc_lse="*fp32", desc_delta="*fp32")
    else:
        descs.update(desc_lse=launch._rows_desc(lse, block_m), desc_delta=launch._rows_desc(lse, block_m))
    stages = launch.hopper_bwd_stages(D, not (causal or softcap or alibi or window or varlen))  # (as launched)
    consts = dict(HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages,
                  CAUSAL=causal and not window, OUT_BSHD=True, LONG_FIRST=causal, num_warps=4)
    if D == 256:
        assert not (softcap or alibi or window or varlen), "the D = 256 backward has no feature flags"
        if launch.HOPPER_BWD256_DQ_TMA if dq_tma is None else dq_tma:
            consts["DQ_TMA"] = True
            descs["desc_dq"] = launch._grad_desc(torch.empty(1, 2, 1024, D), True, rows, 64)
            if launch.HOPPER_BWD256_EPI_TMA:
                consts["EPI_TMA"] = True
                for n in ("desc_dk", "desc_dv"):
                    descs[n] = launch._grad_desc(torch.empty(1, 2, 1024, D, dtype=dtype), True, 64, 128)
        if tail_parts:
            consts["TAIL_PARTS"] = tail_parts
            ptrs.update(Part="*fp32", Flags="*i32")
        if pdl_trigger:
            consts["PDL_TRIGGER"] = True
        return _compile_gluon(kernel, descs, ptrs, consts, bwd_hopper.MAXNREG, sass, plain=("H", "GROUP", "tile_base"))
    ptrs.update(Alibi="*fp32", softcap="fp32", CuQ="*i32", CuK="*i32")
    consts.update(SOFTCAP=softcap, ALIBI=alibi, WINDOW=window, VARLEN=varlen)
    if launch.HOPPER_BWD_DQ_TMA if dq_tma is None else dq_tma:  # (dQ by a TMA reduce-add, as launched)
        consts["DQ_TMA"] = True
        descs["desc_dq"] = launch._grad_desc(torch.empty(1, 2, 1024, D), True, 64, D if block_m == 128 else 0)
        if consts["CAUSAL"] in launch.HOPPER_BWD_PROD_WRITER:  # (as launched)
            consts["PROD_WRITER"] = True
    if consts["CAUSAL"] in launch.HOPPER_BWD_SPLIT_BAR:  # (as launched)
        consts["SPLIT_BAR"] = True
    if not tail_parts and launch.hopper_bwd_epi_tma(D, keys, consts["CAUSAL"], consts):  # (as launched)
        consts["EPI_TMA"] = True
        for n in ("desc_dk", "desc_dv"):
            descs[n] = launch._grad_desc(torch.empty(1, 2, 1024, D, dtype=dtype), True, 64, D)
    if tail_parts:  # (the plain non-causal build only)
        consts["TAIL_PARTS"] = tail_parts
        ptrs.update(Part="*fp32", Flags="*i32")
    if pdl_trigger:
        consts["PDL_TRIGGER"] = True
    if dq_convert:
        consts["DQ_CONVERT"] = True
        ptrs.update(DQO=f"*{TORCH_TO_TT[dtype]}", Cnt="*i32")
    # (the slopes' strides: (H,) slopes expanded to (B, H) have (0, 1); the offset and the window's
    # bounds any integers)
    return _compile_gluon(kernel, descs, ptrs, consts, bwd_hopper.MAXNREG, sass,
                          plain=("H", "GROUP", "alibi_sb", "alibi_sh", "causal_offset", "window_left", "window_right",
                                 "tile_base"))


def report(tag: str, build) -> bool:
    """Print ``tag`` with what ``build()`` -> (smem, ptxas report) gives; False on a failure or
    shared memory past an H100's."""
    try:
        smem, rep = build()
    except Exception as e:  # report and go on
        print(f"{tag:60s} FAILED: {str(e)[-1500:]}", flush=True)
        return False
    flag = "" if smem <= H100_SMEM else "  SMEM TOO LARGE"
    print(f"{tag:60s} smem {smem:>6}  {rep}{flag}", flush=True)
    if DUMP_SASS_DIR:
        name = re.sub(r"[^A-Za-z0-9=+,.-]+", "_", tag).strip("_") + ".sass"
        with open(os.path.join(DUMP_SASS_DIR, name), "w") as f:
            f.write(disassemble(_last_cubin))
    return not flag


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="64,128,256")
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--causal", default="1")
    ap.add_argument("--mask", default="0", help="mask kinds: 0 none, 1 bool, 2 float")
    ap.add_argument("--window", default="0", help="HAS_WINDOW values (sliding window; with causal=1 "
                    "the launcher passes IS_CAUSAL=0, so that pair is skipped)")
    ap.add_argument("--softcap", default="0", help="HAS_SOFTCAP values (1 accurate tanh, 2 the GPU's approximate one)")
    ap.add_argument("--alibi", default="0", help="HAS_ALIBI values")
    ap.add_argument("--sink", default="0", help="HAS_SINK values (forward only: the backwards have no flag)")
    ap.add_argument("--varlen", default="0", help="VARLEN values (packed sequences)")
    ap.add_argument("--kernels", default="fwd,dkdv,dq,hopper")
    ap.add_argument("--sass", action="store_true", help="per-loop SASS instruction counts (HGMMA loops)")
    ap.add_argument("--dump-sass", metavar="DIR", help="write each build's whole SASS to DIR/<tag>.sass (to diff "
                    "two trees' builds)")
    args = ap.parse_args()
    global DUMP_SASS_DIR
    if args.dump_sass:
        os.makedirs(args.dump_sass, exist_ok=True)
        DUMP_SASS_DIR = args.dump_sass
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    dev = torch.device("cuda", 0)
    launch._smem_limit.cache_clear()
    launch._smem_limit = lambda idx: H100_SMEM  # what an H100 reports
    bad = 0
    for dname in args.dtypes.split(","):
        dtype = dtypes[dname]
        for d in map(int, args.dims.split(",")):
            bd = launch.block_d(d)
            fcfg = launch.fwd_config(d, dtype, dev)
            kvcfg, qcfg = launch.bwd_configs(d, dtype, dev)
            prec = launch.dot_precision(dtype, False)
            def vals(opt):
                return list(map(bool, map(int, opt.split(","))))
            flags = [(c, mk, w, sc, al, sk, vl) for c in vals(args.causal) for mk in map(int, args.mask.split(","))
                     for w in vals(args.window) for sc in map(int, args.softcap.split(",")) for al in vals(args.alibi)
                     for sk in vals(args.sink) for vl in vals(args.varlen) if not (c and w) and not (vl and mk)]
            for causal, mk, window, softcap, alibi, sink, varlen in flags:
                base = dict(HEAD_DIM=d, BLOCK_D=bd, IS_CAUSAL=causal, MASK_KIND=mk, DOT_PRECISION=prec)
                extra = dict(HAS_WINDOW=window, HAS_SOFTCAP=softcap, HAS_ALIBI=alibi, VARLEN=varlen)
                extra = {k: v for k, v in extra.items() if v}  # flags off: the kernels' defaults
                for name, fn, cfg in (("fwd", attn_fwd_kernel, fcfg), ("dkdv", attn_bwd_dkdv_kernel, kvcfg),
                                      ("dq", attn_bwd_dq_kernel, qcfg)):
                    if name not in args.kernels.split(","):
                        continue
                    consts = dict(base, **extra, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n)
                    if name == "fwd":
                        consts["SCALE_POSITIVE"] = True  # what the launcher passes for scale > 0
                        if sink:
                            consts["HAS_SINK"] = True
                    tag = f"{name:5s} {dname} D={d:<3} causal={int(causal)} mask={mk} {tuple(cfg)}"
                    on = [k[4:].lower() if k.startswith("HAS_") else k.lower() for k in consts
                          if k in ("HAS_WINDOW", "HAS_SOFTCAP", "HAS_ALIBI", "HAS_SINK", "VARLEN")]
                    if on:
                        tag += " +" + ",".join(on)
                    bad += not report(tag, lambda: compile_one(fn, dtype, mk, consts, cfg, args.sass))
                gluon = "hopper" in args.kernels.split(",") and dtype != torch.float32 and not mk
                if gluon and d in launch.HOPPER_FWD_CONFIGS:
                    block_m, block_n, stages = launch.hopper_fwd_config(d, alibi)
                    cfg = (block_m, block_n, 4, stages)
                    ffeats = dict(softcap=bool(softcap), alibi=alibi, sink=sink, window=window, varlen=varlen)
                    tag = f"gluon {dname} D={d:<3} causal={int(causal)} mask=0 {cfg}"
                    if any(ffeats.values()):
                        tag += " +" + ",".join(k for k, v in ffeats.items() if v)
                    bad += not report(tag, lambda: compile_hopper_fwd(dtype, causal, args.sass, D=d, **ffeats))
                    if d in launch.HOPPER_FWD_SHORT and not any(ffeats.values()):
                        # (the plain build for short sequences: launch.hopper_fwd_short)
                        cfg = (launch.HOPPER_BLOCK_M, *launch.HOPPER_FWD_SHORT[d][:2])
                        tag = f"gluon-short {dname} D={d:<3} causal={int(causal)} mask=0 {cfg}"
                        bad += not report(tag, lambda: compile_hopper_fwd(dtype, causal, args.sass, D=d, config=cfg,
                                                                          persistent=True))
                gluon_bwd = ("hopper" in args.kernels.split(",") and dtype != torch.float32
                             and not (mk or sink) and not (d == 256 and (softcap or alibi or window or varlen)))
                if gluon_bwd and d in launch.HOPPER_BWD_HEAD_DIMS:
                    block_n = 64 if d == 256 else launch.HOPPER_BLOCK_N  # keys a CTA (bwd_hopper256 at 256)
                    bm = (launch.HOPPER_BWD_BLOCK_M if d == 256 else
                          launch.hopper_bwd_block_m(d, bool(softcap or alibi or window or varlen)))
                    cfg = (bm, block_n, 4, launch.HOPPER_STAGES)
                    feats = dict(softcap=bool(softcap), alibi=alibi, window=window, varlen=varlen)
                    tag = f"gluon-bwd {dname} D={d:<3} causal={int(causal)} mask=0 {cfg}"
                    if softcap or alibi or window or varlen:
                        tag += " +" + ",".join(k for k, v in feats.items() if v)
                    bad += not report(tag, lambda: compile_hopper_bwd(dtype, causal, args.sass, D=d, **feats))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
