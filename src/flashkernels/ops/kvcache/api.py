"""Public KV-cache attention (flash-attn's ``flash_attn_with_kvcache``): validation, docstring
and dispatch."""
from __future__ import annotations

import math

import torch

from ... import _backend
from ..._interpreter import require_kernels_can_run
from ..._validate import KERNEL_DTYPES, MAX_HEAD_DIM, require_float_dtype, require_rank, require_tensor
from ..attention.api import _allow_tf32, _check_alibi, _check_softcap, _check_window
from .reference import kvcache_reference


def _index_tensor(t, name, shape, device):
    """An int32 tensor of ``shape`` on ``device`` (TypeError for the dtype, ValueError else)."""
    require_tensor(t, name)
    if t.dtype != torch.int32:
        raise TypeError(f"{name}: expected dtype torch.int32, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: expected device {device} (as q), got {t.device}")


def _range_error(name, values, lo, hi, what):
    mn, mx = int(values.min()), int(values.max())
    return ValueError(f"{name}: expected {what} in [{lo}, {hi}], got values in [{mn}, {mx}]")


def _check_values(cache_seqlens, seqlen_new, capacity, cache_batch_idx, rows, cache_leftpad,
                  block_table, num_blocks, page):
    """The data-dependent checks (one host sync each); nothing has been written yet."""
    lens = cache_seqlens.long()
    if lens.numel() and (int(lens.min()) < 0 or int(lens.max()) + seqlen_new > capacity):
        raise ValueError(
            f"cache_seqlens: expected values in [0, {capacity - seqlen_new}] (the cache holds {capacity} "
            f"positions a row and {seqlen_new} new tokens are appended), got values in "
            f"[{int(lens.min())}, {int(lens.max())}]")
    if cache_batch_idx is not None and cache_batch_idx.numel():
        if int(cache_batch_idx.min()) < 0 or int(cache_batch_idx.max()) >= rows:
            raise _range_error("cache_batch_idx", cache_batch_idx, 0, rows - 1, "rows of k_cache")
    if cache_leftpad is not None and cache_leftpad.numel():
        pad = cache_leftpad.long()
        if bool((pad < 0).any()) or bool((pad > lens).any()):
            b = int(((pad < 0) | (pad > lens)).nonzero()[0, 0])
            raise ValueError(f"cache_leftpad: expected 0 <= cache_leftpad[b] <= cache_seqlens[b], got "
                             f"cache_leftpad[{b}] = {int(pad[b])} with cache_seqlens[{b}] = {int(lens[b])}")
    if block_table is not None and block_table.numel():
        # Only the pages that hold a visible key must be valid: tables are often padded with -1.
        first = (cache_leftpad.long() if cache_leftpad is not None else torch.zeros_like(lens)) // page
        last = (lens + seqlen_new + page - 1) // page
        col = torch.arange(block_table.shape[1], device=block_table.device)[None, :]
        used = (col >= first[:, None]) & (col < last[:, None])
        bad = used & ((block_table < 0) | (block_table >= num_blocks))
        if bool(bad.any()):
            b, j = (int(x) for x in bad.nonzero()[0])
            raise ValueError(f"block_table: expected page indices in [0, {num_blocks - 1}] (k_cache has "
                             f"{num_blocks} pages) for the pages in use, got block_table[{b}, {j}] = "
                             f"{int(block_table[b, j])}")


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0,
                            return_softmax_lse=False, *, check_inputs=True, backend=None):
    """Drop-in for ``flash_attn.flash_attn_with_kvcache``: attention of new queries over a KV
    cache (decode, Sq = 1, or chunked prefill, Sq > 1), optionally appending new keys/values to
    the cache first, in one call. Inference only: no autograd (as flash-attn).

    For batch element b with ``L = cache_seqlens[b]``, Sn new tokens and ``Sk = L + Sn``::

        k_cache[row_b, L:Sk] = rotary(k[b]);  v_cache[row_b, L:Sk] = v[b]      (when k, v given)
        out[b] = softmax(cap(q[b] @ K_b^T * softmax_scale) + alibi + mask) @ V_b

    with K_b, V_b the row's keys/values 0 .. Sk - 1 and ``mask`` -inf for keys before
    ``cache_leftpad[b]``, after the causal diagonal ``j <= i + Sk - Sq`` (aligned bottom-right)
    or outside the window ``i + Sk - Sq - left <= j <= i + Sk - Sq + right``.

    Args:
        q: (B, Sq, Hq, D). float16, bfloat16, float32 on the kernels (float64 on the reference
            path), D from 1 to 256.
        k_cache, v_cache: q's dtype and device, last dim stride 1 (written in place). Contiguous
            cache (B_cache, S_cache, Hkv, D), row ``cache_batch_idx[b]`` (default b) for batch b;
            or with ``block_table`` a paged cache (num_blocks, page_size, Hkv, D). Hq must be a
            multiple of Hkv (GQA / MQA).
        k, v: None, or (B, Sn, Hkv, D) new keys/values, both or neither, appended at positions
            cache_seqlens[b] .. cache_seqlens[b] + Sn - 1 before the attention.
        rotary_cos, rotary_sin: None, or (S_ro, rotary_dim / 2) tables in q's dtype with
            rotary_dim <= D and S_ro >= the cache's positions a row; needs k, v. k is rotated at
            positions L + j; q at L + i when causal or windowed, else every query at position L
            (as flash-attn). ``rotary_interleaved``: GPT-J pairs (True, default) or GPT-NeoX
            halves (False). Uses :func:`flashkernels.apply_rotary_emb`.
        cache_seqlens: None (every row full: S_cache, or max_blocks * page_size), an int, or a
            (B,) int32 tensor: the keys already in each row.
        cache_batch_idx: None or (B,) int32: cache row of each batch element (contiguous only).
        cache_leftpad: None or (B,) int32: keys before it in the row are not attended
            (0 <= leftpad <= cache_seqlens). Positions (causal diagonal, window, ALiBi, rotary)
            still count from the row start, which is what flash-attn's shifted keys amount to.
        block_table: None or (B, max_blocks) int32 page indices in [0, num_blocks) (only the
            pages holding visible keys are checked and read; padding entries may be anything).
        softmax_scale: default 1 / sqrt(D).
        causal, window_size, softcap: as :func:`flashkernels.flash_attn_func`, relative to the
            diagonal above; ``window_size`` (left, right), -1 = unbounded; causal sets right = 0.
        alibi_slopes: None, or (Hq,) / (B, Hq) float32: adds ``-slope * |i + Sk - Sq - j|``
            after the softcap.
        num_splits: split-KV (flash decoding): 0 (default) picks by a heuristic (enough
            programs for about two waves of the GPU's SMs when the cache is long), 1 no split,
            n splits the keys of each row into n runs merged exactly by their log-sum-exp.
        return_softmax_lse: also return lse (B, Hq, Sq) float32, natural log.
        check_inputs: True (default) also checks the values of cache_seqlens, cache_batch_idx,
            cache_leftpad and block_table (a host sync each); False skips those (shapes and
            dtypes are always checked). The kernels clamp lengths and indices either way, so no
            access leaves the cache, but bad values then give unspecified results.
        backend: "auto" (default; Triton on a CUDA GPU, PyTorch on a CPU), "triton" or
            "reference"; default from ``$FLASHKERNELS_BACKEND``.
    Returns:
        out (B, Sq, Hq, D) in q's dtype; with ``return_softmax_lse``, ``(out, lse)``. A query
        that sees no key gives output 0 and lse -inf. Every check runs before anything is
        written to the cache.
    """
    # -- shapes, dtypes, devices (always) ------------------------------------------------------
    for t, n in ((q, "q"), (k_cache, "k_cache"), (v_cache, "v_cache")):
        require_tensor(t, n)
    require_rank(q, "q", 4, "(B, Sq, Hq, D)")
    paged = block_table is not None
    cache_layout = "(num_blocks, page_size, Hkv, D)" if paged else "(B_cache, S_cache, Hkv, D)"
    require_rank(k_cache, "k_cache", 4, cache_layout)
    require_rank(v_cache, "v_cache", 4, cache_layout)
    require_float_dtype(q, "q")
    for t, n in ((k_cache, "k_cache"), (v_cache, "v_cache")):
        if t.dtype != q.dtype:
            raise TypeError(f"{n}: expected dtype {q.dtype} (as q), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{n}: expected device {q.device} (as q), got {t.device}")
        if t.stride(-1) != 1:
            raise ValueError(f"{n}: expected a last dim of stride 1 (the cache is written in place, "
                             f"so it cannot be copied), got strides {tuple(t.stride())}")
    B, Sq, Hq, D = q.shape
    if tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError(f"v_cache: expected the shape of k_cache {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}")
    rows, S_cache, Hkv, Dk = k_cache.shape
    if Dk != D:
        raise ValueError(f"k_cache: expected head dim {D} (as q), got {Dk}")
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"q: head dim must be between 1 and {MAX_HEAD_DIM}, got {D}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"q/k_cache: the number of query heads ({Hq}) must be a multiple of the number of "
                         f"key/value heads ({Hkv})")
    if paged:
        if cache_batch_idx is not None:
            raise ValueError("cache_batch_idx: not supported with block_table (a paged cache maps each batch "
                             "element through its row of block_table); expected None")
        require_tensor(block_table, "block_table")
        if block_table.dim() != 2:
            raise ValueError(f"block_table: expected a 2-d tensor (B, max_blocks_per_seq), got shape "
                             f"{tuple(block_table.shape)}")
        _index_tensor(block_table, "block_table", (B, block_table.shape[1]), q.device)
        if block_table.stride(-1) != 1:
            raise ValueError(f"block_table: expected a last dim of stride 1, got strides {tuple(block_table.stride())}")
        if S_cache == 0:
            raise ValueError("k_cache: expected a page size >= 1, got 0")
        capacity = block_table.shape[1] * S_cache
    else:
        capacity = S_cache
        if cache_batch_idx is not None:
            _index_tensor(cache_batch_idx, "cache_batch_idx", (B,), q.device)
        elif rows < B:
            raise ValueError(f"k_cache: expected at least B = {B} rows (one per batch element, or pass "
                             f"cache_batch_idx), got {rows}")
    if (k is None) != (v is None):
        raise ValueError(f"{'v' if v is None else 'k'}: k and v must be given together, got "
                         f"k={'None' if k is None else 'a tensor'}, v={'None' if v is None else 'a tensor'}")
    Sn = 0
    if k is not None:
        for t, n in ((k, "k"), (v, "v")):
            require_tensor(t, n)
            require_rank(t, n, 4, "(B, Sn, Hkv, D)")
            if t.dtype != q.dtype:
                raise TypeError(f"{n}: expected dtype {q.dtype} (as q), got {t.dtype}")
            if t.device != q.device:
                raise ValueError(f"{n}: expected device {q.device} (as q), got {t.device}")
        Sn = k.shape[1]
        if tuple(k.shape) != (B, Sn, Hkv, D):
            raise ValueError(f"k: expected shape (B, Sn, Hkv, D) = ({B}, Sn, {Hkv}, {D}), got {tuple(k.shape)}")
        if tuple(v.shape) != tuple(k.shape):
            raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos/rotary_sin: expected both or neither, got only "
                         f"{'rotary_cos' if rotary_sin is None else 'rotary_sin'}")
    if rotary_cos is not None:
        if k is None:
            raise ValueError("rotary_cos: rotary embedding needs the new keys k and values v to rotate and "
                             "append; got rotary_cos/rotary_sin without k, v")
        for t, n in ((rotary_cos, "rotary_cos"), (rotary_sin, "rotary_sin")):
            require_tensor(t, n)
            if t.dim() != 2 or t.shape[1] < 1 or 2 * t.shape[1] > D:
                raise ValueError(f"{n}: expected shape (S_ro, rotary_dim / 2) with 2 <= rotary_dim <= D = {D}, "
                                 f"got {tuple(t.shape)}")
            if t.dtype != q.dtype:
                raise TypeError(f"{n}: expected dtype {q.dtype} (as q), got {t.dtype}")
            if t.device != q.device:
                raise ValueError(f"{n}: expected device {q.device} (as q), got {t.device}")
        if tuple(rotary_sin.shape) != tuple(rotary_cos.shape):
            raise ValueError(f"rotary_sin: expected the shape of rotary_cos {tuple(rotary_cos.shape)}, "
                             f"got {tuple(rotary_sin.shape)}")
        if rotary_cos.shape[0] < capacity:
            raise ValueError(f"rotary_cos: expected at least {capacity} positions (the cache's positions a "
                             f"row), got {rotary_cos.shape[0]}")
        if not isinstance(rotary_interleaved, bool):
            raise TypeError(f"rotary_interleaved: expected a bool, got {type(rotary_interleaved).__name__}")
    if cache_seqlens is None:
        if Sn:
            raise ValueError(f"cache_seqlens: None means every row is full ({capacity} keys), so the {Sn} new "
                             f"tokens of k/v have no room; pass the current lengths")
        cache_seqlens = torch.full((B,), capacity, dtype=torch.int32, device=q.device)
    elif isinstance(cache_seqlens, int) and not isinstance(cache_seqlens, bool):
        if cache_seqlens < 0 or cache_seqlens + Sn > capacity:
            raise ValueError(f"cache_seqlens: expected 0 <= cache_seqlens <= {capacity - Sn} (the cache holds "
                             f"{capacity} positions a row, {Sn} new tokens), got {cache_seqlens}")
        cache_seqlens = torch.full((B,), cache_seqlens, dtype=torch.int32, device=q.device)
    else:
        _index_tensor(cache_seqlens, "cache_seqlens", (B,), q.device)
    if cache_leftpad is not None:
        _index_tensor(cache_leftpad, "cache_leftpad", (B,), q.device)
    alibi_slopes = _check_alibi(alibi_slopes, B, Hq, q)  # inference only: a slope's grad is refused too
    if softmax_scale is not None and (isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float))):
        raise TypeError(f"softmax_scale: expected a float or None, got {type(softmax_scale).__name__}")
    window_size = _check_window(window_size)
    softcap = _check_softcap(softcap)
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 0:
        raise ValueError(f"num_splits: expected an int >= 0 (0 = automatic), got {num_splits!r}")
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else float(softmax_scale)

    choice = _backend.resolve(q.device, backend, dtype_ok=q.dtype in KERNEL_DTYPES, dtype=q.dtype)
    if check_inputs:
        _check_values(cache_seqlens, Sn, capacity, cache_batch_idx, rows, cache_leftpad, block_table,
                      rows, S_cache)

    # -- compute ---------------------------------------------------------------------------------
    with torch.no_grad():  # inference only: the cache is written in place, nothing is differentiated
        if choice.backend == "reference":
            out, lse = kvcache_reference(
                q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens=cache_seqlens,
                cache_batch_idx=cache_batch_idx, cache_leftpad=cache_leftpad, block_table=block_table,
                scale=scale, causal=bool(causal), window_size=window_size, softcap=softcap,
                rotary_interleaved=rotary_interleaved, alibi_slopes=alibi_slopes)
            lse = lse.float()
        else:
            out, lse = _triton_path(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens,
                                    cache_batch_idx, cache_leftpad, block_table, alibi_slopes, scale,
                                    bool(causal), window_size, softcap, rotary_interleaved, num_splits,
                                    capacity, backend)
    return (out, lse) if return_softmax_lse else out


