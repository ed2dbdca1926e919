"""Public attention functions: validation, docstrings and dispatch to a backend."""
from __future__ import annotations

import math

import torch

from ... import _backend
from ..._validate import KERNEL_DTYPES, check_dropout, check_mask, check_qkv, check_scale
from .reference import attention_reference, causal_offset


@torch.compiler.assume_constant_result  # Dynamo cannot trace the precision getters
def _allow_tf32() -> bool:
    """Whether torch lets fp32 matmuls use TF32; the kernels follow the same setting."""
    return bool(torch.backends.cuda.matmul.allow_tf32) or torch.get_float32_matmul_precision() != "highest"


def _check_window(window_size):
    """(left, right) as ints >= -1, or ValueError naming window_size."""
    try:
        pair = tuple(window_size)
    except TypeError:
        pair = None
    if (pair is None or len(pair) != 2
            or not all(isinstance(w, int) and not isinstance(w, bool) and w >= -1 for w in pair)):
        raise ValueError(f"window_size: expected a pair (left, right) of ints >= -1 (-1 = unbounded), "
                         f"got {window_size!r}")
    return int(pair[0]), int(pair[1])


def _check_softcap(softcap):
    """softcap as a float >= 0 (0 = off), or ValueError naming softcap."""
    if softcap is None:
        return 0.0
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not math.isfinite(softcap) \
            or softcap < 0:
        raise ValueError(f"softcap: expected a finite number >= 0 (0 = off), got {softcap!r}")
    return float(softcap)


