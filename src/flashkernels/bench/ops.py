"""``flashkernels bench ops``: the memory-bound ops (RMSNorm, fused residual + RMSNorm, SwiGLU,
RoPE) against the copy ceiling and their peers, and a Llama decoder layer end to end (GPU only).

Issue 4's goals, all measured in this one process, bf16:

* forward and backward of RMSNorm (x 16384 x 4096), SwiGLU (gate and up 16384 x 14336) and RoPE
  (x (4, 4096, 32, 128), flash-attn layout, rotary over all 128 dims, cos/sin (4096, 64)) at
  >= 95% of the measured copy bandwidth, and at least 1.0x torch.compile and Liger on each;
* the fused residual norm ``rms_norm(x, w, residual=r) -> (y, h)`` at least 1.4x faster than
  the two-op version (``h = x + r`` in torch, then ``rms_norm(h, w)``);
* a one-layer Llama model (norm, attention with RoPE, norm, SwiGLU MLP) trains forward +
  backward at least 1.3x faster with ``flashkernels.integrations.transformers.apply`` than eager
  transformers with SDPA at seqlen 4096 (batch 1, or ``--layer-batch B`` sequences).

The ceiling: ``dst.copy_(src)`` on 16384 x 4096 and 16384 x 14336 bf16 tensors, bytes = 2 x
numel x 2 (read + write); an op's ceiling ("%copy") is the copy of its own size: 16384 x 4096 for
the norms and RoPE (whose x has as many elements), 16384 x 14336 for SwiGLU. (A small copy runs
below a large one: 2.86 vs 2.99 TB/s on the H100, 2026-11-25; the issue's "about 2.85 TB/s".)

Providers (the same inputs, fresh leaves for each):

* ``flashkernels``: the public op with ``backend="triton"``;
* ``torch``: the op's plain-PyTorch reference (``flashkernels.ops.*.reference``, the same
  casting semantics: Hugging Face's ``llama`` RMSNorm, silu rounded before the product, RoPE in
  the input dtype), run eagerly;
* ``compile``: ``torch.compile(reference, fullgraph=True, dynamic=False)``, compiled once per op
  and warmed up (forward and backward) before timing; donated buffers off, since the backward
  timing replays a retained graph;
* ``liger``: only when ``liger_kernel`` imports: ``LigerRMSNorm`` (its defaults: casting
  "llama", in-place backward), ``LigerSiLUMulFunction``, ``liger_rotary_pos_emb`` (Hugging Face
  layout: the flash-attn tensor is split into two 16-head halves passed as q and k, transposed
  views of (B, S, 16, D) memory, the layout Liger's kernel reads; full-width (1, S, 128) tables),
  ``LigerFusedAddRMSNorm`` for the residual when that Liger version has it. A Liger provider
  that is absent or fails is skipped with a note. Liger's kernels write their inputs / grads in
  place; the timings repeat on the mutated values (the work does not depend on them).
* residual only: ``two_op`` (``x + r`` in torch, then flashkernels ``rms_norm``).

Timing: ``do_bench_median`` (CUDA events, L2 flushed between repetitions). ``fwd``: the forward
with inputs requiring grad (the autograd graph is built, as in training). ``bwd``: the backward
alone, ``torch.autograd.grad`` with ``retain_graph=True`` over one graph built once, random
gradients for every differentiable output ((y, h) for the residual norm, (q, k) for Liger's
RoPE). Each is timed twice:

* GPU time (the ``fwd ms`` / ``bwd ms`` columns, the goals): the call captured once in a CUDA
  graph and the graph replayed, so the figure is the kernels' time without the host's. These ops
  take ~0.1 ms on the GPU, about what a Python call costs on the host, and the device machine's
  host time varies from run to run (the same RMSNorm call read 0.095 and 0.194 ms eagerly,
  2026-11-25): eager timings there measure the CPU. A provider whose call cannot be captured is
  timed eagerly instead, with a note.
* eager (``eager fwd`` / ``eager bwd``): the plain call, host time included when it exceeds
  the GPU's: what an eager training loop pays. Printed and written to the CSV (modes
  ``fwd_eager`` / ``bwd_eager``), not used by the goals.

Bytes (minimal unique bytes read + written; e = element size, 2 for bf16; the same count for
every provider, so GB/s compare like time does; weights read once):

    RMSNorm, x (M, N), w (N,):
        fwd = e(2MN + N) + 4M            read x, w; write y; write rstd (fp32, 4 B a row)
        bwd = e(3MN + 2N) + 4M           read x, dy, w, rstd; write dx, dw
    RMSNorm with residual, x, r (M, N):
        fwd = e(4MN + N) + 4M            read x, r, w; write y, h, rstd
        bwd = e(4MN + 2N) + 4M           read dy, dh, h, w, rstd; write dx, dw (the gradient of r
                                         has dx's values: counted once, though flashkernels
                                         writes a second copy so that two leaves get two .grad)
    SwiGLU, gate and up of n elements:
        fwd = 3ne                        read gate, up; write out
        bwd = 5ne                        read dout, gate, up; write dgate, dup
    RoPE, x (B, S, H, D) of n elements, cos/sin (S, R/2), rotary dim R:
        fwd = 2ne + 2S(R/2)e             read x, cos, sin; write out
        bwd = 2ne + 2S(R/2)e             read dout, cos, sin; write dx
    copy, n elements:  2ne

GB/s = bytes / ms / 1e6. Speedups are peer ms / flashkernels ms (> 1: flashkernels faster).
Exit code: 0, or 1 when a flashkernels measurement failed (peers failing are notes), 2 without a
GPU (or with TRITON_INTERPRET=1).

CSV (``--csv``, columns of ``common.CSV_COLUMNS``): op "copy", "rms_norm", "rms_norm_residual",
"swiglu", "rope" or "llama_layer"; mode "fwd", "bwd" (ops) or "fwd", "fwd+bwd" (layer); 2-D ops
put rows in ``seqlen_q`` and columns in ``head_dim`` (batch 1); RoPE and the layer fill batch,
heads and head_dim; ``peak_mem_mb`` is the memory one forward (layer: one forward + backward)
allocates beyond its inputs.

Layer: ``transformers.LlamaModel`` (one layer, hidden 4096, 32 heads, 8 KV heads, intermediate
14336, vocabulary 128: the embedding is not used), random init on the GPU, bf16, training mode,
``attn_implementation="sdpa"``; input ``inputs_embeds`` (1, 4096, 4096) requiring grad; loss
``(last_hidden_state.float() * P).mean()`` with a fixed random fp32 P (printed for both models:
they share weights, so the two losses should agree to bf16 rounding); ``fwd`` = the forward and
the loss, ``fwd+bwd`` = that and ``autograd.grad`` over the input and all used parameters. Then a
deep copy with ``flashkernels.integrations.transformers.apply(copy, backend="triton")``, timed
the same way. The model's final norm is part of both. Needs transformers >= 5.24 (skipped with a
note otherwise).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import sys
import time

import torch

from ..ops.rms_norm.reference import rms_norm_reference  # plain torch: no triton import
from ..ops.rope.reference import rotary_emb_reference
from ..ops.swiglu.reference import swiglu_reference
from .common import CsvSink, do_bench_median, dtype_name, environment, gpu_missing, graph_ms, measure_graph

OPS = ("rmsnorm", "residual", "swiglu", "rope", "layer")
DEVICE, DTYPE = "cuda", torch.bfloat16  # module-level so that a CPU dry run can swap them
EPS = 1e-6
RMS_SHAPE = (16384, 4096)
SWIGLU_SHAPE = (16384, 14336)
ROPE_SHAPE = (4, 4096, 32, 128)  # (B, S, H, D), rotary over all D
COPY_SHAPES = (RMS_SHAPE, SWIGLU_SHAPE)
LAYER = dict(batch=1, seqlen=4096, hidden=4096, heads=32, kv_heads=8, intermediate=14336, max_positions=8192)
GOAL_COPY_FRACTION = 0.95
GOAL_PEER_SPEEDUP = 1.0
GOAL_RESIDUAL_SPEEDUP = 1.4
GOAL_LAYER_SPEEDUP = 1.3
OURS = "flashkernels"
OUR_PROVIDERS = (OURS, "two_op")


# ----------------------------------------------------------------------------- byte formulas
def copy_bytes(numel: int, elt: int) -> int:
    """``dst.copy_(src)``: read n elements, write n."""
    return 2 * numel * elt


def rms_norm_bytes(m: int, n: int, elt: int, backward: bool = False) -> int:
    """fwd: read x (M, N), w (N,); write y (M, N), rstd (M,) fp32. bwd: read x, dy, w, rstd;
    write dx, dw."""
    if backward:
        return elt * (3 * m * n + 2 * n) + 4 * m
    return elt * (2 * m * n + n) + 4 * m


def rms_norm_residual_bytes(m: int, n: int, elt: int, backward: bool = False) -> int:
    """fwd: read x, r (M, N), w; write y, h (M, N), rstd. bwd: read dy, dh, h, w, rstd; write
    dx (counted once: the gradient of r has the same values), dw."""
    if backward:
        return elt * (4 * m * n + 2 * n) + 4 * m
    return elt * (4 * m * n + n) + 4 * m


def swiglu_bytes(numel: int, elt: int, backward: bool = False) -> int:
    """fwd: read gate, up; write out. bwd: read dout, gate, up; write dgate, dup."""
    return (5 if backward else 3) * numel * elt


def rope_bytes(b: int, s: int, h: int, d: int, rotary_dim: int, elt: int, backward: bool = False) -> int:
    """x (B, S, H, D), cos/sin (S, rotary_dim / 2) (rows 0..S-1 used). fwd: read x, cos, sin;
    write out. bwd: read dout, cos, sin; write dx (the same count)."""
    del backward  # the transpose rotation moves the same bytes
    return 2 * b * s * h * d * elt + 2 * s * (rotary_dim // 2) * elt


# ---------------------------------------------------------------------------------- arguments
def parse_ops(text: str) -> tuple[str, ...]:
    """``--ops``: a comma list of :data:`OPS` (or "all"), returned in :data:`OPS` order."""
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(OPS)} (or all), got {text!r}")
    if "all" in names:
        return OPS
    bad = [n for n in names if n not in OPS]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown op{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}; choose from "
            f"{', '.join(OPS)} (comma-separated) or all")
    return tuple(o for o in OPS if o in names)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--csv", default=None, help="append rows to this CSV file")
    p.add_argument("--ops", type=parse_ops, default=OPS, metavar="LIST",
                   help=f"comma list of {', '.join(OPS)} (default: all)")
    p.add_argument("--no-backward", action="store_true", help="forward only (the layer still runs forward + "
                                                                "backward: that is its goal)")
    p.add_argument("--layer-batch", type=_positive_int, default=1, metavar="B",
                   help=f"sequences of {LAYER['seqlen']} tokens in the layer's batch (default 1; at 1 the step "
                        "can be bound by the host's Python, not the GPU)")


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


# -------------------------------------------------------------------------------- references
# Plain-torch functions (eager and compiled); the reference modules are the specification.
def _torch_rms_norm(x, w):
    return rms_norm_reference(x, w, EPS)  # casting "llama" (Hugging Face LlamaRMSNorm)


def _torch_rms_norm_residual(x, r, w):
    return rms_norm_reference(x, w, EPS, residual=r)  # h = x + r (rounded), then the norm of h: (y, h)


def _torch_swiglu(gate, up):
    return swiglu_reference(gate, up)  # silu(gate) rounded to bf16, times up


def _torch_rope(x, cos, sin):
    return rotary_emb_reference(x, cos, sin)  # flash-attn layout, GPT-NeoX halves, in x's dtype


def _no_donated_buffers():
    """Compiled backwards with donated buffers refuse ``retain_graph=True``; the backward timing
    replays one retained graph."""
    try:
        from torch._functorch import config as fconfig
    except ImportError:  # pragma: no cover - old torch
        return contextlib.nullcontext()
    if hasattr(fconfig, "donated_buffer"):
        return fconfig.patch(donated_buffer=False)
    return contextlib.nullcontext()  # pragma: no cover


def _compiled(fn):
    return torch.compile(fn, fullgraph=True, dynamic=False)


def _liger() -> tuple[str | None, str | None]:
    """(liger_kernel's version, None) when it imports, else (None, why)."""
    try:
        import liger_kernel
    except Exception as exc:  # ImportError, or a triton mismatch while importing
        return None, f"liger_kernel does not import ({type(exc).__name__}: {_first_line(exc)})"
    try:
        from importlib.metadata import version

        return version("liger-kernel"), None
    except Exception:
        return getattr(liger_kernel, "__version__", "(version unknown)"), None


def _first_line(exc: BaseException) -> str:
    s = str(exc)
    return s.splitlines()[0][:200] if s else ""


# ----------------------------------------------------------------------------------- measure
class _Report:
    """Prints the table, writes the CSV, keeps the numbers for the goals summary."""

    def __init__(self, sink: CsvSink, env: dict, ceilings: dict | None):
        """``ceilings``: {(rows, cols) copy shape: GB/s} (see :func:`ceiling_shape`), or None."""
        self.sink, self.env, self.ceilings = sink, env, ceilings or {}
        self.ms: dict[tuple[str, str, str], float] = {}
        self.notes: list[str] = []
        self.failed_ours: list[str] = []  # our kernels failing: exit code 1

    def header(self, op: str, text: str, bytes_fwd: int, bytes_bwd: int | None):
        b = f"bytes fwd {bytes_fwd / 1e6:.1f} MB" + (f", bwd {bytes_bwd / 1e6:.1f} MB" if bytes_bwd else "")
        print(f"\n{op}: {text}; {b}", flush=True)
        cols = f"  {'provider':14s} {'fwd ms':>8s} {'GB/s':>7s} {'%copy':>6s}"
        if bytes_bwd:
            cols += f"   {'bwd ms':>8s} {'GB/s':>7s} {'%copy':>6s}"
        cols += f"   {'eager fwd':>9s}" + (f" {'eager bwd':>9s}" if bytes_bwd else "")
        print(cols + "   (ms: GPU time of a CUDA-graph replay; eager: the plain call)", flush=True)

    def ceiling(self, op: str) -> float | None:
        """GB/s of the copy that bounds ``op`` (None when not measured)."""
        return self.ceilings.get(ceiling_shape(op))

    def _pct(self, op, gbps):
        c = self.ceiling(op)
        return f"{100 * gbps / c:5.1f}%" if c else "   n/a"

    def row(self, op, provider, fwd, bwd, bytes_fwd, bytes_bwd, peak_mb, fwd_eager=None, bwd_eager=None, **shape):
        """One provider's line. ``fwd``/``bwd``: GPU (graph) ms, or None when that was not timed;
        ``*_eager``: the plain call's ms."""
        line = f"  {provider:14s}"
        for mode, ms, nbytes in (("fwd", fwd, bytes_fwd), ("bwd", bwd, bytes_bwd)):
            if nbytes is None:
                continue
            if ms is None:
                line += (" " if mode == "fwd" else "   ") + f"{'-':>8s} {'':7s} {'':6s}"
                continue
            gbps = nbytes / ms / 1e6
            self.ms[(op, provider, mode)] = ms
            self.sink.write(dict(op=op, provider=provider, dtype=dtype_name(DTYPE), mode=mode, ms=ms, gbps=gbps,
                                 peak_mem_mb=peak_mb if mode == "fwd" else None, **shape, **self.env))
            line += (" " if mode == "fwd" else "   ") + f"{ms:8.3f} {gbps:7.0f} {self._pct(op, gbps):>6s}"
        eager = [(m, ms, nb) for m, ms, nb in (("fwd_eager", fwd_eager, bytes_fwd), ("bwd_eager", bwd_eager, bytes_bwd))
                 if nb is not None]
        if any(ms is not None for _, ms, _ in eager):
            line += "  "
        for mode, ms, nbytes in eager:
            if ms is None:
                continue
            self.ms[(op, provider, mode)] = ms
            self.sink.write(dict(op=op, provider=provider, dtype=dtype_name(DTYPE), mode=mode, ms=ms,
                                 gbps=nbytes / ms / 1e6, **shape, **self.env))
            line += f" {ms:9.3f}"
        print(line, flush=True)

    def skip(self, op, provider, why):
        msg = f"{op} / {provider}: skipped: {why}"
        self.notes.append(msg)
        if provider in OUR_PROVIDERS:
            self.failed_ours.append(msg)
        print(f"  {provider:14s} skipped: {why}", flush=True)

    def speedups(self, op, ours=OURS, peers=("compile", "liger", "torch"), label="flashkernels"):
        for kind, modes in (("speedup", ("fwd", "bwd")), ("eager speedup", ("fwd_eager", "bwd_eager"))):
            parts = []
            for peer in peers:
                got = []
                for mode in modes:
                    a, b = self.ms.get((op, ours, mode)), self.ms.get((op, peer, mode))
                    if a and b:
                        got.append(f"{mode.split('_')[0]} {b / a:.2f}x")
                if got:
                    parts.append(f"vs {peer} " + " ".join(got))
            if parts:
                print(f"  {label} {kind}: " + "; ".join(parts), flush=True)

    def ratio(self, op, slow, fast, mode):
        a, b = self.ms.get((op, fast, mode)), self.ms.get((op, slow, mode))
        return b / a if a and b else None


def _provider(report, op, name, build, backward, bytes_fwd, bytes_bwd, shape, compile_=False):
    """Build (fn, wrt) with ``build()`` and time it; a failure is reported, not raised."""
    ctx = _no_donated_buffers() if compile_ else contextlib.nullcontext()
    try:
        with ctx:
            fn, wrt = build()
            m = measure_graph(fn, wrt, backward)
    except Exception as exc:  # a peer that fails is a result, not a crash
        report.skip(op, name, f"{type(exc).__name__}: {_first_line(exc)}")
        return
    for mode in ("fwd", "bwd") if backward else ("fwd",):
        if m[mode] is None:  # not capturable: the goals take the eager time, with a note
            m[mode] = m[f"{mode}_eager"]
            report.notes.append(f"{op} / {name} {mode}: no CUDA graph capture; timed eagerly (host time included)")
    report.row(op, name, m["fwd"], m["bwd"], bytes_fwd, bytes_bwd if backward else None, m["peak_mb"],
               fwd_eager=m["fwd_eager"], bwd_eager=m["bwd_eager"], **shape)
    torch.cuda.empty_cache()


def _elt() -> int:
    return torch.empty((), dtype=DTYPE).element_size()


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


# --------------------------------------------------------------------------------------- ops
def _copy_ms(m: int, n: int) -> float:
    """GPU time of ``dst.copy_(src)`` (m, n), replayed from a CUDA graph like the ops."""
    src = torch.randn(m, n, device=DEVICE, dtype=DTYPE)
    dst = torch.empty_like(src)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        dst.copy_(src)
        ms = graph_ms(lambda: dst.copy_(src), stream)
        if ms is None:  # pragma: no cover - a copy always captures
            ms = do_bench_median(lambda: dst.copy_(src))
    torch.cuda.current_stream().wait_stream(stream)
    return ms


def ceiling_shape(op: str) -> tuple[int, int]:
    """The copy shape whose bandwidth bounds ``op``: the one of its own element count."""
    return SWIGLU_SHAPE if op == "swiglu" else RMS_SHAPE


def _copy_ceilings(sink: CsvSink, env: dict) -> dict:
    """{(m, n): copy GB/s} over :data:`COPY_SHAPES`."""
    print(f"copy ceiling: dst.copy_(src), {dtype_name(DTYPE)}, bytes = 2 x numel x element size, GPU time",
          flush=True)
    out = {}
    for m, n in COPY_SHAPES:
        ms = _copy_ms(m, n)
        out[(m, n)] = gbps = copy_bytes(m * n, _elt()) / ms / 1e6
        sink.write(dict(op="copy", provider="torch", dtype=dtype_name(DTYPE), batch=1, seqlen_q=m, head_dim=n,
                        mode="fwd", ms=ms, gbps=gbps, **env))
        print(f"  {m} x {n}: {ms:.3f} ms, {gbps / 1e3:.3f} TB/s", flush=True)
        torch.cuda.empty_cache()
    print(f"  an op's ceiling is the copy of its size ({RMS_SHAPE[0]} x {RMS_SHAPE[1]}: norms, RoPE; "
          f"{SWIGLU_SHAPE[0]} x {SWIGLU_SHAPE[1]}: SwiGLU); goal: >= {GOAL_COPY_FRACTION:.0%} of it", flush=True)
    return out


def _bench_rms_norm(report, backward, no_liger):
    import flashkernels

    M, N = RMS_SHAPE
    dev, dt, e = DEVICE, DTYPE, _elt()
    x0 = torch.randn(M, N, device=dev, dtype=dt)
    w0 = (1 + 0.1 * torch.randn(N, device=dev, dtype=torch.float32)).to(dt)
    bf, bb = rms_norm_bytes(M, N, e), rms_norm_bytes(M, N, e, backward=True)
    shape = dict(batch=1, seqlen_q=M, head_dim=N)
    op = "rms_norm"
    report.header(op, f"x ({M}, {N}) {dtype_name(dt)}, weight ({N},), casting llama, eps {EPS:g}", bf,
                  bb if backward else None)

    def mk(f):
        def build():
            x, w = _leaf(x0), _leaf(w0)
            return (lambda: f(x, w)), (x, w)
        return build

    compiled = _compiled(_torch_rms_norm)
    for name, f in ((OURS, lambda x, w: flashkernels.rms_norm(x, w, EPS, backend="triton")),
                    ("torch", _torch_rms_norm), ("compile", compiled)):
        _provider(report, op, name, mk(f), backward, bf, bb, shape, compile_=name == "compile")
    if no_liger:
        report.skip(op, "liger", no_liger)
    else:
        def build_liger():
            from liger_kernel.transformers.rms_norm import LigerRMSNorm

            mod = LigerRMSNorm(N, eps=EPS).to(device=dev, dtype=dt)
            with torch.no_grad():
                mod.weight.copy_(w0)
            x = _leaf(x0)
            return (lambda: mod(x)), (x, mod.weight)

        _provider(report, op, "liger", build_liger, backward, bf, bb, shape)
    report.speedups(op)


def _bench_residual(report, backward, no_liger):
    import flashkernels

    M, N = RMS_SHAPE
    dev, dt, e = DEVICE, DTYPE, _elt()
    x0 = torch.randn(M, N, device=dev, dtype=dt)
    r0 = torch.randn(M, N, device=dev, dtype=dt)
    w0 = (1 + 0.1 * torch.randn(N, device=dev, dtype=torch.float32)).to(dt)
    bf, bb = rms_norm_residual_bytes(M, N, e), rms_norm_residual_bytes(M, N, e, backward=True)
    shape = dict(batch=1, seqlen_q=M, head_dim=N)
    op = "rms_norm_residual"
    report.header(op, f"x, residual ({M}, {N}) {dtype_name(dt)} -> (y, h = x + residual); two_op = torch add + "
                      f"flashkernels rms_norm", bf, bb if backward else None)

    def mk(f):
        def build():
            x, r, w = _leaf(x0), _leaf(r0), _leaf(w0)
            return (lambda: f(x, r, w)), (x, r, w)
        return build

    def fused(x, r, w):
        return flashkernels.rms_norm(x, w, EPS, residual=r, backend="triton")

    def two_op(x, r, w):
        h = x + r
        return flashkernels.rms_norm(h, w, EPS, backend="triton"), h

    compiled = _compiled(_torch_rms_norm_residual)
    for name, f in ((OURS, fused), ("two_op", two_op), ("torch", _torch_rms_norm_residual),
                    ("compile", compiled)):
        _provider(report, op, name, mk(f), backward, bf, bb, shape, compile_=name == "compile")
    if no_liger:
        report.skip(op, "liger", no_liger)
    else:
        def build_liger():
            from liger_kernel.transformers.fused_add_rms_norm import LigerFusedAddRMSNorm

            mod = LigerFusedAddRMSNorm(N, eps=EPS).to(device=dev, dtype=dt)
            with torch.no_grad():
                mod.weight.copy_(w0)
            x, r = _leaf(x0), _leaf(r0)
            return (lambda: mod(x, r)), (x, r, mod.weight)

        _provider(report, op, "liger", build_liger, backward, bf, bb, shape)
    report.speedups(op, peers=("two_op", "compile", "liger", "torch"), label="fused")


def _bench_swiglu(report, backward, no_liger):
    import flashkernels

    M, N = SWIGLU_SHAPE
    dev, dt, e = DEVICE, DTYPE, _elt()
    g0 = torch.randn(M, N, device=dev, dtype=dt)
    u0 = torch.randn(M, N, device=dev, dtype=dt)
    bf, bb = swiglu_bytes(M * N, e), swiglu_bytes(M * N, e, backward=True)
    shape = dict(batch=1, seqlen_q=M, head_dim=N)
    op = "swiglu"
    report.header(op, f"gate, up ({M}, {N}) {dtype_name(dt)}", bf, bb if backward else None)

    def mk(f):
        def build():
            g, u = _leaf(g0), _leaf(u0)
            return (lambda: f(g, u)), (g, u)
        return build

    compiled = _compiled(_torch_swiglu)
    for name, f in ((OURS, lambda g, u: flashkernels.swiglu(g, u, backend="triton")),
                    ("torch", _torch_swiglu), ("compile", compiled)):
        _provider(report, op, name, mk(f), backward, bf, bb, shape, compile_=name == "compile")
    if no_liger:
        report.skip(op, "liger", no_liger)
    else:
        def build_liger():
            from liger_kernel.ops.swiglu import LigerSiLUMulFunction

            return mk(LigerSiLUMulFunction.apply)()  # its backward overwrites gate/up: own leaves

        _provider(report, op, "liger", build_liger, backward, bf, bb, shape)
    report.speedups(op)


def rope_tables(seqlen: int, rotary_dim: int, device, dtype, base: float = 10000.0):
    """cos, sin (seqlen, rotary_dim / 2) of the standard frequencies."""
    inv = base ** (-torch.arange(0, rotary_dim, 2, device=device, dtype=torch.float32) / rotary_dim)
    ang = torch.arange(seqlen, device=device, dtype=torch.float32)[:, None] * inv[None, :]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def _bench_rope(report, backward, no_liger):
    import flashkernels

    B, S, H, D = ROPE_SHAPE
    dev, dt, e = DEVICE, DTYPE, _elt()
    x0 = torch.randn(B, S, H, D, device=dev, dtype=dt)
    cos, sin = rope_tables(S, D, dev, dt)
    bf = rope_bytes(B, S, H, D, D, e)
    bb = rope_bytes(B, S, H, D, D, e, backward=True)
    shape = dict(batch=B, heads_q=H, heads_kv=H, seqlen_q=S, seqlen_k=S, head_dim=D)
    op = "rope"
    report.header(op, f"x ({B}, {S}, {H}, {D}) {dtype_name(dt)} (flash-attn layout), cos/sin ({S}, {D // 2}), "
                      f"rotary dim {D}, GPT-NeoX halves", bf, bb if backward else None)

    def mk(f):
        def build():
            x = _leaf(x0)
            return (lambda: f(x, cos, sin)), (x,)
        return build

    compiled = _compiled(_torch_rope)
    for name, f in ((OURS, lambda x, c, s: flashkernels.apply_rotary_emb(x, c, s, backend="triton")),
                    ("torch", _torch_rope), ("compile", compiled)):
        _provider(report, op, name, mk(f), backward, bf, bb, shape, compile_=name == "compile")
    if no_liger:
        report.skip(op, "liger", no_liger)
    else:
        def build_liger():
            try:
                from liger_kernel.transformers.rope import liger_rotary_pos_emb
            except ImportError:
                from liger_kernel.transformers.functional import liger_rope as liger_rotary_pos_emb
            # Hugging Face layout (B, H, S, D) as transposed views of (B, S, H/2, D) memory: the
            # flash-attn tensor's bytes, split into q and k halves; full-width tables (1, S, D).
            q, k = _leaf(x0[:, :, : H // 2].contiguous()), _leaf(x0[:, :, H // 2:].contiguous())
            cf, sf = torch.cat((cos, cos), -1)[None], torch.cat((sin, sin), -1)[None]
            return (lambda: liger_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cf, sf)), (q, k)

        _provider(report, op, "liger", build_liger, backward, bf, bb, shape)
    report.speedups(op)


def layer_setup(LlamaConfig, LlamaModel):
    """(eager model, inputs_embeds x, loss projection P) of the layer benchmark (module docstring)."""
    L = LAYER
    cfg = LlamaConfig(vocab_size=128, hidden_size=L["hidden"], intermediate_size=L["intermediate"],
                      num_hidden_layers=1, num_attention_heads=L["heads"], num_key_value_heads=L["kv_heads"],
                      max_position_embeddings=L["max_positions"], attention_dropout=0.0, hidden_act="silu",
                      attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(DEVICE):
        eager = LlamaModel(cfg)
    eager = eager.to(dtype=DTYPE).train()
    x = torch.randn(L["batch"], L["seqlen"], L["hidden"], device=DEVICE, dtype=DTYPE, requires_grad=True)
    proj = torch.randn(L["batch"], L["seqlen"], L["hidden"], device=DEVICE, dtype=torch.float32)  # fixed: the loss
    return eager, x, proj


def layer_fns(model, x, proj):
    """(fwd, step): the loss, and the loss with autograd.grad over x and the used parameters."""
    # not the embedding: inputs_embeds bypasses it
    wrt = [x] + [p for n, p in model.named_parameters() if p.requires_grad and "embed_tokens" not in n]

    def fwd():
        out = model(inputs_embeds=x, use_cache=False).last_hidden_state
        return (out.float() * proj).mean()

    def step():
        return torch.autograd.grad(fwd(), wrt, allow_unused=True)

    return fwd, step


def layer_steps(seqlen: int | None = None) -> dict:
    """{"eager": step, "ours": step}: the benchmark's forward + backward step of eager
    transformers + SDPA and of the same weights after ``integrations.transformers.apply``
    (backend "triton"), each run once (compiles, first launches); for the scripts that time them
    side by side in one process. ``seqlen`` sets LAYER["seqlen"] first."""
    from ..integrations import transformers as fk_hf

    if seqlen is not None:
        LAYER["seqlen"] = seqlen
    fk_hf._import_transformers()
    from transformers import LlamaConfig, LlamaModel

    eager, x, proj = layer_setup(LlamaConfig, LlamaModel)
    ours = fk_hf.apply(copy.deepcopy(eager), backend="triton")
    steps = {"eager": layer_fns(eager, x, proj)[1], "ours": layer_fns(ours, x, proj)[1]}
    for step in steps.values():
        step()
    torch.cuda.synchronize()
    return steps


def _bench_layer(report):
    op = "llama_layer"
    L = LAYER
    print(f"\n{op}: transformers LlamaModel, 1 layer, hidden {L['hidden']}, heads {L['heads']}/{L['kv_heads']}, "
          f"intermediate {L['intermediate']}, {dtype_name(DTYPE)}, inputs_embeds ({L['batch']}, {L['seqlen']}, "
          f"{L['hidden']}), training",
          flush=True)
    try:
        from ..integrations import transformers as fk_hf

        fk_hf._import_transformers()  # the version floor apply() needs
        from transformers import LlamaConfig, LlamaModel
    except ImportError as exc:
        report.skip(op, "all", f"transformers unavailable ({_first_line(exc)})")
        return
    dt = DTYPE
    eager, x, proj = layer_setup(LlamaConfig, LlamaModel)
    shape = dict(batch=L["batch"], heads_q=L["heads"], heads_kv=L["kv_heads"], seqlen_q=L["seqlen"], seqlen_k=L["seqlen"],
                 head_dim=L["hidden"] // L["heads"], causal=True)
    print(f"  {'provider':18s} {'fwd ms':>8s} {'fwd+bwd ms':>11s} {'peak MB':>8s} {'loss':>13s}", flush=True)

    def time_model(model, name):
        fwd, step = layer_fns(model, x, proj)

        loss = float(fwd().detach())
        step()  # first-launch / Triton JIT costs out of the timing
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        g = step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        del g
        t_fwd = do_bench_median(fwd, warmup_ms=100, rep_ms=500)
        t_step = do_bench_median(step, warmup_ms=200, rep_ms=1500)
        for mode, ms in (("fwd", t_fwd), ("fwd+bwd", t_step)):
            report.ms[(op, name, mode)] = ms
            report.sink.write(dict(op=op, provider=name, dtype=dtype_name(dt), mode=mode, ms=ms,
                                   peak_mem_mb=peak if mode == "fwd+bwd" else None, **shape, **report.env))
        print(f"  {name:18s} {t_fwd:8.2f} {t_step:11.2f} {peak:8.0f} {loss:13.6e}", flush=True)

    for name, build in (("transformers_sdpa", lambda: eager),
                        (OURS, lambda: fk_hf.apply(copy.deepcopy(eager), backend="triton"))):
        try:
            model = build()
            time_model(model, name)
        except Exception as exc:
            report.skip(op, name, f"{type(exc).__name__}: {_first_line(exc)}")
        finally:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    r = report.ratio(op, "transformers_sdpa", OURS, "fwd+bwd")
    f = report.ratio(op, "transformers_sdpa", OURS, "fwd")
    if r is not None and f is not None:
        print(f"  flashkernels speedup: fwd {f:.2f}x, fwd+bwd {r:.2f}x (goal >= {GOAL_LAYER_SPEEDUP}x)", flush=True)


# ------------------------------------------------------------------------------------ goals
def goals(report: _Report, ops, backward: bool) -> list[tuple[str, float | None, bool | None]]:
    """(what, measured, met) for each goal of issue 4 that this run measured; met None = n/a."""
    out = []
    modes = ("fwd", "bwd") if backward else ("fwd",)
    for key, op in (("rmsnorm", "rms_norm"), ("swiglu", "swiglu"), ("rope", "rope")):
        if key not in ops:
            continue
        for mode in modes:
            ms = report.ms.get((op, OURS, mode))
            nbytes = _bytes_of(op, mode)
            ceiling = report.ceiling(op)
            frac = nbytes / ms / 1e6 / ceiling if ms and ceiling else None
            out.append((f"{op} {mode} >= {GOAL_COPY_FRACTION:.0%} of copy", frac,
                        None if frac is None else frac >= GOAL_COPY_FRACTION))
            for peer in ("compile", "liger"):
                s = report.ratio(op, peer, OURS, mode)
                out.append((f"{op} {mode} >= {GOAL_PEER_SPEEDUP:.1f}x {peer}", s,
                            None if s is None else s >= GOAL_PEER_SPEEDUP))
    if "residual" in ops:
        for mode in modes:
            s = report.ratio("rms_norm_residual", "two_op", OURS, mode)
            out.append((f"rms_norm_residual {mode} fused >= {GOAL_RESIDUAL_SPEEDUP}x two-op", s,
                        None if s is None else s >= GOAL_RESIDUAL_SPEEDUP))
    if "layer" in ops:
        s = report.ratio("llama_layer", "transformers_sdpa", OURS, "fwd+bwd")
        out.append((f"llama_layer fwd+bwd >= {GOAL_LAYER_SPEEDUP}x eager SDPA", s,
                    None if s is None else s >= GOAL_LAYER_SPEEDUP))
    return out


def _bytes_of(op: str, mode: str) -> int:
    bwd, e = mode == "bwd", _elt()
    if op == "rms_norm":
        return rms_norm_bytes(*RMS_SHAPE, e, backward=bwd)
    if op == "rms_norm_residual":
        return rms_norm_residual_bytes(*RMS_SHAPE, e, backward=bwd)
    if op == "swiglu":
        return swiglu_bytes(math.prod(SWIGLU_SHAPE), e, backward=bwd)
    if op == "rope":
        return rope_bytes(*ROPE_SHAPE, ROPE_SHAPE[-1], e, backward=bwd)
    raise ValueError(op)


# -------------------------------------------------------------------------------------- run
def run(args) -> int:
    why = gpu_missing("flashkernels bench ops")
    if why:
        print(why, file=sys.stderr)
        return 2
    ops = tuple(getattr(args, "ops", None) or OPS)
    backward = not getattr(args, "no_backward", False)
    env = environment()
    print(f"flashkernels bench ops: {env['gpu']}, torch {env['torch']}, triton {env['triton']}, "
          f"code {env['git_sha']}; ops {', '.join(ops)}; {'fwd + bwd' if backward else 'fwd only'}", flush=True)
    liger_version, why = _liger()
    print(f"liger: {'liger_kernel ' + liger_version if liger_version else why}", flush=True)
    t0 = time.time()
    sink = CsvSink(getattr(args, "csv", None))
    torch.manual_seed(0)
    try:
        ceilings = _copy_ceilings(sink, env) if any(o != "layer" for o in ops) else None
        report = _Report(sink, env, ceilings)
        benches = {"rmsnorm": _bench_rms_norm, "residual": _bench_residual, "swiglu": _bench_swiglu,
                   "rope": _bench_rope}
        LAYER["batch"] = getattr(args, "layer_batch", 1)
        for o in ops:
            if o == "layer":
                _bench_layer(report)
            else:
                benches[o](report, backward, why)
            torch.cuda.empty_cache()
    except KeyboardInterrupt:
        print("interrupted: reporting what was measured", flush=True)
        report = locals().get("report")
        if report is None:
            return 130
    finally:
        sink.close()

    print("\ngoals (issue 4):")
    for what, val, met in goals(report, ops, backward):
        shown = "n/a" if val is None else (f"{val:.1%}" if "copy" in what else f"{val:.2f}x")
        verdict = "n/a" if met is None else ("met" if met else "NOT met")
        print(f"  {what:48s} {shown:>8s}  {verdict}")
    if report.notes:
        print("notes:")
        for n in report.notes:
            print(f"  {n}")
    print(f"total {time.time() - t0:.0f} s")
    if report.failed_ours:
        print(f"flashkernels failed in {len(report.failed_ours)} measurement(s) (see notes): exit 1")
        return 1
    return 0


__all__ = ["OPS", "add_arguments", "run", "parse_ops", "copy_bytes", "rms_norm_bytes", "rms_norm_residual_bytes",
           "swiglu_bytes", "rope_bytes", "rope_tables", "goals"]
