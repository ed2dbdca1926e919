"""Attention in plain PyTorch: the specification, and the path used on CPUs.

    out = softmax(q @ k^T * scale + bias) @ v          lse = logsumexp(q @ k^T * scale + bias)

over tensors laid out (B, H, S, D). ``bias`` holds the float mask, ``-inf`` where a bool mask is
False, and ``-inf`` above the causal diagonal. The diagonal is aligned top-left (query i sees keys
j <= i, as torch's SDPA) or bottom-right (query i sees keys j <= i + Sk - Sq, as flash-attn).

Two flash-attn features change the scores before the bias:
  * ``window_size=(left, right)``: query i sees only keys j with
    i + offset - left <= j <= i + offset + right (offset as the causal diagonal: 0 top-left,
    Sk - Sq bottom-right); -1 leaves that side unbounded. With ``causal`` the right bound is 0.
  * ``softcap``: the scaled scores become ``softcap * tanh(scores / softcap)`` (0 = off).
  * ``alibi_slopes`` ((Hq,) or (B, Hq)): ``-slope * |i + offset - j|`` is added to the (capped)
    scores, offset as the causal diagonal.
  * ``sink`` ((Hq,) logits): one extra key per head whose score is ``sink[h]`` (not scaled, not
    capped, never masked) and whose value is zero: it takes probability mass from the real keys
    and enters the lse. A row that sees no real key then gives output 0 and lse ``sink[h]``.

A row whose keys are all masked gives output 0 and lse -inf (never NaN), and zero gradients.

Queries are processed in chunks so that no (Sq, Sk) matrix is ever materialised whole: the
largest intermediate is ``chunk x Sk`` per head. Autograd works through it (the chunk's
probabilities are then kept for backward, as any autograd-through-softmax would).

This module imports nothing from the kernels: it is what they are tested against.
"""
from __future__ import annotations

import math

import torch

from ..._cpu_math import settle as _settle_cpu_math

# Bytes allowed for one chunk of scores (per call, all heads together); 256 MiB keeps
# Sq = Sk = 16384, D = 64 (one head) within a few hundred MB on a CPU.
CHUNK_BYTES = 256 * 2**20


def causal_offset(seqlen_q: int, seqlen_k: int, align: str) -> int:
    """Query i may attend key j iff j <= i + offset."""
    if align == "top_left":
        return 0
    if align == "bottom_right":
        return seqlen_k - seqlen_q
    raise ValueError(f"causal_align: expected 'top_left' or 'bottom_right', got {align!r}")


