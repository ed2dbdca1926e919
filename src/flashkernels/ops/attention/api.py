"""Public attention functions: validation, docstrings and dispatch to a backend."""
from __future__ import annotations

import math

import torch

from ... import _backend
from ..._interpreter import require_kernels_can_run
from ..._validate import (KERNEL_DTYPES, check_dropout, check_mask, check_qkv, check_scale, require_rank,
                         require_tensor)
from .reference import attention_reference, causal_offset, varlen_attention_reference


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


def _check_alibi(alibi_slopes, batch: int, heads: int, q: torch.Tensor):
    """(H,) or (B, H) float32 on q's device; no gradient (the kernels give none)."""
    if alibi_slopes is None:
        return None
    require_tensor(alibi_slopes, "alibi_slopes")
    if tuple(alibi_slopes.shape) not in ((heads,), (batch, heads)):
        raise ValueError(f"alibi_slopes: expected shape ({heads},) or ({batch}, {heads}) (query heads), "
                         f"got {tuple(alibi_slopes.shape)}")
    if alibi_slopes.dtype != torch.float32:
        raise TypeError(f"alibi_slopes: expected dtype torch.float32, got {alibi_slopes.dtype}")
    if alibi_slopes.device != q.device:
        raise ValueError(f"alibi_slopes: expected device {q.device} (as q), got {alibi_slopes.device}")
    if alibi_slopes.requires_grad and torch.is_grad_enabled():
        raise NotImplementedError("alibi_slopes: gradients for the slopes are not computed (flash-attn has "
                                  "none either); pass a tensor that does not require grad")
    return alibi_slopes


def _check_sink(learnable_sink, heads: int, q: torch.Tensor):
    """(Hq,) floating logits on q's device, returned as float32 (the cast keeps its gradient)."""
    if learnable_sink is None:
        return None
    require_tensor(learnable_sink, "learnable_sink")
    if tuple(learnable_sink.shape) != (heads,):
        raise ValueError(f"learnable_sink: expected shape ({heads},) (one logit per query head), "
                         f"got {tuple(learnable_sink.shape)}")
    if not learnable_sink.dtype.is_floating_point:
        raise TypeError(f"learnable_sink: expected a float dtype, got {learnable_sink.dtype}")
    if learnable_sink.device != q.device:
        raise ValueError(f"learnable_sink: expected device {q.device} (as q), got {learnable_sink.device}")
    return learnable_sink if q.dtype == torch.float64 else learnable_sink.float()


def _attention(q, k, v, *, mask, causal, causal_align, scale, backend, bshd, window_size=(-1, -1),
               softcap=0.0, alibi_slopes=None, sink=None, deterministic=False):
    """(out, lse) for (B, H, S, D)-indexed views q, k, v, on the backend that ``backend`` resolves to.
    The backward is deterministic when ``deterministic`` or torch.use_deterministic_algorithms is on."""
    choice = _backend.resolve(q.device, backend, dtype_ok=q.dtype in KERNEL_DTYPES, dtype=q.dtype)
    if choice.backend == "reference":
        return attention_reference(q, k, v, scale=scale, causal=causal, causal_align=causal_align, mask=mask,
                                   window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes,
                                   sink=sink)
    if mask is not None and mask.requires_grad and torch.is_grad_enabled():
        raise NotImplementedError(
            "attn_mask: a float mask that requires grad is not supported by the Triton backend yet "
            "(its gradient would be dropped); detach it or use backend='reference'")
    # Any strides work except a non-unit last one (the kernels assume unit-stride rows).
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    flash_attention = _triton_entry(q)
    windowed = tuple(window_size) != (-1, -1)
    offset = causal_offset(q.shape[2], k.shape[2], causal_align) if (causal or windowed or alibi_slopes is not None) \
        else 0
    return flash_attention(q, k, v, mask, float(scale), bool(causal), offset, bshd,
                           q.dtype == torch.float32 and _allow_tf32(),
                           int(window_size[0]), int(window_size[1]), float(softcap), alibi_slopes, sink,
                           deterministic=bool(deterministic) or torch.are_deterministic_algorithms_enabled())


