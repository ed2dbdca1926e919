"""Settle oneMKL's choice of kernel for the CPU math the reference path uses, before it runs in
parallel (a guard against pytorch/pytorch#188792).

On a CPU, ATen computes contiguous float32 / float64 ``exp``, ``log``, ``tanh`` (and more unary
ops) through oneMKL's vector math library, each intra-op thread on its chunk. oneMKL picks a
function's kernel lazily, on that function's first call in the process; when that first call runs
on several threads at once, one thread's chunk can come from a low-accuracy kernel (the issue
names oneMKL 2024.2, in the torch 2.10 wheels; torch 2.13's CPU wheel shows it too). The next calls
are right, so it shows as a rare, unrepeatable wrong result: here ``flashkernels check`` failed its
first case (the float32 reference path, whose first ``exp`` had up to 1.5e-4 relative error) on a
2-core CI machine; without this guard the case came out wrong in 9 of 120 fresh processes with 3
OpenMP threads, with it in none of 120 (docs/perf-notes.md, session 24).

:func:`settle` calls each of those functions once on a one-element tensor (one thread) per dtype,
so that the choice is made before any parallel call; the reference attention calls it first.
"""
from __future__ import annotations

import torch

_FUNCTIONS = (torch.exp, torch.log, torch.tanh)  # the reference attention's unary math
_settled = False


def settle() -> None:
    """Call each of ``_FUNCTIONS`` once, single-threaded, in float32 and float64; only the
    first call in the process does anything."""
    global _settled
    if _settled:
        return
    _settled = True
    for dtype in (torch.float32, torch.float64):
        one = torch.ones(1, dtype=dtype)
        for fn in _FUNCTIONS:
            fn(one)
