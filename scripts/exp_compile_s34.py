#!/usr/bin/env python3
"""Session 34's two compile-only counts (docs/perf-notes.md, session 34), for sm_90a on any machine:

    PYTHONPATH=src:scripts python scripts/exp_compile_s34.py mufu    packed 16-bit ex2 / tanh: MUFU ops a packed value
    PYTHONPATH=src:scripts python scripts/exp_compile_s34.py place   the chained forward's next-tile place: SASS
                                                                    instructions between the probe's T0 and T3

``mufu``: a one-line Triton kernel applying inline PTX to one packed 32-bit value a thread; sm_90 splits each into one
MUFU op a half. ``place``: D = 64's short build (two warpgroups, persistent, chained, (128, 128, 3)) with PROBE
(kernels/fwd_hopper._probe), causal and not; the first consumer's instructions from its first %clock64 read (after a
tile's loop) to its second (before the next tile's Q wait).
"""
import collections
import re
import sys

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget

import compile_check as cc


@triton.jit
def _packed(X, Y, ASM: tl.constexpr, N: tl.constexpr):
    offs = tl.arange(0, N)
    y = tl.inline_asm_elementwise(ASM, "=r,r", [tl.load(X + offs)], dtype=tl.int32, is_pure=True, pack=1)
    tl.store(Y + offs, y)


def mufu():
    for asm in ("ex2.approx.ftz.bf16x2 $0, $1;", "ex2.approx.f16x2 $0, $1;", "tanh.approx.bf16x2 $0, $1;"):
        src = triton.compiler.ASTSource(fn=_packed, signature={"X": "*i32", "Y": "*i32", "ASM": "constexpr",
                                                               "N": "constexpr"}, constexprs={"ASM": asm, "N": 128})
        sass = cc.disassemble(triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["cubin"])
        ops = [ln.split("*/", 1)[1].strip() for ln in sass.splitlines() if "MUFU" in ln]
        print(f"{asm:34s} one packed value a thread -> {len(ops)} MUFU: {ops}")


def place():
    compile_gluon = cc._compile_gluon

    def with_probe(kernel, descs, types, consts, *a, **kw):  # (the launcher passes PROBE and Probe with a probe set)
        return compile_gluon(kernel, descs, dict(types, Probe="*i64"), dict(consts, PROBE=1), *a, **kw)
    cc._compile_gluon = with_probe
    for causal in (True, False):
        cc.compile_hopper_fwd(torch.bfloat16, causal, D=64, config=(128, 128, 3), persistent=True, sass=True)
        lines = [ln for ln in cc.disassemble(cc._last_cubin).splitlines() if re.search(r"/\*[0-9a-f]{4,6}\*/", ln)]
        t0, t3 = [i for i, ln in enumerate(lines) if "CLOCK" in ln][:2]
        ops = collections.Counter(ln.split("*/", 1)[1].split()[0] for ln in lines[t0:t3])
        print(f"causal={int(causal)}: {t3 - t0} instructions T0 -> T3; most: {ops.most_common(6)}")
    cc._compile_gluon = compile_gluon


if __name__ == "__main__":
    {"mufu": mufu, "place": place}[sys.argv[1] if len(sys.argv) > 1 else "mufu"]()