def _attention(q, k, v, *, mask, causal, causal_align, scale, backend, bshd, window_size=(-1, -1),
               softcap=0.0):
    """(out, lse) for (B, H, S, D)-indexed views q, k, v, on the backend that ``backend`` resolves to."""
    choice = _backend.resolve(q.device, backend, dtype_ok=q.dtype in KERNEL_DTYPES, dtype=q.dtype)
    if choice.backend == "reference":
        return attention_reference(q, k, v, scale=scale, causal=causal, causal_align=causal_align, mask=mask,
                                   window_size=window_size, softcap=softcap)
    if mask is not None and mask.requires_grad and torch.is_grad_enabled():
        raise NotImplementedError(
            "attn_mask: a float mask that requires grad is not supported by the Triton backend yet "
            "(its gradient would be dropped); detach it or use backend='reference'")
    # Any strides work except a non-unit last one (the kernels assume unit-stride rows).
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    from .autograd import flash_attention  # imports triton: only once the Triton backend is chosen
    from .launch import KERNELS_INTERPRETED

    if KERNELS_INTERPRETED != (q.device.type == "cpu"):
        raise RuntimeError(
            f"backend='triton' cannot run on {q.device.type} tensors: Triton was imported "
            f"{'with' if KERNELS_INTERPRETED else 'without'} TRITON_INTERPRET=1, and it reads the variable "
            "only once, at its first import; set TRITON_INTERPRET=1 before anything imports triton to run "
            "the kernels on CPU tensors, and leave it unset for CUDA tensors")

    windowed = tuple(window_size) != (-1, -1)
    offset = causal_offset(q.shape[2], k.shape[2], causal_align) if (causal or windowed) else 0
    return flash_attention(q, k, v, mask, float(scale), bool(causal), offset, bshd,
                           q.dtype == torch.float32 and _allow_tf32(),
                           int(window_size[0]), int(window_size[1]), float(softcap))


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False, *, backend=None):
    """Drop-in for ``torch.nn.functional.scaled_dot_product_attention``.

    ``out = softmax(query @ key^T * scale + bias) @ value``

    Args:
        query: (B, Hq, Sq, D). key, value: (B, Hkv, Sk, D). float16, bfloat16 or float32 on the
            Triton kernels; float64 runs on the reference path. D from 1 to 256. Any strides
            (a non-unit last stride costs a copy).
        attn_mask: None, bool (True = attend) or float (added to the scores), broadcastable to
            (B, Hq, Sq, Sk).
        dropout_p: must be 0.0 (dropout is not supported yet).
        is_causal: query i attends keys j <= i (aligned top-left, as torch). Not with attn_mask.
        scale: default 1 / sqrt(D).
        enable_gqa: allow Hq to be a multiple of Hkv (grouped-query / multi-query attention).
        backend: "auto" (default; Triton on a CUDA GPU, PyTorch on a CPU), "triton" or
            "reference"; default from ``$FLASHKERNELS_BACKEND``.
    Returns:
        (B, Hq, Sq, D) in the input dtype. A row with every key masked gives 0 (torch gives NaN).
    """
    check_qkv(query, key, value, ("query", "key", "value"), "BHSD")
    check_dropout(dropout_p)
    check_scale(scale, "scale")
    B, Hq, Sq, D = query.shape
    Hkv, Sk = key.shape[1], key.shape[2]
    if Hq != Hkv and not enable_gqa:
        raise ValueError(f"enable_gqa: query has {Hq} heads and key/value {Hkv}; pass enable_gqa=True "
                         f"for grouped-query attention")
    if attn_mask is not None:
        if is_causal:
            raise ValueError("is_causal: cannot be combined with attn_mask; fold the causal mask into "
                             "attn_mask or pass one of the two")
        check_mask(attn_mask, "attn_mask", (B, Hq, Sq, Sk), query)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    out, _ = _attention(query, key, value, mask=attn_mask, causal=bool(is_causal), causal_align="top_left",
                        scale=scale, backend=backend, bshd=False)
    return out


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                    backend=None):
    """Drop-in for ``flash_attn.flash_attn_func``.

    ``out = softmax(cap(q @ k^T * softmax_scale) + bias) @ v`` with ``cap(s) = softcap *
    tanh(s / softcap)`` (identity when softcap = 0) and ``bias`` -inf outside the causal /
    sliding window, 0 inside.

    Args:
        q: (B, Sq, Hq, D). k, v: (B, Sk, Hkv, D) with Hq a multiple of Hkv (GQA / MQA).
            float16, bfloat16 or float32 (float64 on the reference path), D from 1 to 256.
        softmax_scale: default 1 / sqrt(D).
        causal: query i attends keys j <= i + Sk - Sq (aligned bottom-right, as flash-attn);
            query rows that see no key give 0.
        window_size: (left, right) ints >= -1: query i attends keys j with
            i + Sk - Sq - left <= j <= i + Sk - Sq + right; -1 = unbounded on that side. With
            causal, right is 0. Key blocks outside the window are skipped, not masked.
        softcap: > 0 caps the scaled scores, ``softcap * tanh(scores / softcap)``; 0 = off.
        deterministic: accepted; the backward is always deterministic (no atomics).
        return_attn_probs: also return the softmax log-sum-exp, as flash-attn does.
        dropout_p, alibi_slopes: not supported yet; anything but the default raises
            NotImplementedError.
        backend: "auto", "triton" or "reference" (see ``scaled_dot_product_attention``).
    Returns:
        out (B, Sq, Hq, D); with ``return_attn_probs``, ``(out, softmax_lse, None)`` where
        softmax_lse is (B, Hq, Sq) float32, natural log, -inf for rows that see no key.
    """
    check_qkv(q, k, v, ("q", "k", "v"), "BSHD")
    check_dropout(dropout_p)
    check_scale(softmax_scale, "softmax_scale")
    window_size = _check_window(window_size)
    softcap = _check_softcap(softcap)
    if alibi_slopes is not None:
        raise NotImplementedError("alibi_slopes: ALiBi is not supported yet (expected None)")
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else float(softmax_scale)
    out, lse = _attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask=None,
                          causal=bool(causal), causal_align="bottom_right", scale=scale,
                          backend=backend, bshd=True, window_size=window_size, softcap=softcap)
    out = out.transpose(1, 2)
    if return_attn_probs:
        return out, lse.float(), None
    return out