def _triton_path(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx,
                 cache_leftpad, block_table, alibi_slopes, scale, causal, window_size, softcap,
                 rotary_interleaved, num_splits, capacity, backend):
    from . import launch  # imports triton
    from .launch import KERNELS_INTERPRETED

    # Eager calls skip the dispatcher (~0.1 ms of host time a call); torch.compile traces the ops.
    compiling = torch.compiler.is_compiling()
    kvcache_append = launch.kvcache_append if compiling else launch.kvcache_append_eager
    kvcache_attn = launch.kvcache_attn if compiling else launch.kvcache_attn_eager

    require_kernels_can_run(q.device, KERNELS_INTERPRETED)
    B, Sq, Hq, D = q.shape
    Sn = 0 if k is None else k.shape[1]
    if rotary_cos is not None:
        from ..rope.api import apply_rotary_emb

        # Clamped so that unchecked lengths (check_inputs=False) never index past the tables.
        offsets = cache_seqlens.clamp(0, rotary_cos.shape[0] - max(Sn, Sq))
        k = apply_rotary_emb(k, rotary_cos, rotary_sin, rotary_interleaved, offsets, check_inputs=False,
                             backend=backend)
        if causal or window_size != (-1, -1):
            q = apply_rotary_emb(q, rotary_cos, rotary_sin, rotary_interleaved, offsets, check_inputs=False,
                             backend=backend)
        else:  # every query token at position L: one token of Sq * Hq heads
            q = apply_rotary_emb(q.reshape(B, 1, Sq * Hq, D), rotary_cos, rotary_sin, rotary_interleaved,
                                 cache_seqlens.clamp(0, rotary_cos.shape[0] - 1), check_inputs=False,
                                 backend=backend).reshape(B, Sq, Hq, D)
    if k is not None and Sn:
        k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (k, v))
        kvcache_append(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table)
    if q.stride(-1) != 1:
        q = q.contiguous()
    slopes = None
    if alibi_slopes is not None:
        slopes = alibi_slopes if alibi_slopes.dim() == 2 else alibi_slopes[None].expand(B, Hq)
        if slopes.stride(-1) != 1:
            slopes = slopes.contiguous()
    allow_tf32 = q.dtype == torch.float32 and _allow_tf32()
    return kvcache_attn(q, k_cache, v_cache, cache_seqlens, Sn, cache_batch_idx, cache_leftpad, block_table,
                        slopes, scale, causal, int(window_size[0]), int(window_size[1]), softcap, int(num_splits),
                        allow_tf32)


