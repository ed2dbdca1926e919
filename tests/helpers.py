"""Shared test helpers: fresh inputs, an independent float64 attention, the tolerance policy.

The float64 attention here is written from the definition and shares no code with
``flashkernels.ops.attention.reference``: the tests check that module too.

The tolerance rule (shared/TESTING.md): with ``ref`` the float64 result and ``pt`` the reference
run in the input dtype,

    forward:    max|out - ref| <= 2 * max|pt - ref| + atol
    gradients:  max|g - g_ref| <= 3 * max|g_pt - g_ref| + atol

with ``atol`` one rounding step (ulp of the input dtype) at the data's magnitude: the largest of
max|ref| and the inputs' magnitude (q, k, v, and dout for gradients). The inputs count because
the kernels round intermediates of their size: with one visible key dq is exactly 0, yet the
backward's dP - Delta cancels two terms of size |dO|·|V| and leaves a rounding step of that size.
fp32 results must also be within 1e-5 of float64 at unit-scale inputs.
"""
from __future__ import annotations

import math

import torch

FP32_SEED_TARGET = 1e-5


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------

def randn(*shape, dtype=torch.float32, device="cpu", magnitude=1.0, requires_grad=False):
    """Fresh standard-normal values (drawn in float32 on the CPU so that CPU and GPU runs of the
    same seed see the same numbers), cast to ``dtype`` and moved to ``device``."""
    x = torch.randn(*shape, dtype=torch.float32) * magnitude
    x = x.to(device=device, dtype=dtype)
    return x.requires_grad_(requires_grad)


def make_qkv(B, Hq, Hkv, Sq, Sk, D, *, Dv=None, dtype=torch.float32, device="cpu",
             layout="bhsd", magnitude=1.0, requires_grad=False):
    """Random q, k, v; ``layout`` "bhsd" (SDPA) or "bshd" (flash-attn)."""
    Dv = D if Dv is None else Dv

    def shape(h, s, d):
        return (B, h, s, d) if layout == "bhsd" else (B, s, h, d)

    kw = dict(dtype=dtype, device=device, magnitude=magnitude, requires_grad=requires_grad)
    return randn(*shape(Hq, Sq, D), **kw), randn(*shape(Hkv, Sk, D), **kw), randn(*shape(Hkv, Sk, Dv), **kw)


def make_mask(kind, shape, *, device="cpu", keep=0.7, dtype=torch.float32):
    """A bool mask (True = attend, about ``keep`` of the entries) or a float bias of ``shape``
    (standard normal, in ``dtype``)."""
    if kind == "bool":
        return (torch.rand(shape) < keep).to(device)
    if kind == "float":
        return randn(*shape, device=device, dtype=dtype)
    raise ValueError(kind)


def bhsd(x):
    """(B, S, H, D) -> (B, H, S, D) view."""
    return x.transpose(1, 2)


# --------------------------------------------------------------------------------------------
# the independent float64 reference
# --------------------------------------------------------------------------------------------

def allowed_keys(Sq, Sk, causal, device="cpu"):
    """(Sq, Sk) bool, True where query i may see key j under ``causal`` (None, "top_left",
    "bottom_right")."""
    i = torch.arange(Sq, device=device)[:, None]
    j = torch.arange(Sk, device=device)[None, :]
    if causal is None:
        return torch.ones(Sq, Sk, dtype=torch.bool, device=device)
    offset = {"top_left": 0, "bottom_right": Sk - Sq}[causal]
    return j <= i + offset


