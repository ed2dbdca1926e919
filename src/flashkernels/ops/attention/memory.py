"""Peak extra memory of attention, forward and backward: naive (torch SDPA's math backend) vs
flashkernels' Triton path. Pure arithmetic on the shape; nothing is allocated.

"Extra" means beyond the inputs q, k, v (and, for backward, grad_out); the output, everything
autograd keeps for backward and the gradients dq, dk, dv all count. Backward's peak is measured
from before the forward, so it includes what the forward saved.

Notation (elements): N = B*Hq*Sq*Sk (scores), Q = B*Hq*Sq*D (q, out), K = B*Hkv*Sk*D (k, v),
Kx = B*Hq*Sk*D (k or v repeated to Hq heads), R = B*Hq*Sq (rows), M = Sq*Sk (causal mask).
e = bytes of the input dtype; c = bytes the math backend computes in: 4 for fp16/bf16 inputs
(it upcasts them unless ``torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)``), e
otherwise. u = 1 for fp16/bf16 (the upcast copies exist), g = 1 when Hq != Hkv (GQA copies).

Naive, as ``_scaled_dot_product_attention_math`` runs (traced op by op and allocation by
allocation on torch 2.13, CPU, and on torch 2.11, H100; the GPU test checks it within 10%):

    forward  = u*c*(Q + 2K)          q, k, v upcast copies (live to the end of the call)
             + c*Q + c*Kx            q * sqrt(scale), k^T * sqrt(scale)      [saved]
             + g*2c*Kx               k, v repeated to Hq heads (v's is saved)
             + causal * c*M          the float causal mask (Sq, Sk)
             + c*N + c*N + N + R     scores, softmax probs [saved], isneginf(scores) (bool),
                                     its all() over keys: the peak is inside _safe_softmax
    backward = e*Q                   out
             + c*N + c*Q + c*Kx      saved probs, scaled q, scaled k^T
             + c*Kx                  grad of the expanded v (the saved v copy is freed first)
             + 2*c*N                 grad of probs and grad of scores (softmax backward)
             + cuda * c*N            on CUDA the softmax backward kernel also materialises
                                     grad * probs (a mul inside structured_softmax_backward_cuda_out;
                                     traced on an H100, torch 2.11: scripts/diag_memory.py)

Flashkernels (exactly what launch.py allocates, with autograd.py around it):

    forward  = e*Q + 4R                              out, lse (fp32)      [both saved]
    backward = e*Q + 4R                              saved out, lse
             + 4R                                    delta (dlse, when given, is folded in place)
             + e*(Q + 2K)                            dq, dk, dv
             + hopper * 4Q                           the Gluon backward's fp32 dQ accumulator
                                                     (kernels/bwd_hopper*.py: sm_90, bf16/fp16,
                                                     D = 64, 128 or 256, Sq = Sk a multiple of 128)
             + hopper * tail                         its tail launch's flags, and its partial dK / dV
                                                     where dq's storage cannot hold them
                                                     (launch.hopper_bwd_tail_bytes: plain non-causal,
                                                     from 4096 keys; at the FA3-paper shapes only the
                                                     flags, about 1 KB)

For tiny Sk (below ~D) other moments of the naive path can be higher; both formulas take the
max over the moments listed in ``_naive``. Reduction = 100 * (1 - flashkernels / naive).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}


@dataclass(frozen=True)
class AttentionMemory:
    """Peak extra bytes of forward and backward, naive vs flashkernels, for one shape."""
    batch: int
    heads: int
    kv_heads: int
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    dtype: str
    causal: bool
    naive_forward: int
    naive_backward: int
    flash_forward: int
    flash_backward: int

    @property
    def forward_reduction_pct(self) -> float:
        return _reduction(self.flash_forward, self.naive_forward)

    @property
    def backward_reduction_pct(self) -> float:
        return _reduction(self.flash_backward, self.naive_backward)

    def to_dict(self) -> dict:
        return {**asdict(self), "forward_reduction_pct": self.forward_reduction_pct,
                "backward_reduction_pct": self.backward_reduction_pct}


def _reduction(ours: int, naive: int) -> float:
    return 100.0 * (1.0 - ours / naive) if naive else 0.0


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype: expected one of {', '.join(DTYPES)} (or the torch dtype), got {dtype!r}")


def _naive(B, Hq, Hkv, Sq, Sk, D, e, causal, cuda) -> tuple[int, int]:
    upcast = e < 4
    c = 4 if upcast else e
    N, Q, K, Kx, R = B * Hq * Sq * Sk, B * Hq * Sq * D, B * Hkv * Sk * D, B * Hq * Sk * D, B * Hq * Sq
    base = upcast * c * (Q + 2 * K) + c * (Q + Kx) + (Hq != Hkv) * 2 * c * Kx + causal * c * Sq * Sk
    fwd = base + max(2 * c * N + N + R,                         # inside _safe_softmax
                     c * N + upcast * e * N + c * Q + upcast * e * Q)  # probs cast, out, out cast
    saved = e * Q + c * (N + Q + Kx)
    bwd = saved + max(c * Kx + (2 + cuda) * c * N,              # softmax backward
                      c * Kx + c * N + c * (Q + Kx) - c * N)    # grad scores -> grad q, grad k^T
    return fwd, bwd


def attention_memory(batch: int, heads: int, seqlen_q: int, head_dim: int, *, kv_heads: int | None = None,
                     seqlen_k: int | None = None, dtype=torch.bfloat16, causal: bool = False,
                     device: str = "cuda", hopper: bool = False, sms: int = 132) -> AttentionMemory:
    """Peak extra bytes of attention forward and backward, naive vs flashkernels.

    q is (batch, heads, seqlen_q, head_dim), k and v (batch, kv_heads, seqlen_k, head_dim);
    kv_heads defaults to heads, seqlen_k to seqlen_q; dtype is a torch dtype or one of
    'fp16', 'bf16', 'fp32', 'fp64'; device 'cuda' (default) or 'cpu' is where the naive path
    would run (their softmax backwards allocate differently). ``hopper``: flashkernels runs on an
    sm_90 GPU, where the shapes the Gluon backward covers add its fp32 dQ accumulator (and, on a card of
    ``sms`` SMs, its tail launch's workspace). The formulas are in this module's docstring.
    """
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device: expected 'cuda' or 'cpu', got {device!r}")
    kv_heads = heads if kv_heads is None else kv_heads
    seqlen_k = seqlen_q if seqlen_k is None else seqlen_k
    sizes = dict(batch=batch, heads=heads, kv_heads=kv_heads, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
                 head_dim=head_dim)
    for name, val in sizes.items():
        if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
            raise ValueError(f"{name}: expected a positive integer, got {val!r}")
    if heads % kv_heads:
        raise ValueError(f"kv_heads: must divide heads ({heads}), got {kv_heads}")
    dt = _dtype(dtype)
    e = dt.itemsize
    B, Hq, Hkv, Sq, Sk, D = batch, heads, kv_heads, seqlen_q, seqlen_k, head_dim
    Q, K, R = B * Hq * Sq * D, B * Hkv * Sk * D, B * Hq * Sq
    naive_fwd, naive_bwd = _naive(B, Hq, Hkv, Sq, Sk, D, e, bool(causal), device == "cuda")
    flash_fwd = e * Q + 4 * R
    flash_bwd = flash_fwd + 4 * R + e * (Q + 2 * K)
    if hopper and dt in (torch.float16, torch.bfloat16) and D in (64, 128, 256) and Sq == Sk and Sq % 128 == 0:
        from .launch import hopper_bwd_tail_bytes

        flash_bwd += 4 * Q + hopper_bwd_tail_bytes(B, Hq, Hkv, Sq, D, bool(causal), sms, e)
    name = next(k for k, v in DTYPES.items() if v == dt)
    return AttentionMemory(B, Hq, Hkv, Sq, Sk, D, name, bool(causal), naive_fwd, naive_bwd, flash_fwd, flash_bwd)
