#!/usr/bin/env python3
"""A small attention workload for compute-sanitizer (memcheck, racecheck) on a GPU.

Forward and backward through the Triton backend, fp16, on odd sizes so every masked tail runs:
causal (top-left, Sq != Sk) with GQA, a bool mask broadcast over heads with a fully masked row,
a float mask with MQA, and flash_attn_func's bottom-right causal with Sq > Sk (rows that see no
key). Shapes are tiny: under the sanitizer every memory access is checked, ~100x slower.

    PYTHONPATH=src PYTORCH_NO_CUDA_MEMORY_CACHING=1 \\
        compute-sanitizer --tool memcheck --error-exitcode 1 python3 scripts/sanitize_case.py

Run it once without the sanitizer first (gpu_run.sh does) so Triton's compile cache is warm.
Exits 1 if a result is wrong (a loose check: the sanitizer is the point here; `flashkernels
check` owns the precise tolerances), 0 otherwise.
"""
import math
import os
import sys

import torch

import flashkernels
from flashkernels.ops.attention.reference import attention_reference


# On a CPU with TRITON_INTERPRET=1 the same script runs through the interpreter (a dry run of it).
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def case(name, B, Hq, Hkv, Sq, Sk, D, *, causal=False, mask=None, op="sdpa"):
    g = torch.Generator(device="cpu").manual_seed(0)
    dt = torch.float16
    bshd = op == "flash_attn_func"

    def rnd(h, s):
        shape = (B, s, h, D) if bshd else (B, h, s, D)
        return torch.randn(shape, generator=g).to(DEV, dt).requires_grad_()

    q, k, v = rnd(Hq, Sq), rnd(Hkv, Sk), rnd(Hkv, Sk)
    m = None
    if mask == "bool":
        m = torch.rand((B, 1, Sq, Sk), generator=g) < 0.7
        m[0, 0, 0, :] = False  # one row sees nothing: output 0, no NaN
        m = m.to(DEV)
    elif mask == "float":
        m = torch.randn((1, Hq, Sq, Sk), generator=g).to(DEV, dt)
    if bshd:
        out = flashkernels.flash_attn_func(q, k, v, causal=causal, backend="triton")
    else:
        out = flashkernels.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal,
                                                        enable_gqa=Hq != Hkv, backend="triton")
    dout = torch.randn(out.shape, generator=g).to(DEV, dt)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    if DEV == "cuda":
        torch.cuda.synchronize()

    # The float64 reference runs on the CPU: only our kernels (and torch's glue) are sanitized.
    view = (lambda x: x.transpose(1, 2)) if bshd else (lambda x: x)
    q64, k64, v64 = (view(t).detach().cpu().double().requires_grad_() for t in (q, k, v))
    m64 = None if m is None else (m.cpu().double() if m.is_floating_point() else m.cpu())
    ref, _ = attention_reference(q64, k64, v64, causal=causal,
                                 causal_align="bottom_right" if bshd else "top_left", mask=m64)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), view(dout).cpu().double())
    errs = [(view(out).cpu().double() - ref).abs().max().item()]
    errs += [(view(a).cpu().double() - b).abs().max().item() for a, b in zip(grads, ref_grads)]
    finite = all(math.isfinite(e) for e in errs)
    ok = finite and errs[0] < 1e-2 and max(errs[1:]) < 5e-2
    print(f"{name:34s} out {errs[0]:.2e}  dq {errs[1]:.2e}  dk {errs[2]:.2e}  dv {errs[3]:.2e}  "
          f"{'ok' if ok else 'WRONG'}", flush=True)
    return ok


def main():
    if DEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("sanitize_case.py: needs a CUDA GPU (or TRITON_INTERPRET=1 for a dry run on a CPU)",
              file=sys.stderr)
        return 2
    results = [
        case("sdpa causal gqa 4/2 77x129 d40", 1, 4, 2, 77, 129, 40, causal=True),
        case("sdpa bool-mask 2x2 65x97 d64", 2, 2, 2, 65, 97, 64, mask="bool"),
        case("sdpa float-mask mqa 4/1 33x70 d128", 1, 4, 1, 33, 70, 128, mask="float"),
        case("flash_attn_func causal-br 100x61 d80", 1, 2, 2, 100, 61, 80, causal=True,
             op="flash_attn_func"),
    ]
    print(f"sanitize_case: {sum(results)} of {len(results)} cases ok", flush=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