def varlen_paged(q, k_cache, v_cache, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, block_table, *, scale, causal,
                 window_size, softcap, alibi_slopes, check_inputs, backend):
    """``flash_attn_varlen_func`` with ``block_table``: packed queries (total_q, Hq, D) over paged
    K/V caches (num_blocks, page_size, Hkv, D), sequence b's keys being positions
    0 .. cu_seqlens_k[b+1] - cu_seqlens_k[b] - 1 of its pages. Runs as
    :func:`flash_attn_with_kvcache` on the queries scattered into a (n, max_seqlen_q) grid,
    right-aligned so that each sequence's bottom-right diagonal (causal, window, ALiBi) is its
    own; rows of padding are computed and dropped. No host sync. Returns (out, lse (Hq, total_q)).
    """
    n, total, Hq = cu_seqlens_q.numel() - 1, q.shape[0], q.shape[1]
    lens_q = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
    tok = torch.arange(total, device=q.device, dtype=torch.int32)
    seq = torch.searchsorted(cu_seqlens_q[1:].contiguous(), tok, right=True).clamp_(max=max(n - 1, 0))
    row = max_seqlen_q - lens_q[seq] + (tok - cu_seqlens_q[seq])
    row = row.clamp_(0, max(max_seqlen_q - 1, 0)).long()
    seq = seq.long()
    q_pad = q.new_zeros((n, max_seqlen_q, Hq, q.shape[2]))
    q_pad[seq, row] = q
    cache_seqlens = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).to(torch.int32)
    out_pad, lse_pad = flash_attn_with_kvcache(
        q_pad, k_cache, v_cache, cache_seqlens=cache_seqlens, block_table=block_table, softmax_scale=scale,
        causal=causal, window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes,
        return_softmax_lse=True, check_inputs=check_inputs, backend=backend)
    return out_pad[seq, row], lse_pad[seq, :, row].transpose(0, 1)
