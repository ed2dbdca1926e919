"""Gluon on Hopper: the import shim the Gluon kernels share, and their common helpers.

kernels/fwd_hopper.py, bwd_hopper.py and bwd_hopper256.py import ``gl``, ``gluon`` and the
Hopper ops through here. Without a triton whose Gluon has these Hopper modules (or with another
triton than the one they were built and measured with) ``AVAILABLE`` is False, the reason is in
``UNAVAILABLE_REASON``, ``gl`` / ``gluon`` are stand-ins that let the kernels' definitions
evaluate, and nothing launches them; the package imports either way.
"""
from typing import Optional

# The Gluon API is experimental and changes between triton releases (gl.warp_specialize took
# another signature in 3.5): the kernel is built and measured with 3.6 only.
TESTED_TRITON = (3, 6)


class _NoGluon:
    """Stands in for ``gluon`` and ``gl`` when they do not import: enough for the definitions
    below to evaluate (the decorator, the constexpr annotations); nothing launches them then."""

    @staticmethod
    def constexpr(x):
        return x

    @staticmethod
    def jit(fn):
        return fn

    constexpr_function = jit


UNAVAILABLE_REASON: Optional[str] = None
try:
    import triton
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    # (the Hopper ops the kernels use, imported here to find out whether they exist)
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,  # noqa: F401
                                                                  warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    _version = tuple(int(x) for x in triton.__version__.split(".")[:2])
    if _version != TESTED_TRITON:
        UNAVAILABLE_REASON = (f"triton {triton.__version__}: the Gluon kernel is built for triton "
                              f"{TESTED_TRITON[0]}.{TESTED_TRITON[1]} (Gluon's API is experimental)")
except Exception as exc:  # ImportError, or an older Gluon without a name used here
    gluon = gl = _NoGluon()
    TensorDescriptor = None
    UNAVAILABLE_REASON = f"triton's Gluon Hopper modules do not import ({type(exc).__name__}: {exc})"

AVAILABLE: bool = UNAVAILABLE_REASON is None

LOG2E = gl.constexpr(1.4426950408889634)
LN2 = gl.constexpr(0.6931471805599453)


@gluon.jit
def _tanh_approx(x):
    """The GPU's tanh.approx.f32 (one MUFU op, relative error ~2^-11), as kernels/fwd.py's
    _softcap_tanh uses for fp16/bf16 inputs: the softcap's tanh."""
    return gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=gl.float32, is_pure=True,
                                     pack=1)


@gluon.jit
def _mul_rn(a, b):
    """a · b rounded (PTX mul.rn.f32), which the compilers never fuse into a later add: a product
    that must round the same in every build (the ALiBi column bias: LLVM fuses a plain product into
    the add of the scores in one build and not in another, which moves results by an ulp)."""
    return gl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=gl.float32,
                                     is_pure=True, pack=1)


# The forward's lazy rescale (hopper_softmax._softmax_step): a row's running max m is replaced only when
# the block's max passes it by more than this (log2 units), so p = 2^(s - m) stays below 2^8 = 256 (fp32
# sums, bf16 / fp16 P: no overflow) and on most blocks alpha = 2^(m_old - m_new) is exactly 1;
# _rescale_lazy then skips O *= alpha in every warp whose rows all kept their max.
LAZY_THRESHOLD = gl.constexpr(8.0)


@gluon.constexpr_function
def _rescale_asm(n):
    """PTX for _rescale_lazy over a thread's n accumulator values ($0.. tied to the inputs) and their
    rows' factors ($2n..): the warp votes whether any factor of its lanes' rows (a thread's first four
    values cover both its rows) differs from 1; only then it multiplies."""
    lines = ["{", ".reg .pred p, q;", f"setp.ne.f32 q, ${2 * n}, 0f3F800000;"]
    lines += [f"setp.ne.or.f32 q, ${2 * n + i}, 0f3F800000, q;" for i in (1, 2, 3)]
    lines += ["vote.sync.any.pred p, q, 0xffffffff;", "@!p bra LAZY_DONE_${:uid};"]
    lines += [f"mul.f32 ${i}, ${i}, ${2 * n + i};" for i in range(n)]
    lines += ["LAZY_DONE_${:uid}:", "}"]
    return "\n".join(lines)


@gluon.constexpr_function
def _rescale_constraints(n):
    return ",".join(["=f"] * n + [str(i) for i in range(n)] + ["f"] * n)