def naive_attention(q, k, v, *, scale=None, causal=None, mask=None):
    """softmax(q k^T * scale + bias) v in float64, (B, H, S, D) layout; returns (out, lse).

    Rows with no allowed key give out 0 and lse -inf. Differentiable in q, k, v.
    """
    q, k, v = q.double(), k.double(), v.double()
    Hq, Hkv = q.shape[1], k.shape[1]
    k = k.repeat_interleave(Hq // Hkv, dim=1)
    v = v.repeat_interleave(Hq // Hkv, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~allowed_keys(q.shape[2], k.shape[2], causal, q.device), -math.inf)
    if mask is not None and mask.dtype == torch.bool:
        s = s.masked_fill(~mask, -math.inf)
    elif mask is not None:
        s = s + mask.double()
    row_max = s.amax(-1, keepdim=True).detach()
    row_max = torch.where(row_max == -math.inf, 0.0, row_max)
    p = torch.exp(s - row_max)
    denom = p.sum(-1, keepdim=True)
    empty = denom == 0
    out = (p @ v) / torch.where(empty, 1.0, denom)
    lse = torch.where(empty, -math.inf, row_max + torch.log(torch.where(empty, 1.0, denom)))
    return out, lse.squeeze(-1)


def naive_grads(q, k, v, dout, **kw):
    """(out, lse, dq, dk, dv) of :func:`naive_attention` in float64."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out, lse = naive_attention(q64, k64, v64, **kw)
    dq, dk, dv = torch.autograd.grad(out, (q64, k64, v64), dout.double())
    return out.detach(), lse.detach(), dq, dk, dv


# --------------------------------------------------------------------------------------------
# the tolerance policy
# --------------------------------------------------------------------------------------------

def ulp_at(magnitude: float, dtype: torch.dtype) -> float:
    """One rounding step of ``dtype`` at ``magnitude``."""
    fi = torch.finfo(dtype)
    if magnitude < fi.tiny:
        return fi.tiny
    return fi.eps * 2.0 ** math.floor(math.log2(magnitude))


def data_magnitude(*tensors) -> float:
    """max|x| over the finite entries of the given inputs (the data's magnitude)."""
    return max((_finite_max(t.detach().double().cpu()) for t in tensors if t is not None), default=0.0)


def _finite_max(x):
    x = x[torch.isfinite(x)]
    return x.abs().max().item() if x.numel() else 0.0


def _max_err(a, b):
    """max |a - b| over the positions where b is finite, with its index."""
    d = (a.double() - b.double()).abs()
    d = torch.where(torch.isfinite(b.double()), d, torch.zeros_like(d))
    if d.numel() == 0:
        return 0.0, ()
    idx = int(d.argmax())
    return d.reshape(-1)[idx].item(), tuple(int(i) for i in torch.unravel_index(torch.tensor(idx), d.shape))


def assert_close_policy(out, ref, pt, atol=None, *, factor=2.0, name="out", dtype=None,
                        seed_target=None, data_magnitude=0.0):
    """``max|out - ref| <= factor * max|pt - ref| + atol`` (factor 2 forward, 3 gradients).

    ``ref`` is float64; non-finite entries of ``ref`` (lse = -inf on a fully masked row) must be
    matched exactly by ``out``. ``atol`` defaults to one rounding step of ``dtype`` (``out``'s
    dtype unless given) at max(max|ref|, data_magnitude), ``data_magnitude`` being max|input|.
    With ``seed_target`` also ``max|out - ref| <= seed_target``.
    """
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
    assert pt.shape == ref.shape, f"{name}: pt shape {tuple(pt.shape)}, expected {tuple(ref.shape)}"
    out64, ref64, pt64 = out.detach().double().cpu(), ref.detach().double().cpu(), pt.detach().double().cpu()
    n_nan = int(out64.isnan().sum())
    assert n_nan == 0, f"{name}: {n_nan} NaN of {out64.numel()} elements (first at {_first(out64.isnan())})"
    nonfinite = ~torch.isfinite(ref64)
    bad = nonfinite & (out64 != ref64)
    assert not bad.any(), (
        f"{name}: {int(bad.sum())} elements should be {ref64[bad][0].item()} (reference not finite) "
        f"but are e.g. {out64[bad][0].item()} at {_first(bad)}")
    unexpected = ~torch.isfinite(out64) & ~nonfinite
    assert not unexpected.any(), (
        f"{name}: {int(unexpected.sum())} non-finite elements where the reference is finite, "
        f"first at {_first(unexpected)}")
    if atol is None:
        atol = ulp_at(max(_finite_max(ref64), data_magnitude), dtype or out.dtype)
    err, where = _max_err(out64, ref64)
    pt_err, _ = _max_err(pt64, ref64)
    bound = factor * pt_err + atol
    assert err <= bound, (
        f"{name}: max|out-ref| = {err:.3e} at {where} (out {out64[where].item():.6g}, ref "
        f"{ref64[where].item():.6g}) exceeds {factor:g}*max|pt-ref| + atol = {factor:g}*{pt_err:.3e} "
        f"+ {atol:.3e} = {bound:.3e}")
    if seed_target is not None:
        assert err <= seed_target, (
            f"{name}: max|out-ref| = {err:.3e} at {where} exceeds the fp32 target {seed_target:g}")
    return err, bound


def _first(mask):
    nz = mask.nonzero()
    return tuple(nz[0].tolist()) if len(nz) else ()


def f64_flash_attention(q, k, v, *, causal=False, window_size=(-1, -1), softcap=0.0, alibi=None, sink=None):
    """flash_attn_func's definition in float64, written out independently of the library:
    s = q k^T / sqrt(D); softcap; ALiBi -slope * |i + Sk - Sq - j|; -inf outside the causal
    (bottom-right) / sliding window; an extra sink column with a zero value. q (B, Sq, Hq, D),
    k/v (B, Sk, Hkv, D); alibi (Hq,) or (B, Hq); sink (Hq,). Returns out (B, Sq, Hq, D), lse
    (B, Hq, Sq)."""
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))
    B, Hq, Sq, _ = q.shape
    g = Hq // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    Sk = k.shape[2]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    diag = torch.arange(Sq)[:, None] + (Sk - Sq)
    j = torch.arange(Sk)[None, :]
    if alibi is not None:
        s = s - alibi.double().expand(B, Hq)[:, :, None, None] * (diag - j).abs()
    left, right = window_size
    if causal:
        right = 0
    seen = torch.ones(Sq, Sk, dtype=torch.bool)
    if left >= 0:
        seen &= j >= diag - left
    if right >= 0:
        seen &= j <= diag + right
    s = s.masked_fill(~seen, -math.inf)
    if sink is not None:  # the sink column: its value row is zero
        s = torch.cat([s, sink.double().view(1, Hq, 1, 1).expand(B, Hq, Sq, 1)], dim=-1)
        v = torch.cat([v, v.new_zeros(B, Hq, 1, v.shape[-1])], dim=2)
    lse = torch.logsumexp(s, -1)
    empty = torch.isinf(lse)
    p = torch.exp(s - torch.where(empty, 0.0, lse)[..., None])
    return (p @ v).transpose(1, 2), lse


# --------------------------------------------------------------------------------------------
# compute-sanitizer
# --------------------------------------------------------------------------------------------

def run_compute_sanitizer(tool: str, script) -> str:
    """Run the Python file ``script`` under ``compute-sanitizer --tool=tool`` on the GPU, without
    the caching allocator and with this checkout's src/ importable; require a clean exit and
    "done" printed; return the log."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run(["compute-sanitizer", f"--tool={tool}", sys.executable, str(script)],
                         capture_output=True, text=True, env=env, timeout=900)
    log = res.stdout + res.stderr
    assert res.returncode == 0 and "done" in log, log[-4000:]
    return log


def assert_compute_sanitizer_clean(tool: str, source: str, tmp_path) -> None:
    """Run the Python ``source`` (which prints "done" at its end) under ``compute-sanitizer
    --tool=tool`` (:func:`run_compute_sanitizer`) and require a clean summary."""
    import re

    script = tmp_path / "sanitize_case.py"
    script.write_text(source)
    log = run_compute_sanitizer(tool, script)
    # memcheck closes with "ERROR SUMMARY: 0 errors", racecheck with "RACECHECK SUMMARY: 0 hazards
    # displayed (0 errors, 0 warnings)"
    assert re.search(r"(ERROR SUMMARY: 0 errors|RACECHECK SUMMARY: 0 hazards displayed \(0 errors)", log), \
        log[-4000:]
