"""Public rotary position embeddings (flash-attn and Hugging Face conventions): validation,
docstrings and dispatch."""
from __future__ import annotations

import torch

from ... import _backend
from ..._interpreter import require_kernels_can_run
from ..._validate import KERNEL_DTYPES, require_float_dtype, require_rank, require_tensor
from .reference import rotary_emb_reference, rotary_pos_emb_reference

_INT_DTYPES = (torch.int32, torch.int64)


def _check_tables(cos, sin, x, x_name, rank):
    for t, n in ((cos, "cos"), (sin, "sin")):
        require_tensor(t, n)
    if cos.dim() not in rank:
        raise ValueError(f"cos: expected a {' or '.join(f'{r}-d' for r in rank)} tensor, got "
                         f"{cos.dim()}-d with shape {tuple(cos.shape)}")
    if tuple(sin.shape) != tuple(cos.shape):
        raise ValueError(f"sin: expected the shape of cos {tuple(cos.shape)}, got {tuple(sin.shape)}")
    for t, n in ((cos, "cos"), (sin, "sin")):
        if t.device != x.device:
            raise ValueError(f"{n}: expected device {x.device} (as {x_name}), got {t.device}")
        if t.dtype != x.dtype:
            raise TypeError(f"{n}: expected dtype {x.dtype} (as {x_name}), got {t.dtype}")
        if torch.is_grad_enabled() and t.requires_grad:
            raise NotImplementedError(f"{n}: gradients with respect to the rotary tables are not "
                                      f"supported; pass {n}.detach() or disable grad")


def _check_positions(p, name, shape, x_device, lo, hi, values=True):
    """An integer tensor of ``shape`` with (when ``values``) every value in [lo, hi] (one host
    sync)."""
    require_tensor(p, name)
    if p.dtype not in _INT_DTYPES:
        raise TypeError(f"{name}: expected dtype int32 or int64, got {p.dtype}")
    if tuple(p.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(p.shape)}")
    if p.device != x_device:
        raise ValueError(f"{name}: expected device {x_device}, got {p.device}")
    if values and p.numel():
        mn, mx = int(p.min()), int(p.max())
        if mn < lo or mx > hi:
            raise ValueError(f"{name}: expected values in [{lo}, {hi}], got values in [{mn}, {mx}]")


def _interpreter_matches(device):
    from .launch import KERNELS_INTERPRETED

    require_kernels_can_run(device, KERNELS_INTERPRETED)


def _unit_last(t):
    # The kernel takes any strides but needs the head dim contiguous; other layouts copy once.
    return t if t.stride(-1) == 1 else t.contiguous()