@gluon.jit
def _rescale_lazy(acc, alpha, N: gl.constexpr):
    """acc * alpha (alpha broadcast to acc, N = a thread's values of acc), skipped by each warp whose
    rows' factors are all 1 (a row max that did not move: LAZY_THRESHOLD). The multiply sits between
    two P V wgmmas of the warpgroup (it needs the last one retired); skipping it shortened the H100's
    forward by 1-5% at D = 128 and 5-11% at D = 256 (H100, FA3 grid shapes, CUDA graphs;
    docs/perf-notes.md, session 16)."""
    acc, alpha = gl.broadcast(acc, alpha)
    return gl.inline_asm_elementwise(_rescale_asm(N), _rescale_constraints(N), [acc, alpha], dtype=gl.float32,
                                     is_pure=True, pack=N)


@gluon.jit
def _varlen_seq(CuQ, CuK, b):
    """(first query row, first key row, queries, keys) of packed sequence b (cu_seqlens int32)."""
    q0 = gl.load(CuQ + b)
    k0 = gl.load(CuK + b)
    return q0, k0, gl.load(CuQ + b + 1) - q0, gl.load(CuK + b + 1) - k0


if AVAILABLE:
    from triton._C.libtriton import ir
    from triton.experimental.gluon.language._core import builtin

    @builtin
    def _tma_reduce_add(tensor_desc, coord, src, _semantic=None):
        """cp.reduce.async.bulk.tensor .add: the shared-memory tile ``src`` added into the global
        tensor of ``tensor_desc`` at ``coord`` (triton 3.6's Gluon builds the op, tma.py has no
        wrapper for it); completes as the TMA stores do (tma.store_wait)."""
        coord = _semantic._convert_to_ir_values(coord, require_i64=False)
        _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle, coord,
                                                  src.handle)
else:
    def _tma_reduce_add(tensor_desc, coord, src):  # (never called without Gluon)
        raise RuntimeError("Gluon is not available")


@gluon.jit
def _pair_barrier(x):
    """Named barrier 15 over both consumer warpgroups (256 threads); returns x. Gluon 3.6 has no
    named-barrier API (gl.thread_barrier() in a partition syncs that partition only); Triton's
    warp-specialize lowering uses the low ids (0..2 in this kernel's SASS)."""
    return gl.inline_asm_elementwise("bar.sync 15, 256; mov.b32 $0, $1;", "=r,r", [x], dtype=gl.int32,
                                     is_pure=False, pack=1)


@gluon.constexpr_function
def _bar_asm(kind, count):
    return f"bar.{kind} $2, {count}; mov.b32 $0, $1;"


@gluon.jit
def _bar_sync(x, bar_id, COUNT: gl.constexpr):
    """bar.sync on named barrier ``bar_id`` (a register: it may change with the iteration) until
    COUNT threads of the CTA arrived or synced there; returns x."""
    return gl.inline_asm_elementwise(_bar_asm("sync", COUNT), "=r,r,r", [x, bar_id], dtype=gl.int32,
                                     is_pure=False, pack=1)


@gluon.jit
def _bar_arrive(x, bar_id, COUNT: gl.constexpr):
    """bar.arrive on named barrier ``bar_id``: counts this thread toward COUNT and goes on (the
    threads that wait for it sync there); returns x."""
    return gl.inline_asm_elementwise(_bar_asm("arrive", COUNT), "=r,r,r", [x, bar_id], dtype=gl.int32,
                                     is_pure=False, pack=1)


# The hand-over of partial results between CTAs (fwd_hopper's SPLIT_TAIL, bwd_hopper's tail launch): each thread's
# own acquire (spin until the flag at $1 is set; returns 0, to put into the loads' addresses so that none moves
# above it) and release (after the partition's barrier), so that no barrier of the whole CTA is needed inside a
# partition. Labels inside { } are local to the block.
_SPIN_ASM = gl.constexpr("{ .reg .pred p; .reg .b32 v; spin: ld.acquire.gpu.global.b32 v, [$1]; "
                         "setp.eq.s32 p, v, 0; @p bra spin; mov.b32 $0, 0; }")
_RELEASE_ASM = gl.constexpr("red.release.gpu.global.add.s32 [$1], 1; mov.b32 $0, 0;")


@gluon.jit
def _pdl_launch_dependents():
    """griddepcontrol.launch_dependents: the next launch of the stream, made with programmatic dependent launch,
    may start once every CTA of this one executed it (or exited)."""
    gl.inline_asm_elementwise("griddepcontrol.launch_dependents; mov.b32 $0, 0;", "=r", [], dtype=gl.int32,
                              is_pure=False, pack=1)
