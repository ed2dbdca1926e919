"""Quick GPU smoke: every dtype x head dim compiles and matches the float64 reference; one timing.

Run on the GPU machine:  PYTHONPATH=src python3 scripts/gpu_smoke.py
"""
import math, sys, time, traceback
import torch
import triton
from triton.testing import do_bench
import flashkernels as fk
from flashkernels.ops.attention.reference import attention_reference

torch.manual_seed(0)
dev = "cuda"
fails = 0


def case(B, Hq, Hkv, Sq, Sk, D, dtype, causal, align, mask=None):
    global fails
    q = torch.randn(B, Hq, Sq, D, device=dev, dtype=dtype, requires_grad=True)
    k = torch.randn(B, Hkv, Sk, D, device=dev, dtype=dtype, requires_grad=True)
    v = torch.randn(B, Hkv, Sk, D, device=dev, dtype=dtype, requires_grad=True)
    try:
        if align == "top_left":
            o = fk.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True, backend="triton")
        else:
            o = fk.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal, backend="triton").transpose(1, 2)
        do = torch.randn_like(o)
        g = torch.autograd.grad(o, (q, k, v), do)
        torch.cuda.synchronize()
    except Exception as e:
        fails += 1
        print("FAIL-RUN", B, Hq, Hkv, Sq, Sk, D, dtype, causal, align, repr(e)[-1500:], flush=True)
        return
    q64, k64, v64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ro, _ = attention_reference(q64, k64, v64, causal=causal, causal_align=align, mask=mask)
    rg = torch.autograd.grad(ro, (q64, k64, v64), do.double())
    qp, kp, vp = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    po, _ = attention_reference(qp, kp, vp, causal=causal, causal_align=align, mask=mask, compute_dtype=dtype)
    pg = torch.autograd.grad(po, (qp, kp, vp), do)
    errs = [(o.double() - ro).abs().max().item()] + [(a.double() - b).abs().max().item() for a, b in zip(g, rg)]
    perr = [(po.double() - ro).abs().max().item()] + [(a.double() - b).abs().max().item() for a, b in zip(pg, rg)]
    eps = torch.finfo(dtype).eps
    ok = errs[0] <= 2 * perr[0] + eps and all(e <= 3 * p + 4 * eps for e, p in zip(errs[1:], perr[1:]))
    if dtype == torch.float32:
        ok = ok and max(errs) <= 1e-4
    nan = any(torch.isnan(x).any().item() for x in (o, *g))
    if not ok or nan:
        fails += 1
    print("OK  " if ok and not nan else "FAIL", B, Hq, Hkv, Sq, Sk, D, str(dtype)[6:], causal, align,
          "err", ["%.1e" % e for e in errs], "pt", ["%.1e" % e for e in perr], flush=True)


t0 = time.time()
DIMS = {torch.bfloat16: (8, 59, 128, 256), torch.float16: (40, 96), torch.float32: (64, 160)}
for dtype in (torch.bfloat16, torch.float16, torch.float32):
    for D in DIMS[dtype]:
        case(2, 4, 2, 301, 517, D, dtype, True, "bottom_right")
        case(1, 2, 1, 517, 301, D, dtype, True, "top_left")
    case(2, 4, 4, 257, 129, 64, dtype, False, "top_left", mask=torch.rand(2, 1, 257, 129, device=dev) > 0.2)
    case(2, 4, 4, 257, 129, 128, dtype, False, "top_left", mask=torch.randn(1, 4, 257, 129, device=dev, dtype=dtype))
print("correctness took %.0fs, fails=%d" % (time.time() - t0, fails), flush=True)

# One timing: FA3-paper shape B*S=16384, Hq*D=2048 at S=4096, D=128, bf16.
from torch.nn.attention import sdpa_kernel, SDPBackend
import torch.nn.functional as F
for causal in (False, True):
    B, H, S, D = 4, 16, 4096, 128
    q, k, v = [torch.randn(B, H, S, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    flops = 4 * B * H * S * S * D / (2 if causal else 1)
    do = torch.randn_like(q)
    res = {}
    for name, fn in [
        ("flashkernels", lambda: fk.scaled_dot_product_attention(q, k, v, is_causal=causal)),
        ("sdpa_flash", lambda: (lambda c: (c.__enter__(), F.scaled_dot_product_attention(q, k, v, is_causal=causal), c.__exit__(None, None, None))[1])(sdpa_kernel(SDPBackend.FLASH_ATTENTION))),
        ("sdpa_cudnn", lambda: (lambda c: (c.__enter__(), F.scaled_dot_product_attention(q, k, v, is_causal=causal), c.__exit__(None, None, None))[1])(sdpa_kernel(SDPBackend.CUDNN_ATTENTION))),
    ]:
        try:
            ms = do_bench(fn, warmup=50, rep=200, return_mode="median")
            o = fn()
            msb = do_bench(lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True), warmup=50, rep=200, return_mode="median")
            res[name] = (ms, msb)
            print(f"{name:14s} causal={causal} fwd {ms:.3f} ms {flops/ms/1e9:.0f} TFLOP/s  bwd {msb:.3f} ms {2.5*flops/msb/1e9:.0f} TFLOP/s", flush=True)
        except Exception as e:
            print(name, "failed", repr(e)[-1500:])
sys.exit(1 if fails else 0)