def default_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types (as the kernels accumulate), the input's own dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = False,
    causal_align: str = "top_left",
    mask: torch.Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    sink: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention. Returns ``(out, lse)``.

    Args:
        q: (B, Hq, Sq, D). k: (B, Hkv, Sk, D). v: (B, Hkv, Sk, Dv). Hq must be a multiple of Hkv
            (each group of Hq // Hkv query heads shares one key/value head: GQA, MQA).
        scale: multiplies q @ k^T; default 1 / sqrt(D).
        causal, causal_align: see the module docstring.
        mask: bool (True = attend) or float (added to the scores), broadcastable to
            (B, Hq, Sq, Sk).
        window_size: (left, right) sliding window around the diagonal (see the module
            docstring); -1 = unbounded on that side.
        softcap: scores = softcap * tanh(scores / softcap) after scaling, before the mask;
            0 = off.
        alibi_slopes: (Hq,) or (B, Hq): adds ``-slope * |i + offset - j|`` to the scores.
        sink: (Hq,) per-head sink logits (see the module docstring); differentiable.
        compute_dtype: dtype of the arithmetic; default float32 for half inputs, else the
            input dtype. Passing the input's half dtype gives the "same precision" result that
            the test policy compares kernel error against.
    Returns:
        out (B, Hq, Sq, Dv) in q's dtype, lse (B, Hq, Sq) float32 (natural log; float64 when
        computing in float64).
    """
    _settle_cpu_math()  # (oneMKL's first exp / log / tanh in a process, see flashkernels._cpu_math)
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    cdt = compute_dtype or default_compute_dtype(q.dtype)
    lse_dtype = torch.float64 if cdt == torch.float64 else torch.float32
    group = Hq // Hkv
    kc = k.to(cdt).repeat_interleave(group, dim=1) if group > 1 else k.to(cdt)
    vc = v.to(cdt).repeat_interleave(group, dim=1) if group > 1 else v.to(cdt)
    offset = causal_offset(Sq, Sk, causal_align)
    left, right = (int(w) for w in window_size)
    if causal:
        right = 0  # as flash-attn: causal caps the window at the diagonal

    sink_c = None if sink is None else sink.to(cdt).view(1, Hq, 1, 1)
    slopes = None if alibi_slopes is None else alibi_slopes.to(cdt).expand(B, Hq).reshape(B, Hq, 1, 1)

    if Sk == 0 or Sq == 0 or B == 0:
        # Empty products keep the autograd graph: zeros (Sk = 0) or an empty result, zero grads.
        out = torch.matmul(torch.matmul(q.to(cdt), kc.transpose(-1, -2)), vc).to(q.dtype)
        lse = torch.full((B, Hq, Sq), -math.inf, dtype=lse_dtype, device=q.device)
        if sink_c is not None:  # every row sees only the sink
            lse = sink_c.view(1, Hq, 1).expand(B, Hq, Sq).to(lse_dtype)
        return out, lse

    per_row = max(1, B * Hq * Sk * torch.finfo(cdt).bits // 8)
    chunk = max(1, min(Sq, chunk_bytes // per_row))
    outs, lses = [], []
    for start in range(0, Sq, chunk):
        stop = min(Sq, start + chunk)
        s = torch.matmul(q[:, :, start:stop].to(cdt), kc.transpose(-1, -2)) * scale
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        if slopes is not None:
            dist = (torch.arange(start, stop, device=q.device)[:, None] + offset
                    - torch.arange(Sk, device=q.device)[None, :]).abs().to(cdt)
            s = s - slopes * dist
        if mask is not None:
            m = mask.expand(B, Hq, Sq, Sk)[:, :, start:stop]
            if m.dtype == torch.bool:
                s = s.masked_fill(~m, -math.inf)
            else:
                s = s + m.to(cdt)
        if left >= 0 or right >= 0:
            diag = torch.arange(start, stop, device=q.device)[:, None] + offset
            cols = torch.arange(Sk, device=q.device)[None, :]
            if left >= 0:
                s = s.masked_fill(cols < diag - left, -math.inf)
            if right >= 0:
                s = s.masked_fill(cols > diag + right, -math.inf)
        row_max = s.amax(dim=-1, keepdim=True).detach()
        if sink_c is not None:
            row_max = torch.maximum(row_max, sink_c.detach())
        row_max = torch.where(torch.isinf(row_max) & (row_max < 0), torch.zeros_like(row_max), row_max)
        p = torch.exp(s - row_max)
        denom = p.sum(dim=-1, keepdim=True)
        if sink_c is not None:
            denom = denom + torch.exp(sink_c - row_max)
        empty = denom == 0
        o = torch.matmul(p.to(vc.dtype), vc) / torch.where(empty, torch.ones_like(denom), denom)
        lse = torch.where(empty, torch.full_like(denom, -math.inf), row_max + torch.log(denom))
        outs.append(o.to(q.dtype))
        lses.append(lse.squeeze(-1).to(lse_dtype))
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def varlen_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    sink: torch.Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed sequences: each one is :func:`attention_reference` alone, aligned bottom-right.

    q (total_q, Hq, D), k/v (total_k, Hkv, D); cu_seqlens_q/k (n + 1,) offsets; alibi_slopes
    (Hq,) or (n, Hq). Returns out (total_q, Hq, D) and lse (Hq, total_q).
    """
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs, lses = [], []
    for b in range(len(cq) - 1):
        qb = q[cq[b]:cq[b + 1]].transpose(0, 1)[None]
        kb = k[ck[b]:ck[b + 1]].transpose(0, 1)[None]
        vb = v[ck[b]:ck[b + 1]].transpose(0, 1)[None]
        slopes = None
        if alibi_slopes is not None:
            slopes = alibi_slopes if alibi_slopes.dim() == 1 else alibi_slopes[b]
        o, lse = attention_reference(qb, kb, vb, scale=scale, causal=causal, causal_align="bottom_right",
                                     window_size=window_size, softcap=softcap, alibi_slopes=slopes, sink=sink,
                                     compute_dtype=compute_dtype)
        outs.append(o[0].transpose(0, 1))
        lses.append(lse[0])
    H = q.shape[1]
    if not outs:
        return q.new_zeros(q.shape), torch.zeros((H, 0), dtype=torch.float32, device=q.device)
    return torch.cat(outs, dim=0), torch.cat(lses, dim=1)
