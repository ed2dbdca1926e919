"""Shared input checks. Each raises before any kernel launches, with a message that names the
argument, what was expected and what was given."""
from __future__ import annotations

import torch

# Dtypes the attention entry points take: the kernels run the first three; float64 runs on the
# reference path (useful as a CPU oracle).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def require_tensor(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")


def require_rank(x: torch.Tensor, name: str, rank: int, layout: str) -> None:
    if x.dim() != rank:
        raise ValueError(f"{name}: expected a {rank}-d tensor laid out {layout}, "
                         f"got {x.dim()}-d with shape {tuple(x.shape)}")


def require_same(tensors: dict, attr: str, err=ValueError) -> None:
    it = iter(tensors.values())
    first = getattr(next(it), attr)
    if all(getattr(t, attr) == first for t in it):  # the common case, without building strings
        return
    vals = {n: getattr(t, attr) for n, t in tensors.items()}
    if len(set(map(str, vals.values()))) > 1:
        desc = ", ".join(f"{n}={v}" for n, v in vals.items())
        raise err(f"{'/'.join(vals)}: expected the same {attr}, got {desc}")


def _qkv_ok(q, k, v, h_ax: int, s_ax: int) -> bool:
    """True when q, k, v pass every check of :func:`check_qkv` (heads on axis ``h_ax``, sequence
    on ``s_ax``): the common case, tested without building the checks' arguments (it runs on
    every attention call, whose host time shows at small shapes)."""
    T = torch.Tensor
    if not (isinstance(q, T) and isinstance(k, T) and isinstance(v, T)):
        return False
    qs, ks, vs = q.shape, k.shape, v.shape
    if not len(qs) == len(ks) == len(vs) == 4:
        return False
    dt, dev = q.dtype, q.device
    if dt not in FLOAT_DTYPES or k.dtype != dt or v.dtype != dt or k.device != dev or v.device != dev:
        return False
    hkv, d = ks[h_ax], qs[3]
    return (qs[0] == ks[0] == vs[0] and ks[s_ax] == vs[s_ax] and vs[h_ax] == hkv != 0 and qs[h_ax] % hkv == 0
            and ks[3] == d == vs[3] and 1 <= d <= MAX_HEAD_DIM)


def check_qkv(q, k, v, names: tuple[str, str, str], layout: str) -> None:
    """Checks common to every attention entry point; ``layout`` is "BHSD" or "BSHD"."""
    if _qkv_ok(q, k, v, layout.index("H"), layout.index("S")):
        return
    for x, n in zip((q, k, v), names):
        require_tensor(x, n)
    for x, n in zip((q, k, v), names):
        require_rank(x, n, 4, f"({', '.join(layout)})")
    tensors = dict(zip(names, (q, k, v)))
    require_same(tensors, "device", ValueError)
    require_same(tensors, "dtype", TypeError)
    if q.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{names[0]}: expected dtype float16, bfloat16, float32 or float64, got {q.dtype}")
    h_ax, s_ax = layout.index("H"), layout.index("S")
    nq, nk, nv = names
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"{nq}/{nk}/{nv}: expected the same batch size, got "
                         f"{q.shape[0]}, {k.shape[0]}, {v.shape[0]}")
    if k.shape[s_ax] != v.shape[s_ax]:
        raise ValueError(f"{nk}/{nv}: expected the same sequence length, got {k.shape[s_ax]} and {v.shape[s_ax]}")
    if k.shape[h_ax] != v.shape[h_ax]:
        raise ValueError(f"{nk}/{nv}: expected the same number of heads, got {k.shape[h_ax]} and {v.shape[h_ax]}")
    hq, hkv = q.shape[h_ax], k.shape[h_ax]
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"{nq}/{nk}: the number of query heads ({hq}) must be a multiple of the number "
                         f"of key/value heads ({hkv})")
    d = q.shape[-1]
    if k.shape[-1] != d:
        raise ValueError(f"{nk}: expected head dim {d} (as {nq}), got {k.shape[-1]}")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"{nq}: head dim must be between 1 and {MAX_HEAD_DIM}, got {d}")
    if v.shape[-1] != d:
        raise NotImplementedError(f"{nv}: a value head dim different from the query's is not supported "
                                  f"(expected {d}, got {v.shape[-1]})")


def check_mask(mask, name: str, target: tuple[int, int, int, int], q: torch.Tensor) -> None:
    """``mask`` must be bool or floating and broadcastable to ``target`` = (B, Hq, Sq, Sk)."""
    require_tensor(mask, name)
    if mask.dtype != torch.bool and not mask.dtype.is_floating_point:
        raise TypeError(f"{name}: expected dtype bool (True = attend) or a float dtype (added to the "
                        f"scores), got {mask.dtype}")
    if mask.device != q.device:
        raise ValueError(f"{name}: expected device {q.device} (as the query), got {mask.device}")
    # A plain loop: torch.compile (2.11) mis-traced the generator form of this check.
    ok = mask.dim() <= 4
    for m, t in zip(reversed(mask.shape), reversed(target)):
        if m != 1 and m != t:
            ok = False
    if not ok:
        raise ValueError(f"{name}: expected a shape broadcastable to (B, Hq, Sq, Sk) = {target}, "
                         f"got {tuple(mask.shape)}")


def check_scale(scale, name: str) -> None:
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"{name}: expected a float or None, got {type(scale).__name__}")


def check_dropout(p, name: str = "dropout_p") -> None:
    if p is None or (isinstance(p, (int, float)) and p == 0):
        return
    raise NotImplementedError(f"{name}: dropout is not supported yet (expected 0.0, got {p!r})")


def require_float_dtype(x: torch.Tensor, name: str) -> None:
    """``x`` is float16, bfloat16, float32 (the kernels) or float64 (the reference path)."""
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float16, bfloat16, float32 or float64, got {x.dtype}")


def require_like(t, name: str, like: torch.Tensor, like_name: str, *, shape=None) -> None:
    """``t`` is a tensor with ``like``'s device and dtype, and shape ``shape`` (default: like's)."""
    require_tensor(t, name)
    shape = tuple(like.shape) if shape is None else tuple(shape)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
    if t.device != like.device:
        raise ValueError(f"{name}: expected device {like.device} (as {like_name}), got {t.device}")
    if t.dtype != like.dtype:
        raise TypeError(f"{name}: expected dtype {like.dtype} (as {like_name}), got {t.dtype}")
