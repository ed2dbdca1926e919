"""Launchers for the attention kernels, registered as torch.library custom ops.

``torch.ops.flashkernels.attn_fwd`` and ``torch.ops.flashkernels.attn_bwd`` are ``triton_op``s:
torch.compile sees through them (``wrap_triton``) with no graph break, and autograd is
registered one layer up (autograd.py), outside the ops.

Both take q/k/v indexed (B, H, S, D) with any strides whose last one is 1, so (B, S, H, D)
inputs arrive as transposed views, not copies. ``bshd=True`` allocates outputs (and gradients)
laid out (B, S, H, D) in memory and returns them as (B, H, S, D) views, so a flash_attn-style
caller gets a contiguous (B, S, H, D) tensor back.

Block sizes come from :func:`fwd_config` / :func:`bwd_configs`, chosen from the head dim, dtype
and the device's shared memory; under Triton's interpreter small blocks exercise the masked paths
at small sizes.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import torch
from torch.library import triton_op, wrap_triton

from .kernels.bwd import attn_bwd_dkdv_kernel, attn_bwd_dq_kernel, attn_bwd_preprocess_kernel
from .kernels.fwd import attn_fwd_kernel


class Config(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def block_d(head_dim: int) -> int:
    """Head dim padded to a power of two, at least 16 (tl.dot's smallest K)."""
    return max(16, 1 << (head_dim - 1).bit_length())


@functools.lru_cache(maxsize=None)
def _smem_limit(device_index: int) -> int:
    props = torch.cuda.get_device_properties(device_index)
    return int(getattr(props, "shared_memory_per_block_optin", 0) or 99 * 1024)


def _fit(cfg: Config, smem_fn, limit: int, shrink_n_first: bool) -> Config:
    """Shrink stages, then the streamed block, then the resident block, until smem fits."""
    bm, bn, w, st = cfg
    while smem_fn(bm, bn, st) > 0.9 * limit:
        if st > 2:
            st -= 1
        elif shrink_n_first and bn > 16:
            bn //= 2
        elif bm > 16:
            bm //= 2
        elif bn > 16:
            bn //= 2
        else:
            break
    return Config(bm, bn, w, st)


def fwd_config(head_dim: int, dtype: torch.dtype, device: torch.device) -> Config:
    """Forward blocks: BLOCK_M query rows resident, BLOCK_N keys streamed."""
    if device.type != "cuda":  # interpreter: small, unequal blocks hit every masked branch
        return Config(32, 16, 4, 1)
    bd = block_d(head_dim)
    # Measured on an H100 (bf16, FA3-paper shapes at S=4096, scripts/tune_attention.py; table in
    # docs/perf-notes.md): (128, 64, 8 warps, 3 stages) led at D=64 and 128 (424 and 465 TF/s);
    # at D=256 (64, 32, 4, 2) ran 404 TF/s where (64, 64, 8, 2) ran 245.
    if dtype == torch.float32:  # twice the bytes a tile; picked for no spills (ptxas, sm_90a)
        cfg = Config(64, 32, 8, 2) if bd <= 128 else Config(32, 16, 4, 2)
    elif bd <= 128:
        cfg = Config(128, 64, 8, 3)
    else:
        cfg = Config(64, 32, 4, 2)
    elt = dtype.itemsize
    return _fit(cfg, lambda bm, bn, st: elt * bd * (bm + 2 * bn * st), _smem_limit(device.index or 0), True)


def bwd_configs(head_dim: int, dtype: torch.dtype, device: torch.device) -> tuple[Config, Config]:
    """(dK/dV config, dQ config). dK/dV keeps BLOCK_N keys resident and streams BLOCK_M queries;
    dQ keeps BLOCK_M queries resident and streams BLOCK_N keys."""
    if device.type != "cuda":
        return Config(16, 32, 4, 1), Config(32, 16, 4, 1)
    bd = block_d(head_dim)
    # Measured as the forward (bf16, S=4096, H100): the dK/dV and dQ kernels were swept one at a
    # time with the other fixed, their times adding.
    if dtype == torch.float32:  # picked for (almost) no spills (ptxas, sm_90a), not timed
        if bd <= 128:
            kv, q = Config(16, 64, 8, 2), Config(64, 32, 8, 2)
        else:
            kv, q = Config(16, 32, 8, 2), Config(32, 16, 4, 2)
    elif bd <= 64:
        kv, q = Config(32, 64, 4, 3), Config(128, 64, 8, 3)
    elif bd <= 128:
        kv, q = Config(64, 128, 8, 2), Config(128, 64, 8, 3)
    else:
        kv, q = Config(32, 64, 8, 2), Config(64, 32, 4, 3)
    elt = dtype.itemsize
    limit = _smem_limit(device.index or 0)
    kv = _fit(kv, lambda bm, bn, st: elt * bd * (2 * bn + 2 * bm * st), limit, False)
    q = _fit(q, lambda bm, bn, st: elt * bd * (2 * bm + 2 * bn * st), limit, True)
    return kv, q


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """fp32 inputs use IEEE dots unless TF32 is allowed, as torch's own matmuls do."""
    return "tf32" if (dtype != torch.float32 or allow_tf32) else "ieee"


def _mask_args(mask: Optional[torch.Tensor], shape: tuple[int, int, int, int], dummy: torch.Tensor):
    """(tensor, 4 strides, kind): the mask broadcast to (B, Hq, Sq, Sk) with zero strides."""
    if mask is None:
        return dummy, (0, 0, 0, 0), 0
    m = mask.expand(shape)
    # bool goes in as is (Triton loads torch.bool as i1); a .view(torch.uint8) here broke
    # Inductor's lowering under torch.compile (aten.view.dtype on bool).
    return m, m.stride(), 1 if m.dtype == torch.bool else 2


def _window_args(window_left: int, window_right: int, causal: bool, seqlen_q: int, seqlen_k: int):
    """(HAS_WINDOW, IS_CAUSAL, left, right) for the kernels. -1 (unbounded) becomes Sq + Sk, which
    no row's bound reaches; causal caps the right bound at the diagonal (as flash-attn), and a
    window that is plain causal (left unbounded, right 0) takes the causal path."""
    if causal:
        window_right = 0
    if window_left < 0 and (window_right < 0 or causal):
        return False, causal, 0, 0
    big = seqlen_q + seqlen_k
    return (True, False, window_left if window_left >= 0 else big,
            window_right if window_right >= 0 else big)


def _empty_like_layout(b: int, h: int, s: int, d: int, bshd: bool, like: torch.Tensor) -> torch.Tensor:
    if bshd:
        return torch.empty((b, s, h, d), dtype=like.dtype, device=like.device).transpose(1, 2)
    return torch.empty((b, h, s, d), dtype=like.dtype, device=like.device)


@triton_op("flashkernels::attn_fwd", mutates_args=())
def attn_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
    scale: float, causal: bool, causal_offset: int, bshd: bool, allow_tf32: bool,
    window_left: int = -1, window_right: int = -1, softcap: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash attention forward. q (B, Hq, Sq, D), k/v (B, Hkv, Sk, D) with unit last stride;
    mask None or broadcastable to (B, Hq, Sq, Sk). Returns out (B, Hq, Sq, D), lse (B, Hq, Sq)
    float32 natural log (-inf for fully masked rows).
    window_left/right: row i sees keys i + causal_offset - left .. i + causal_offset + right
    (-1 = unbounded; causal sets right = 0). softcap > 0: scores = softcap * tanh(scores / softcap)."""
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    out = _empty_like_layout(B, H, Sq, D, bshd, q)
    lse = torch.empty((B, H, Sq), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse.fill_(-math.inf)
    cfg = fwd_config(D, q.dtype, q.device)
    m, ms, kind = _mask_args(mask, (B, H, Sq, Sk), q)
    has_window, causal, wl, wr = _window_args(window_left, window_right, causal, Sq, Sk)
    grid = (triton_cdiv(Sq, cfg.block_m) * B * H,)
    wrap_triton(attn_fwd_kernel)[grid](
        q, k, v, m, out, lse, scale,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        ms[0], ms[1], ms[2], ms[3],
        H, H // Hkv, Sq, Sk, causal_offset, wl, wr, float(softcap),
        HEAD_DIM=D, BLOCK_D=block_d(D), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        IS_CAUSAL=causal, MASK_KIND=kind, DOT_PRECISION=dot_precision(q.dtype, allow_tf32),
        HAS_WINDOW=has_window, HAS_SOFTCAP=softcap > 0,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, lse


@triton_op("flashkernels::attn_bwd", mutates_args=())
def attn_bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, dlse: Optional[torch.Tensor], mask: Optional[torch.Tensor],
    scale: float, causal: bool, causal_offset: int, bshd: bool, allow_tf32: bool,
    window_left: int = -1, window_right: int = -1, softcap: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flash attention backward: (dq, dk, dv) shaped and laid out like q, k, v's (B, H, S, D).
    ``dlse`` (B, Hq, Sq) or None is the gradient arriving at lse."""
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    dq = _empty_like_layout(B, H, Sq, D, bshd, q)
    dk = _empty_like_layout(B, Hkv, Sk, D, bshd, k)
    dv = _empty_like_layout(B, Hkv, Sk, D, bshd, v)
    if B * H == 0 or D == 0:
        return dq, dk, dv
    if Sq == 0 or Sk == 0:  # nothing attends: every gradient is zero
        return dq.zero_(), dk.zero_(), dv.zero_()
    kv_cfg, q_cfg = bwd_configs(D, q.dtype, q.device)
    bd = block_d(D)
    prec = dot_precision(q.dtype, allow_tf32)
    m, ms, kind = _mask_args(mask, (B, H, Sq, Sk), q)
    has_window, causal, wl, wr = _window_args(window_left, window_right, causal, Sq, Sk)
    delta = torch.empty((B, H, Sq), dtype=torch.float32, device=q.device)
    pre_m = 64 if q.device.type == "cuda" else 32
    wrap_triton(attn_bwd_preprocess_kernel)[(triton_cdiv(Sq, pre_m) * B * H,)](
        out, do, delta,
        out.stride(0), out.stride(1), out.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        H, Sq, HEAD_DIM=D, BLOCK_D=bd, BLOCK_M=pre_m,
    )
    if dlse is not None:  # d lse / d scores = P: fold it into the row term (in place: no copy)
        delta.sub_(dlse)
    wrap_triton(attn_bwd_dkdv_kernel)[(triton_cdiv(Sk, kv_cfg.block_n) * B * Hkv,)](
        q, k, v, m, do, lse, delta, dk, dv, scale,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        ms[0], ms[1], ms[2], ms[3],
        do.stride(0), do.stride(1), do.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        H, Hkv, H // Hkv, Sq, Sk, causal_offset, wl, wr, float(softcap),
        HEAD_DIM=D, BLOCK_D=bd, BLOCK_M=kv_cfg.block_m, BLOCK_N=kv_cfg.block_n,
        IS_CAUSAL=causal, MASK_KIND=kind, DOT_PRECISION=prec,
        HAS_WINDOW=has_window, HAS_SOFTCAP=softcap > 0,
        num_warps=kv_cfg.num_warps, num_stages=kv_cfg.num_stages,
    )
    wrap_triton(attn_bwd_dq_kernel)[(triton_cdiv(Sq, q_cfg.block_m) * B * H,)](
        q, k, v, m, do, lse, delta, dq, scale,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        ms[0], ms[1], ms[2], ms[3],
        do.stride(0), do.stride(1), do.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        H, H // Hkv, Sq, Sk, causal_offset, wl, wr, float(softcap),
        HEAD_DIM=D, BLOCK_D=bd, BLOCK_M=q_cfg.block_m, BLOCK_N=q_cfg.block_n,
        IS_CAUSAL=causal, MASK_KIND=kind, DOT_PRECISION=prec,
        HAS_WINDOW=has_window, HAS_SOFTCAP=softcap > 0,
        num_warps=q_cfg.num_warps, num_stages=q_cfg.num_stages,
    )
    return dq, dk, dv


def _kernels_interpreted() -> bool:
    """True when the kernels were decorated under TRITON_INTERPRET=1 (they then run on CPU
    tensors only). Triton reads the variable once, when ``triton.language`` is first imported."""
    import triton.language.standard as tl_standard
    from triton.runtime.interpreter import InterpretedFunction

    ours = isinstance(attn_fwd_kernel, InterpretedFunction)
    if ours != isinstance(tl_standard.sum, InterpretedFunction):  # Triton's own @jit helpers
        raise RuntimeError(
            "TRITON_INTERPRET changed between the first import of triton and the import of the "
            "flashkernels kernels, so interpreted and compiled functions are mixed; set (or unset) "
            "it before anything imports triton")
    return ours


# Decided once, at import: a plain bool that torch.compile can read (isinstance on a kernel
# object inside a traced function is a graph break).
KERNELS_INTERPRETED = _kernels_interpreted()
if KERNELS_INTERPRETED:
    from ..._interpreter import fix_numpy_scalar_conversion

    fix_numpy_scalar_conversion()


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b
