"""RMSNorm in plain PyTorch: the specification, and the path used on CPUs.

Over the last dim of ``x`` (N columns), with ``h = x`` or ``h = x + residual``::

    rstd = 1 / sqrt(mean(h², -1) + eps)
    y    = h * rstd * (offset + weight)          (no ``* (offset + weight)`` when weight is None)

The casting modes say where the rounding to the input dtype happens (they differ only for
float16 / bfloat16 inputs):

* ``"llama"`` (Hugging Face LlamaRMSNorm): ``h * rstd`` in float32, rounded to the input dtype,
  then multiplied by ``offset + weight`` in the input dtype.
* ``"gemma"`` (Hugging Face GemmaRMSNorm, with offset=1.0): everything in float32,
  ``(h * rstd) * (offset + weight.float())``, rounded once at the end.
* ``"none"`` (Liger's): the products in the input dtype: ``rstd`` (from a float32 mean square,
  so that x² cannot overflow float16) is rounded to the input dtype, then ``h * rstd`` and
  ``* (offset + weight)`` are each rounded.

The residual sum ``h = x + residual`` is rounded to the input dtype (it is returned, and the
next layer's residual stream is in that dtype), and the norm reads the rounded ``h``.

This module imports nothing from the kernels: it is what they are tested against.
"""
from __future__ import annotations

import torch

CASTING_MODES = ("llama", "gemma", "none")


def rms_norm_reference(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float = 1e-6,
    *,
    residual: torch.Tensor | None = None,
    offset: float = 0.0,
    casting_mode: str = "llama",
):
    """RMSNorm over the last dim; ``(y, h)`` when ``residual`` is given, else ``y``.

    Shapes: x (..., N), weight (N,) or None, residual like x. The output has x's dtype.
    Differentiable through autograd.
    """
    h = x if residual is None else x + residual
    dtype = h.dtype
    if casting_mode == "llama":
        hf = h.float() if dtype != torch.float64 else h
        y = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)
        if weight is not None:
            y = (offset + weight) * y
    elif casting_mode == "gemma":
        hf = h.float() if dtype != torch.float64 else h
        y = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
        if weight is not None:
            y = y * (offset + (weight.float() if dtype != torch.float64 else weight))
        y = y.to(dtype)
    elif casting_mode == "none":
        hf = h.float() if dtype != torch.float64 else h
        y = h * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps).to(dtype)
        if weight is not None:
            y = y * (offset + weight)
    else:
        raise ValueError(f"casting_mode: expected one of {CASTING_MODES}, got {casting_mode!r}")
    return y if residual is None else (y, h)
