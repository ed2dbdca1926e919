"""Rotary position embedding in plain PyTorch: the specification, and the path used on CPUs.

Two conventions, the same rotation of pairs (x1, x2) by the angle theta(pos, j):

    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)

* flash-attn (``apply_rotary_emb``): x (B, S, H, D); cos/sin (S_max, rotary_dim / 2), one column
  a pair; the pairs are (x[j], x[j + rotary_dim/2]) (GPT-NeoX) or (x[2j], x[2j+1]) (GPT-J,
  ``interleaved``); the position of token s of batch b is s + seqlen_offsets[b].
* Hugging Face (``apply_rotary_pos_emb``): ``x * cos + rotate_half(x) * sin`` with
  ``rotate_half(x) = cat(-x2, x1)`` and full-width tables (columns duplicated: cat(f, f)).

Both compute in the input dtype, as the libraries they follow do; dims from rotary_dim on pass
through unchanged. This module imports nothing from the kernels: it is what they are tested
against.
"""
from __future__ import annotations

import torch


def _rotate_half(x: torch.Tensor, interleaved: bool) -> torch.Tensor:
    if interleaved:
        x1, x2 = x[..., ::2], x[..., 1::2]
        return torch.stack((-x2, x1), dim=-1).flatten(-2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_emb_reference(x, cos, sin, interleaved=False, seqlen_offsets=0):
    """flash-attn's convention; returns a new tensor. See :func:`flashkernels.apply_rotary_emb`."""
    S = x.shape[1]
    rd = 2 * cos.shape[-1]
    pos = torch.arange(S, device=x.device)
    if isinstance(seqlen_offsets, torch.Tensor):
        pos = pos[None, :] + seqlen_offsets.to(device=x.device, dtype=torch.long)[:, None]  # (B, S)
    else:
        pos = (pos + seqlen_offsets)[None, :]  # (1, S)
    c, s = cos[pos][:, :, None, :], sin[pos][:, :, None, :]  # (B | 1, S, 1, rd / 2)
    if interleaved:
        c, s = c.repeat_interleave(2, dim=-1), s.repeat_interleave(2, dim=-1)
    else:
        c, s = torch.cat((c, c), dim=-1), torch.cat((s, s), dim=-1)
    xr = x[..., :rd]
    return torch.cat((xr * c + _rotate_half(xr, interleaved) * s, x[..., rd:]), dim=-1)


def rotary_pos_emb_reference(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
    """Hugging Face's convention; returns (q_embed, k_embed). See
    :func:`flashkernels.apply_rotary_pos_emb`."""
    if position_ids is not None:
        cos, sin = cos[position_ids], sin[position_ids]  # (B, S, rd)
    elif cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    rd = cos.shape[-1]

    def rot(x):
        xr = x[..., :rd]
        return torch.cat((xr * cos + _rotate_half(xr, False) * sin, x[..., rd:]), dim=-1)

    return rot(q), rot(k)
