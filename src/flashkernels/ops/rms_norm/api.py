"""Public RMSNorm: validation, docstring and dispatch to a backend."""
from __future__ import annotations

import numbers

import torch

from ... import _backend
from ..._interpreter import require_kernels_can_run
from ..._validate import KERNEL_DTYPES, require_float_dtype, require_like, require_tensor
from .reference import CASTING_MODES, rms_norm_reference


def _check(x, weight, eps, residual, offset, casting_mode):
    require_tensor(x, "x")
    require_float_dtype(x, "x")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x: expected at least one dim and a non-empty last dim (the normalized "
                         f"one), got shape {tuple(x.shape)}")
    if weight is not None:
        require_like(weight, "weight", x, "x", shape=(x.shape[-1],))
    if residual is not None:
        require_like(residual, "residual", x, "x")
    for name, v in (("eps", eps), ("offset", offset)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name}: expected a float, got {type(v).__name__}")
    if eps < 0:
        raise ValueError(f"eps: expected a value >= 0, got {eps!r}")
    if not isinstance(casting_mode, str):
        raise TypeError(f"casting_mode: expected a str, got {type(casting_mode).__name__}")
    if casting_mode not in CASTING_MODES:
        raise ValueError(f"casting_mode: expected one of {', '.join(map(repr, CASTING_MODES))}, "
                         f"got {casting_mode!r}")


def rms_norm(x, weight, eps=1e-6, *, residual=None, offset=0.0, casting_mode="llama", backend=None):
    """Root-mean-square norm over the last dim, optionally fused with the residual add.

    ``h = x (+ residual)``;  ``y = h / sqrt(mean(h², -1) + eps) * (offset + weight)``

    Args:
        x: (..., N), any leading shape; float16, bfloat16 or float32 on the Triton kernels,
            float64 on the reference path. Any strides (a non-unit last stride, or leading dims
            that do not flatten to one row stride, cost a copy).
        weight: (N,) in x's dtype and device, or None for no affine (y = h * rstd).
        eps: added to the mean square; default 1e-6.
        residual: None, or a tensor like x: then h = x + residual (rounded to x's dtype) is
            normalized and returned too, in one pass (the pre-norm transformer step).
        offset: added to the weight: 0.0 (Llama) or 1.0 (Gemma, whose weights are stored as
            w - 1).
        casting_mode: where half-precision inputs are rounded. "llama" (Hugging Face
            LlamaRMSNorm): normalize in fp32, round, multiply by the weight in x's dtype.
            "gemma" (GemmaRMSNorm, use with offset=1.0): all in fp32, one rounding at the end.
            "none": the products in x's dtype (rstd, from an fp32 mean square, rounded to x's
            dtype first). The sum of squares is fp32 in every mode.
        backend: "auto" (default; Triton on a CUDA GPU, PyTorch on a CPU), "triton" or
            "reference"; default from ``$FLASHKERNELS_BACKEND``.
    Returns:
        y, shaped and typed like x; with ``residual``, ``(y, h)``. Inputs are never written.
        Backward gives dx, dweight (summed over rows in fp32, then cast to weight's dtype) and
        dresidual (= dx).
    """
    _check(x, weight, eps, residual, offset, casting_mode)
    choice = _backend.resolve(x.device, backend, dtype_ok=x.dtype in KERNEL_DTYPES, dtype=x.dtype)
    if choice.backend == "reference":
        return rms_norm_reference(x, weight, eps, residual=residual, offset=offset, casting_mode=casting_mode)
    from .autograd import rms_norm_triton  # imports triton: only once the Triton backend is chosen
    from .launch import KERNELS_INTERPRETED, MODES

    require_kernels_can_run(x.device, KERNELS_INTERPRETED)
    if weight is not None and weight.stride(0) != 1:
        weight = weight.contiguous()
    y, h, _ = rms_norm_triton(x, weight, residual, float(eps), float(offset), MODES[casting_mode])
    return y if residual is None else (y, h)