def _triton_entry(q):
    """The autograd entry of the kernels, after checking that they can run on q's device."""
    from .autograd import KERNELS_INTERPRETED, flash_attention  # imports triton: only once the Triton backend is chosen

    require_kernels_can_run(q.device, KERNELS_INTERPRETED)
    return flash_attention


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
        (B, Hq, Sq, D) in the input dtype, in query's memory order (a (B, H, S, D) view of
        (B, S, H, D) memory when query is one, as torch's flash / cuDNN kernels return; else
        contiguous); the gradients likewise. A row with every key masked gives 0 (torch gives NaN).
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
    # The output (and the gradients) in query's memory order, as torch's flash / cuDNN SDPA: a
    # (B, H, S, D) view of (B, S, H, D) memory (the usual q_proj(x).view(B, S, H, D).transpose(1, 2))
    # gets one back, so the caller's out.transpose(1, 2).contiguous() copies nothing.
    bshd = query.stride(1) < query.stride(2)
    out, _ = _attention(query, key, value, mask=attn_mask, causal=bool(is_causal), causal_align="top_left",
                        scale=scale, backend=backend, bshd=bshd)
    return out


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                    learnable_sink=None, backend=None):
    """Drop-in for ``flash_attn.flash_attn_func``.

    ``out = softmax(cap(q @ k^T * softmax_scale) + bias) @ v`` with ``cap(s) = softcap *
    tanh(s / softcap)`` (identity when softcap = 0) and ``bias`` -inf outside the causal /
    sliding window, ``-slope * |i + Sk - Sq - j|`` inside with ALiBi, 0 otherwise.

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
        alibi_slopes: None, or float32 (Hq,) or (B, Hq): adds ``-slope * |i + Sk - Sq - j|`` to
            the (capped) scores. No gradient flows to the slopes.
        deterministic: True makes the backward bitwise reproducible. By default, on an H100 (the
            Gluon backward) dQ is summed with atomic adds in no fixed order, so the last bits of
            dq may differ from run to run, as with flash-attn; elsewhere the backward is
            deterministic either way. ``torch.use_deterministic_algorithms(True)`` does the same.
        return_attn_probs: also return the softmax log-sum-exp, as flash-attn does.
        learnable_sink: None, or (Hq,) logits (any float dtype, computed in float32): one extra
            key per head with score ``learnable_sink[h]`` (not scaled, capped or masked) and a zero
            value; it takes probability mass and enters the lse, and gets a gradient. Rows that see
            no real key then give 0 with lse ``learnable_sink[h]``. (Not in flash-attn.)
        dropout_p: not supported yet; anything but 0 raises NotImplementedError.
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
    B, _, Hq, D = q.shape
    alibi_slopes = _check_alibi(alibi_slopes, B, Hq, q)
    sink = _check_sink(learnable_sink, Hq, q)
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else float(softmax_scale)
    out, lse = _attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask=None,
                          causal=bool(causal), causal_align="bottom_right", scale=scale,
                          backend=backend, bshd=True, window_size=window_size, softcap=softcap,
                          alibi_slopes=alibi_slopes, sink=sink, deterministic=deterministic)
    out = out.transpose(1, 2)
    if return_attn_probs:
        return out, lse.float(), None
    return out


def _check_cu_seqlens(cu, name: str, max_seqlen, max_name: str, device):
    """cu_seqlens: an int32 (n + 1,) tensor on the device; max_seqlen an int >= 0."""
    require_tensor(cu, name)
    if cu.dtype != torch.int32:
        raise TypeError(f"{name}: expected dtype torch.int32, got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 1:
        raise ValueError(f"{name}: expected a 1-d tensor of n + 1 offsets, got shape {tuple(cu.shape)}")
    if cu.device != device:
        raise ValueError(f"{name}: expected device {device} (as q), got {cu.device}")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 0:
        raise ValueError(f"{max_name}: expected an int >= 0, got {max_seqlen!r}")


def _check_cu_values(c: list, name: str, total, max_seqlen: int, max_name: str):
    """Offsets ``c`` (read back from cu_seqlens): 0 first, non-decreasing, ``total`` last (unless
    None: paged keys), no sequence longer than max_seqlen."""
    lens = [b - a for a, b in zip(c, c[1:])]
    if c[0] != 0 or (total is not None and c[-1] != total):
        raise ValueError(f"{name}: expected offsets from 0 to {total} (the packed length), got "
                         f"{c[0]} .. {c[-1]}")
    if any(n < 0 for n in lens):
        raise ValueError(f"{name}: expected non-decreasing offsets, got {c}")
    if lens and max(lens) > max_seqlen:
        raise ValueError(f"{max_name}: a sequence has {max(lens)} tokens, more than {max_name}={max_seqlen}")


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                           alibi_slopes=None, deterministic=False, return_attn_probs=False, block_table=None, *,
                           learnable_sink=None, check_inputs=True, backend=None):
    """Drop-in for ``flash_attn.flash_attn_varlen_func``: packed sequences of different lengths.

    Sequence b holds queries ``q[cu_seqlens_q[b]:cu_seqlens_q[b+1]]`` and keys/values
    ``k[cu_seqlens_k[b]:cu_seqlens_k[b+1]]``; each attends only within itself, exactly as
    :func:`flash_attn_func` on that sequence alone (causal aligned bottom-right per sequence).

    Args:
        q: (total_q, Hq, D). k, v: (total_k, Hkv, D), Hq a multiple of Hkv.
        cu_seqlens_q, cu_seqlens_k: int32 (n + 1,) cumulative lengths, 0 first, total last.
        max_seqlen_q, max_seqlen_k: ints at least the longest sequence's length (they size the
            launch grid).
        softmax_scale, causal, window_size, softcap, learnable_sink, backend: as
            :func:`flash_attn_func`. alibi_slopes: (Hq,) or (n, Hq) float32.
        check_inputs: validate the offsets (reads them: a device sync). With False the caller
            guarantees them; the kernels stay inside q, k, v either way.
        deterministic: as :func:`flash_attn_func`'s (on an H100 the default backward sums dQ with
            atomic adds: the last bits of dq may differ from run to run).
        block_table: None, or int32 (n, max_blocks): k and v are then paged caches
            (num_blocks, page_size, Hkv, D) and sequence b's keys are positions
            0 .. cu_seqlens_k[b+1] - cu_seqlens_k[b] - 1 of its pages (as flash-attn). Inference
            only (no backward), no learnable_sink; runs through ``flash_attn_with_kvcache``.
        dropout_p: not supported yet.
    Returns:
        out (total_q, Hq, D); with ``return_attn_probs``, ``(out, softmax_lse, None)`` with
        softmax_lse (Hq, total_q) float32.
    """
    paged = block_table is not None
    for x, n in ((q, "q"), (k, "k"), (v, "v")):
        require_tensor(x, n)
        if paged and n != "q":
            require_rank(x, n, 4, "(num_blocks, page_size, H, D) with block_table")
        else:
            require_rank(x, n, 3, "(total, H, D)")
    if paged:  # shapes and values of the cache and block_table: flash_attn_with_kvcache checks them
        check_qkv(q[None], k[:1, 0][None], v[:1, 0][None], ("q", "k", "v"), "BSHD")
        if learnable_sink is not None:
            raise NotImplementedError("learnable_sink: not supported with block_table (paged KV) yet")
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            raise NotImplementedError("block_table: the paged path is inference only (no backward), as "
                                      "flash_attn_with_kvcache; call it under torch.no_grad()")
    else:
        check_qkv(q[None], k[None], v[None], ("q", "k", "v"), "BSHD")
    check_dropout(dropout_p)
    check_scale(softmax_scale, "softmax_scale")
    window_size = _check_window(window_size)
    softcap = _check_softcap(softcap)
    _check_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", max_seqlen_q, "max_seqlen_q", q.device)
    _check_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", max_seqlen_k, "max_seqlen_k", q.device)
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"cu_seqlens_q/cu_seqlens_k: expected the same number of sequences, got "
                         f"{cu_seqlens_q.numel() - 1} and {cu_seqlens_k.numel() - 1}")
    if check_inputs:  # one device sync for both
        offsets = torch.cat((cu_seqlens_q, cu_seqlens_k)).tolist()
        n1 = cu_seqlens_q.numel()
        _check_cu_values(offsets[:n1], "cu_seqlens_q", q.shape[0], max_seqlen_q, "max_seqlen_q")
        _check_cu_values(offsets[n1:], "cu_seqlens_k", None if paged else k.shape[0], max_seqlen_k, "max_seqlen_k")
    n, Hq, D = cu_seqlens_q.numel() - 1, q.shape[1], q.shape[2]
    alibi_slopes = _check_alibi(alibi_slopes, n, Hq, q)
    sink = _check_sink(learnable_sink, Hq, q)
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else float(softmax_scale)

    if paged:
        from ..kvcache.api import varlen_paged  # kvcache builds on this module: import at call time

        out, lse = varlen_paged(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), block_table, scale=scale,
                                causal=bool(causal), window_size=window_size, softcap=softcap,
                                alibi_slopes=alibi_slopes, check_inputs=check_inputs, backend=backend)
        return (out, lse.float(), None) if return_attn_probs else out
    choice = _backend.resolve(q.device, backend, dtype_ok=q.dtype in KERNEL_DTYPES, dtype=q.dtype)
    if choice.backend == "reference":
        out, lse = varlen_attention_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, scale=scale, causal=bool(causal),
                                              window_size=window_size, softcap=softcap,
                                              alibi_slopes=alibi_slopes, sink=sink)
    else:
        q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
        flash_attention = _triton_entry(q)
        out, lse = flash_attention(
            q[None].transpose(1, 2), k[None].transpose(1, 2), v[None].transpose(1, 2), None, scale,
            bool(causal), 0, True, q.dtype == torch.float32 and _allow_tf32(),
            window_size[0], window_size[1], softcap, alibi_slopes, sink,
            cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
            bool(deterministic) or torch.are_deterministic_algorithms_enabled())
        out, lse = out.transpose(1, 2)[0], lse[0]
    if return_attn_probs:
        return out, lse.float(), None
    return out