def apply_rotary_emb(x, cos, sin, interleaved=False, seqlen_offsets=0, *, in_place=False, check_inputs=True,
                     backend=None):
    """Rotary position embedding, flash-attn's convention (``flash_attn.layers.rotary``).

    For token s of batch b at position ``p = s + seqlen_offsets[b]`` and pair j < rotary_dim/2,
    with ``c = cos[p, j]``, ``s = sin[p, j]``::

        (x1, x2) -> (x1 * c - x2 * s, x2 * c + x1 * s)

    where (x1, x2) = (x[..., j], x[..., j + rotary_dim/2]) (GPT-NeoX halves, ``interleaved=False``)
    or (x[..., 2j], x[..., 2j+1]) (GPT-J pairs, ``interleaved=True``). Dims from rotary_dim on pass
    through unchanged.

    Args:
        x: (B, S, H, D); float16, bfloat16, float32 on the kernels, float64 on the reference path.
            Any strides; a last dim with stride != 1 is copied once.
        cos, sin: (S_max, rotary_dim / 2), x's dtype and device; rotary_dim <= D. Not
            differentiable: NotImplementedError if they require grad with grad enabled.
        interleaved: the pair layout (above). Default False.
        seqlen_offsets: an int, or a (B,) int32/int64 tensor on x's device (per-batch, for
            KV-cache decoding): positions start there. ``S + max(offset) <= S_max`` is checked
            (for a tensor at the cost of one host sync).
        in_place: write the result into x and return x (default False: x is never written).
            Not differentiable (NotImplementedError if x requires grad with grad enabled); x's
            last dim must have stride 1.
        check_inputs: False skips the value check of a tensor ``seqlen_offsets`` (its host sync),
            e.g. inside CUDA graphs; the kernel then clamps positions into the tables (the
            reference path may raise IndexError instead).
        backend: "auto" (default), "triton" or "reference"; default from ``$FLASHKERNELS_BACKEND``.
    Returns:
        A new (B, S, H, D) tensor of x's dtype (or x itself with ``in_place``). Rotation in fp32
        on the kernels, rounded once. Backward: dx = the rotation by -theta of dout (the
        transpose); no gradient to cos/sin.
    """
    require_tensor(x, "x")
    require_rank(x, "x", 4, "(B, S, H, D)")
    require_float_dtype(x, "x")
    _check_tables(cos, sin, x, "x", (2,))
    B, S, H, D = x.shape
    if cos.shape[1] < 1 or 2 * cos.shape[1] > D:
        raise ValueError(f"cos: expected shape (S_max, rotary_dim / 2) with 2 <= rotary_dim <= D = {D}, "
                         f"got {tuple(cos.shape)} (rotary_dim {2 * cos.shape[1]})")
    if not isinstance(interleaved, bool):
        raise TypeError(f"interleaved: expected a bool, got {type(interleaved).__name__}")
    if not isinstance(in_place, bool):
        raise TypeError(f"in_place: expected a bool, got {type(in_place).__name__}")
    s_max = cos.shape[0]
    if isinstance(seqlen_offsets, torch.Tensor):
        _check_positions(seqlen_offsets, "seqlen_offsets", (B,), x.device, 0, s_max - S, values=check_inputs)
    elif isinstance(seqlen_offsets, int) and not isinstance(seqlen_offsets, bool):
        if seqlen_offsets < 0 or S + seqlen_offsets > s_max:
            raise ValueError(f"seqlen_offsets: expected 0 <= offset <= S_max - S = {s_max} - {S} = "
                             f"{s_max - S} (the cos/sin tables have {s_max} positions), got {seqlen_offsets}")
    else:
        raise TypeError(f"seqlen_offsets: expected an int or a (B,) int tensor, got {type(seqlen_offsets).__name__}")
    if in_place:
        if torch.is_grad_enabled() and x.requires_grad:
            raise NotImplementedError("in_place: x requires grad; the in-place rotation is not "
                                      "differentiable (use in_place=False or disable grad)")
        if x.stride(-1) != 1:
            raise ValueError(f"in_place: x's last dim must have stride 1, got strides {tuple(x.stride())}")

    choice = _backend.resolve(x.device, backend, dtype_ok=x.dtype in KERNEL_DTYPES, dtype=x.dtype)
    if choice.backend == "reference":
        out = rotary_emb_reference(x, cos, sin, interleaved, seqlen_offsets)
        if in_place:
            with torch.no_grad():
                x.copy_(out)
            return x
        return out

    from .autograd import rope  # imports triton: only once the Triton backend is chosen

    _interpreter_matches(x.device)
    if isinstance(seqlen_offsets, torch.Tensor):
        pos, pos_mode, offset = seqlen_offsets, 1, 0
    else:
        pos, pos_mode, offset = None, 0, seqlen_offsets
    tab = lambda t: t.contiguous()[None]  # noqa: E731  (1, S_max, rotary_dim / 2)
    return rope(x if in_place else _unit_last(x), tab(cos), tab(sin), pos, pos_mode, offset, 1,
                interleaved, False, in_place=in_place)


def apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1, *, backend=None):
    """Rotary position embedding, Hugging Face's convention (``modeling_llama.apply_rotary_pos_emb``)::

        q_embed = q * cos + rotate_half(q) * sin,   rotate_half(x) = cat(-x[..., d/2:], x[..., :d/2])

    on the first rotary_dim = cos.shape[-1] dims of q and k (the rest pass through, as in
    partial-rotary models), both tensors in one kernel launch.

    Args:
        q, k: (B, H, S, D) with ``unsqueeze_dim=1`` (default), (B, S, H, D) with ``unsqueeze_dim=2``;
            one dtype, device, B, S and D (head counts may differ: GQA). Any strides; a last dim
            with stride != 1 is copied once.
        cos, sin: full-width tables (columns j and j + rotary_dim/2 are used for the two halves,
            as HF's duplicated ``cat(freqs, freqs)`` layout has them), q's dtype and device,
            rotary_dim even and <= D. Without ``position_ids``: (B, S, rotary_dim), (1, S,
            rotary_dim) or (S, rotary_dim), row s for token s. With ``position_ids``: a
            (S_max, rotary_dim) table, row ``position_ids[b, s]`` for token s of batch b (older
            transformers' ``cos[position_ids]``). Not differentiable.
        position_ids: None, or a (B, S) or (1, S) int32/int64 tensor with values in
            [0, S_max) (checked, one host sync).
        unsqueeze_dim: 1 or 2 (the layout of q and k, above).
        backend: "auto" (default), "triton" or "reference".
    Returns:
        (q_embed, k_embed), new tensors shaped and typed like q and k (inputs never written).
        Rotation in fp32 on the kernels, rounded once. Backward to q and k: the transpose
        (rotation by -theta).
    """
    for t, n in ((q, "q"), (k, "k")):
        require_tensor(t, n)
    if not isinstance(unsqueeze_dim, int) or isinstance(unsqueeze_dim, bool) or unsqueeze_dim not in (1, 2):
        raise ValueError(f"unsqueeze_dim: expected 1 (q, k as (B, H, S, D)) or 2 ((B, S, H, D)), "
                         f"got {unsqueeze_dim!r}")
    layout = "(B, H, S, D)" if unsqueeze_dim == 1 else "(B, S, H, D)"
    require_rank(q, "q", 4, layout)
    require_rank(k, "k", 4, layout)
    require_float_dtype(q, "q")
    if k.dtype != q.dtype:
        raise TypeError(f"k: expected dtype {q.dtype} (as q), got {k.dtype}")
    if k.device != q.device:
        raise ValueError(f"k: expected device {q.device} (as q), got {k.device}")
    seq_dim = 3 - unsqueeze_dim
    B, S, D = q.shape[0], q.shape[seq_dim], q.shape[3]
    if (k.shape[0], k.shape[seq_dim], k.shape[3]) != (B, S, D):
        raise ValueError(f"k: expected the batch size, sequence length and head dim of q ({B}, {S}, {D}) "
                         f"in layout {layout}, got shape {tuple(k.shape)}")
    _check_tables(cos, sin, q, "q", (2,) if position_ids is not None else (2, 3))
    rd = cos.shape[-1]
    if rd < 2 or rd % 2 or rd > D:
        raise ValueError(f"cos: expected an even rotary_dim (last dim) between 2 and D = {D}, got {rd}")
    if position_ids is not None:
        require_tensor(position_ids, "position_ids")
        if position_ids.dim() != 2 or position_ids.shape[0] not in (1, B):
            raise ValueError(f"position_ids: expected shape ({B}, {S}) or (1, {S}), got {tuple(position_ids.shape)}")
        _check_positions(position_ids, "position_ids", (position_ids.shape[0], S), q.device, 0, cos.shape[0] - 1)
    else:
        want = f"(B, S, rotary_dim) = ({B}, {S}, {rd}), (1, {S}, {rd}) or (S, rotary_dim) = ({S}, {rd})"
        if cos.shape[-2] != S or (cos.dim() == 3 and cos.shape[0] not in (1, B)):
            raise ValueError(f"cos: expected {want} for q of shape {tuple(q.shape)}, got {tuple(cos.shape)}")

    choice = _backend.resolve(q.device, backend, dtype_ok=q.dtype in KERNEL_DTYPES, dtype=q.dtype)
    if choice.backend == "reference":
        return rotary_pos_emb_reference(q, k, cos, sin, position_ids, unsqueeze_dim)

    from .autograd import rope_qk  # imports triton: only once the Triton backend is chosen

    _interpreter_matches(q.device)
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos.contiguous(), sin.contiguous()
    if position_ids is None:
        pos, pos_mode = None, 0
    else:
        pos, pos_mode = position_ids.expand(B, S), 2
    return rope_qk(_unit_last(q), _unit_last(k), cos, sin, pos, pos_mode, seq_dim)
