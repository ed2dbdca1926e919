"""Attention over a KV cache in plain PyTorch: the specification, and the path used on CPUs.

For batch element b with row r (``cache_batch_idx[b]`` or b; paged: the pages
``block_table[b]``), lengths ``L = cache_seqlens[b]``, ``Sn`` new tokens and ``Sk = L + Sn``:

1. rotary (``rotary_cos``/``rotary_sin``): the new keys are rotated at positions L + j; the
   queries at L + i when causal or windowed, else all at position L (flash-attn's rule);
2. append: the (rotated) k, v are written into the cache at positions L .. L + Sn - 1, in place;
3. attention of q over the row's keys [leftpad_b, Sk) by :func:`attention_reference` with the
   causal diagonal aligned bottom-right (query i sees keys j <= i + Sk - Sq), the window, softcap
   and ALiBi measured from the same diagonal. Positions count from the start of the row also
   with a leftpad (flash-attn's convention: its leftpad shifts keys and length alike, which
   cancels), so leftpad only hides the keys before it.

One batch element at a time: readable, not fast. This module imports nothing from the kernels.
"""
from __future__ import annotations

import torch

from ..attention.reference import attention_reference
from ..rope.reference import rotary_emb_reference


def _row_positions(b: int, pos: torch.Tensor, k_cache, cache_batch_idx, block_table):
    """(index into dim 0, index into dim 1) of batch b's positions ``pos`` in the cache."""
    if block_table is not None:
        page = k_cache.shape[1]
        return block_table[b].long()[pos // page], pos % page
    row = int(cache_batch_idx[b]) if cache_batch_idx is not None else b
    return torch.full_like(pos, row), pos


def kvcache_reference(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None, *,
                      cache_seqlens, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                      scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                      rotary_interleaved=True, alibi_slopes=None, compute_dtype=None):
    """Returns ``(out, lse)``: out (B, Sq, Hq, D) in q's dtype, lse (B, Hq, Sq) (float32, or
    float64 when computing in float64). Writes k, v into k_cache, v_cache. ``cache_seqlens`` is
    a (B,) integer tensor. Shapes and semantics: :func:`flashkernels.flash_attn_with_kvcache`.
    ``compute_dtype`` as in :func:`attention_reference` (None: float32 for half inputs)."""
    B, Sq, Hq, D = q.shape
    Sn = 0 if k is None else k.shape[1]
    lens = cache_seqlens.long().tolist()
    if rotary_cos is not None:
        offsets = cache_seqlens.long()
        k = rotary_emb_reference(k, rotary_cos, rotary_sin, rotary_interleaved, offsets)
        if causal or tuple(window_size) != (-1, -1):
            q = rotary_emb_reference(q, rotary_cos, rotary_sin, rotary_interleaved, offsets)
        else:  # every query token at position L: rotate them as one token of Sq * Hq heads
            q = rotary_emb_reference(q.reshape(B, 1, Sq * Hq, D), rotary_cos, rotary_sin,
                                     rotary_interleaved, offsets).reshape(B, Sq, Hq, D)
    if k is not None:
        with torch.no_grad():
            for b in range(B):
                rows, slots = _row_positions(b, torch.arange(lens[b], lens[b] + Sn, device=q.device),
                                             k_cache, cache_batch_idx, block_table)
                k_cache[rows, slots] = k[b]
                v_cache[rows, slots] = v[b]
    outs, lses = [], []
    for b in range(B):
        Sk = lens[b] + Sn
        rows, slots = _row_positions(b, torch.arange(Sk, device=q.device), k_cache, cache_batch_idx,
                                     block_table)
        kb = k_cache[rows, slots].transpose(0, 1)[None]  # (1, Hkv, Sk, D)
        vb = v_cache[rows, slots].transpose(0, 1)[None]
        mask = None
        if cache_leftpad is not None:
            mask = (torch.arange(Sk, device=q.device) >= int(cache_leftpad[b])).view(1, 1, 1, Sk)
        slopes = None
        if alibi_slopes is not None:
            slopes = alibi_slopes.reshape(-1, Hq)[b if alibi_slopes.dim() == 2 else 0][None]
        o, lse = attention_reference(q[b:b + 1].transpose(1, 2), kb, vb, scale=scale, causal=causal,
                                     causal_align="bottom_right", mask=mask, window_size=window_size,
                                     softcap=softcap, alibi_slopes=slopes, compute_dtype=compute_dtype)
        outs.append(o.transpose(1, 2))
        lses.append(lse)
    if B == 0:
        lse_dtype = torch.float64 if compute_dtype == torch.float64 else torch.float32
        return q.new_empty(q.shape), torch.empty((0, Hq, Sq), dtype=lse_dtype, device=q.device)
    return torch.cat(outs), torch.cat(lses)
