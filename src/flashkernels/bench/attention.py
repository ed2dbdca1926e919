"""``flashkernels bench attention``: flashkernels against the attention kernels users already have.

Peers, all timed in this process on the same inputs:

* ``sdpa-flash``, ``sdpa-cudnn``, ``sdpa-efficient``: ``torch.nn.functional.
  scaled_dot_product_attention`` pinned to one backend with ``torch.nn.attention.sdpa_kernel``;
* ``flex``: ``torch.compile``'d ``flex_attention`` (a causal ``BlockMask`` when causal), compiled
  afresh for each shape (past dynamo's recompile limit it would silently run unfused);
* ``sdpa-math`` (opt-in, ``--providers``): the unfused PyTorch math, for scale.

Shapes follow the FlashAttention-3 paper: B·S = 16384 tokens, Hq·D = 2048, S from 1k to 16k,
head dims 64/128/256, causal or not, forward and backward (plus one GQA shape).

Counting (FlashAttention papers, Triton tutorial; docs/perf-notes.md):
    FLOPs fwd = 4·B·Hq·Sq·Sk·D, halved when causal;  bwd = 2.5 × fwd.
    bytes fwd = e·(2·B·Hq·Sq·D + 2·B·Hkv·Sk·D) + 4·B·Hq·Sq          (q, k, v read; o, lse written)
    bytes bwd = e·(4·B·Hq·Sq·D + 4·B·Hkv·Sk·D) + 4·B·Hq·Sq          (q, k, v, o, dO, lse read;
                                                                     dq, dk, dv written)
with e the element size. ``bwd`` times the backward alone (autograd.grad over a retained graph).
``--graph`` times each call's CUDA-graph replays (GPU time) instead of eager calls: do_bench flushes
the L2 before each call, and only that flush's GPU time hides the next call's host time, so where an
eager call's Python and launch take longer than flush + kernel (our 1k causal forwards on the H100's
host, docs/perf-notes.md session 23) the eager timing reads the host.
``--paired N`` (implies ``--graph``) captures every provider's call of a shape and mode and replays the
graphs in alternation, N repetitions (common.paired_ms: each repetition runs all of them, the order
rotated, the L2 flushed before each): each provider's time is its median there, so the ratios compare
kernels run at one clock. Timed alone, one after the other, two kernels can meet the card at different
SM clocks (its power limit: up to 8% apart on an H200, docs/perf-notes.md session 32), and separate
medians then compare two clocks.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .common import (DTYPES, CsvSink, capture_graph, do_bench_median, dtype_name, environment, gpu_missing, graph_ms,
                     paired_ms)

PROVIDERS = ("flashkernels", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "flex")
OPTIONAL_PROVIDERS = ("sdpa-math",)
OURS = "flashkernels"
TOKENS = 16384
HIDDEN = 2048
FULL_SEQLENS = (1024, 2048, 4096, 8192, 16384)
FULL_HEAD_DIMS = (64, 128, 256)
QUICK_SEQLENS = (2048, 8192)
QUICK_HEAD_DIMS = (128,)
GQA_SHAPE = dict(batch=2, heads_q=32, heads_kv=8, seqlen=8192, head_dim=128, causal=True)


@dataclass(frozen=True)
class Shape:
    batch: int
    heads_q: int
    heads_kv: int
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    causal: bool

    @property
    def gqa(self) -> bool:
        return self.heads_q != self.heads_kv

    def label(self) -> str:
        heads = f"h{self.heads_q}" if not self.gqa else f"h{self.heads_q}/{self.heads_kv}"
        seq = f"s{self.seqlen_q}" if self.seqlen_q == self.seqlen_k else f"s{self.seqlen_q}x{self.seqlen_k}"
        return f"d{self.head_dim} {seq} b{self.batch} {heads} {'causal' if self.causal else 'full'}"


def flops(s: Shape, mode: str) -> float:
    f = 4.0 * s.batch * s.heads_q * s.seqlen_q * s.seqlen_k * s.head_dim
    if s.causal:
        f /= 2
    return f * 2.5 if mode == "bwd" else f


def bytes_moved(s: Shape, mode: str, elt: int) -> float:
    nq = s.batch * s.heads_q * s.seqlen_q * s.head_dim
    nkv = s.batch * s.heads_kv * s.seqlen_k * s.head_dim
    rows = s.batch * s.heads_q * s.seqlen_q
    if mode == "fwd":
        return elt * (2 * nq + 2 * nkv) + 4 * rows
    return elt * (4 * nq + 4 * nkv) + 4 * rows


def fa3_shapes(seqlens, head_dims, causals, gqa: bool) -> list[Shape]:
    shapes = []
    for d in head_dims:
        for causal in causals:
            for s in seqlens:
                h = HIDDEN // d
                shapes.append(Shape(max(1, TOKENS // s), h, h, s, s, d, causal))
    if gqa:
        g = GQA_SHAPE
        shapes.append(Shape(g["batch"], g["heads_q"], g["heads_kv"], g["seqlen"], g["seqlen"],
                            g["head_dim"], g["causal"]))
    return shapes


# ---------------------------------------------------------------------------------- providers
def _causal_mask_mod(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def make_fn(provider: str, q, k, v, s: Shape):
    """A zero-argument callable computing attention(q, k, v) with ``provider``; q/k/v (B, H, S, D)."""
    if provider == OURS:
        import flashkernels

        return lambda: flashkernels.scaled_dot_product_attention(
            q, k, v, is_causal=s.causal, enable_gqa=s.gqa, backend="triton")
    if provider.startswith("sdpa-"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        be = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
              "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION, "sdpa-math": SDPBackend.MATH}[provider]

        def fn():
            with sdpa_kernel(be):
                return F.scaled_dot_product_attention(q, k, v, is_causal=s.causal, enable_gqa=s.gqa)
        return fn
    if provider == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        bm = None
        if s.causal:
            bm = create_block_mask(_causal_mask_mod, None, None, s.seqlen_q, s.seqlen_k, device=q.device)
        compiled = _flex_compiled(flex_attention, s)
        return lambda: compiled(q, k, v, block_mask=bm, enable_gqa=s.gqa)
    raise ValueError(f"provider: expected one of {PROVIDERS + OPTIONAL_PROVIDERS}, got {provider!r}")


_FLEX = {"shape": None, "fn": None}


def _flex_compiled(flex_attention, s: Shape):
    # One fresh compile per shape, shared by its fwd and bwd: dynamo's recompile limit (8) would
    # otherwise make later shapes fall back to the unfused path without saying so.
    if _FLEX["shape"] != s:
        torch._dynamo.reset()
        # The bwd timing replays backward over one retained graph; compiled backwards with
        # donated buffers refuse retain_graph (seen on the H100, torch 2.11), so keep them off.
        torch._functorch.config.donated_buffer = False
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
        _FLEX["shape"] = s
    return _FLEX["fn"]


# ------------------------------------------------------------------------------------ measure
def measure(provider: str, s: Shape, mode: str, dtype: torch.dtype, warmup_ms: float, rep_ms: float,
            inputs, graph: bool = False) -> dict:
    """Time one provider on one shape and mode. Returns a result dict (``error`` set on failure).
    ``graph``: the call's kernels replayed from a CUDA graph (GPU time, no host time; common.graph_ms)
    instead of eager calls; all of it on a side stream (a graph captures only one)."""
    if graph:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(stream):
                return _measure(provider, s, mode, dtype, warmup_ms, rep_ms, inputs, stream)
        finally:
            torch.cuda.current_stream().wait_stream(stream)
            torch.cuda.synchronize()
    return _measure(provider, s, mode, dtype, warmup_ms, rep_ms, inputs, None)


def _timed(fn, warmup_ms: float, rep_ms: float, stream) -> float:
    """do_bench's median ms of ``fn`` (eager), or with ``stream`` of its CUDA-graph replays."""
    if stream is None:
        return do_bench_median(fn, warmup_ms, rep_ms)
    ms = graph_ms(fn, stream)
    if ms is None:
        raise RuntimeError("the call could not be captured in a CUDA graph")
    return ms


def _row(provider: str, s: Shape, mode: str, dtype: torch.dtype) -> dict:
    return dict(op="attention", provider=provider, dtype=dtype_name(dtype), batch=s.batch, heads_q=s.heads_q,
                heads_kv=s.heads_kv, seqlen_q=s.seqlen_q, seqlen_k=s.seqlen_k, head_dim=s.head_dim, causal=s.causal,
                mode=mode)


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"


def _grad_mode(mode: str):
    """The autograd mode a ``mode``'s call runs and is timed in: no_grad for the forward."""
    return torch.no_grad() if mode == "fwd" else contextlib.nullcontext()


def _prepare(provider: str, s: Shape, mode: str, inputs):
    """(call, peak bytes): ``provider``'s call to time for ``mode`` on ``inputs`` (the forward, to run under
    _grad_mode's no_grad, or the backward alone: autograd.grad over a retained graph, whose output the call
    keeps), run twice first (compiles, autotuning and first-launch costs stay out of memory and time), and its
    peak memory beyond what was allocated before the second run."""
    q, k, v = inputs
    fn = make_fn(provider, q, k, v, s)
    if mode == "fwd":
        call = fn
        with torch.no_grad():
            call()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            call()
    else:
        leaves = (q, k, v)
        o = fn()
        do = torch.randn_like(o)
        torch.autograd.grad(o, leaves, do)  # first backward: compiles
        del o
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        o = fn()

        def call():
            return torch.autograd.grad(o, leaves, do, retain_graph=True)
        call()
    torch.cuda.synchronize()
    return call, torch.cuda.max_memory_allocated() - base


def _done(row: dict, s: Shape, mode: str, ms: float, peak: int, element_size: int) -> dict:
    row.update(ms=ms, tflops=flops(s, mode) / ms / 1e9, gbps=bytes_moved(s, mode, element_size) / ms / 1e6,
               peak_mem_mb=peak / 2**20)
    return row


def _measure(provider: str, s: Shape, mode: str, dtype: torch.dtype, warmup_ms: float, rep_ms: float, inputs,
             stream) -> dict:
    row = _row(provider, s, mode, dtype)
    try:
        call, peak = _prepare(provider, s, mode, inputs)
        with _grad_mode(mode):
            ms = _timed(call, warmup_ms, rep_ms, stream)
        _done(row, s, mode, ms, peak, inputs[0].element_size())
    except Exception as exc:  # a peer that does not support a shape is a result, not a crash
        row["error"] = _error(exc)
    return row


def measure_paired(providers, s: Shape, mode: str, dtype: torch.dtype, inputs, reps: int) -> list[dict]:
    """``--paired``: every provider's call (:func:`_prepare`) captured in a CUDA graph on a side stream, then all
    the graphs replayed in alternation ``reps`` times (common.paired_ms); each row's ms is its provider's median
    there. A provider whose call fails or cannot be captured gets a row with ``error`` and is left out of the
    replays. The calls (and what their graphs read) stay alive until the replays end."""
    rows, calls, graphs = [], [], []
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(stream):
            for prov in providers:
                row = _row(prov, s, mode, dtype)
                rows.append(row)
                try:
                    call, peak = _prepare(prov, s, mode, inputs)
                    with _grad_mode(mode):
                        graph = capture_graph(call, stream)
                    if graph is None:
                        raise RuntimeError("the call could not be captured in a CUDA graph")
                except Exception as exc:  # (as _measure: a result, not a crash)
                    row["error"] = _error(exc)
                    continue
                calls.append(call)
                graphs.append((row, graph, peak))
            times = paired_ms([g.replay for _, g, _ in graphs], reps=reps) if graphs else []
    finally:
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
    for (row, _, peak), t in zip(graphs, times):
        _done(row, s, mode, statistics.median(t), peak, inputs[0].element_size())
    del graphs, calls
    return rows


def make_inputs(s: Shape, dtype: torch.dtype, requires_grad: bool):
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(h, n):
        return torch.randn(s.batch, h, n, s.head_dim, device="cuda", dtype=dtype, generator=g
                           ).requires_grad_(requires_grad)
    return rnd(s.heads_q, s.seqlen_q), rnd(s.heads_kv, s.seqlen_k), rnd(s.heads_kv, s.seqlen_k)


# -------------------------------------------------------------------------------------- report
def _progress(i: int, n: int, s: Shape, mode: str, rows: list[dict], elapsed: float) -> str:
    parts = []
    for r in rows:
        if "error" in r:
            parts.append(f"{r['provider']} ERR")
        else:
            parts.append(f"{r['provider']} {r['tflops']:.0f} TF/s {r['ms']:.3f} ms")
    return f"[{i}/{n}] {s.label()} {mode}: " + " | ".join(parts) + f"  ({elapsed:.0f}s)"


def format_table(results: list[tuple[Shape, str, list[dict]]], providers: list[str]) -> str:
    """One line per (shape, mode): flashkernels' TFLOP/s and ms, then each peer's TFLOP/s and the
    ratio flashkernels / peer (above 1: flashkernels is faster)."""
    peers = [p for p in providers if p != OURS]
    head = f"{'shape':34s} {'mode':4s} | {OURS + ' TF/s':>17s} {'ms':>8s}"
    for p in peers:
        head += f" | {p + ' TF/s':>19s} {'ratio':>6s}"
    lines = [head, "-" * len(head)]
    for s, mode, rows in results:
        by = {r["provider"]: r for r in rows}
        ours = by.get(OURS)
        ok = ours is not None and "error" not in ours
        line = f"{s.label():34s} {mode:4s} | "
        line += (f"{ours['tflops']:17.1f} {ours['ms']:8.3f}" if ok else f"{'err' if ours else '-':>17s} {'':>8s}")
        for p in peers:
            r = by.get(p)
            if r is None:
                line += f" | {'-':>19s} {'':>6s}"
            elif "error" in r:
                line += f" | {'err':>19s} {'':>6s}"
            else:
                ratio = f"x{ours['tflops'] / r['tflops']:.2f}" if ok else ""
                line += f" | {r['tflops']:19.1f} {ratio:>6s}"
        lines.append(line)
    errors = [r for _, _, rows in results for r in rows if "error" in r]
    if errors:
        lines.append("")
        lines.append("errors:")
        seen = set()
        for r in errors:
            key = (r["provider"], r["error"])
            if key in seen:
                continue
            seen.add(key)
            lines.append(f"  {r['provider']}: {r['error']}")
    return "\n".join(lines)


def plot(results: list[tuple[Shape, str, list[dict]]], path: str, title: str) -> str | None:
    """TFLOP/s against sequence length, one panel per (head dim, causal, mode). Returns None when
    written, else why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        return (f"matplotlib is not importable ({type(exc).__name__}: {exc}); draw it elsewhere with "
                f"`flashkernels bench attention --from-csv CSV --plot PNG`")
    panels: dict[tuple, dict[str, list[tuple[int, float]]]] = {}
    for s, mode, rows in results:
        if s.gqa:
            continue
        panel = panels.setdefault((s.head_dim, s.causal, mode), {})
        for r in rows:
            if "error" not in r:
                panel.setdefault(r["provider"], []).append((s.seqlen_q, r["tflops"]))
    if not panels:
        return "no successful measurements to plot"
    keys = sorted(panels, key=lambda k: (k[0], k[1], k[2] != "fwd"))
    ncols = min(4, len(keys))
    nrows = (len(keys) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        d, causal, mode = key
        for prov, pts in sorted(panels[key].items(), key=lambda kv: kv[0] != OURS):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    linewidth=2.5 if prov == OURS else 1.2, label=prov)
        ax.set_xscale("log", base=2)
        xs = sorted({p[0] for pts in panels[key].values() for p in pts})
        ax.set_xticks(xs, [f"{x // 1024}k" if x % 1024 == 0 else str(x) for x in xs])
        ax.minorticks_off()
        ax.set_title(f"d{d} {'causal' if causal else 'non-causal'} {mode}", fontsize=10)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("TFLOP/s")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ----------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help=f"a few shapes: head dim {QUICK_HEAD_DIMS[0]}, seqlens "
                        f"{', '.join(map(str, QUICK_SEQLENS))}, causal and not, fwd and bwd (a few minutes, mostly "
                        f"FlexAttention compiles)")
    p.add_argument("--csv", metavar="PATH", help="append one row per measurement to this CSV file")
    p.add_argument("--plot", metavar="PATH", help="draw TFLOP/s against seqlen to this PNG (needs matplotlib)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="input dtype (default bf16)")
    p.add_argument("--from-csv", metavar="PATH",
                   help="measure nothing: print the table (and --plot) of the rows in this CSV; "
                        "works without a GPU")
    p.add_argument("--providers", metavar="LIST",
                   help=f"comma-separated subset of {','.join(PROVIDERS + OPTIONAL_PROVIDERS)} "
                        f"(default: {','.join(PROVIDERS)})")
    p.add_argument("--seqlens", metavar="LIST", help="comma-separated sequence lengths (batch = 16384 / seqlen)")
    p.add_argument("--head-dims", metavar="LIST", help="comma-separated head dims (heads = 2048 / head dim)")
    p.add_argument("--causal", choices=("both", "yes", "no"), default="both",
                   help="causal shapes, non-causal ones, or both (default)")
    p.add_argument("--modes", metavar="LIST", default="fwd,bwd", help="fwd, bwd or fwd,bwd (default)")
    p.add_argument("--no-gqa", action="store_true", help="leave out the GQA shape (full runs only)")
    p.add_argument("--warmup", type=float, default=25, metavar="MS", help="do_bench warm-up in ms (default 25)")
    p.add_argument("--rep", type=float, default=100, metavar="MS", help="do_bench repetitions in ms (default 100)")
    p.add_argument("--graph", action="store_true",
                   help="time each call's CUDA-graph replays (GPU time) instead of eager calls: at 1k an eager "
                        "call's host time can exceed its kernel's and do_bench then reads the host (a call that "
                        "cannot be captured is reported as an error; --warmup / --rep then unused)")
    p.add_argument("--paired", type=int, default=0, metavar="N",
                   help="replay every provider's CUDA graph of a shape and mode in alternation, N repetitions, and "
                        "report each one's median (implies --graph): the ratios then compare kernels run at one "
                        "clock, where separate timings can meet the card at SM clocks up to 8%% apart")


def _ints(text: str | None, default) -> tuple[int, ...]:
    if not text:
        return tuple(default)
    return tuple(int(x) for x in text.split(",") if x.strip())


def load_csv(path: str, dtype: str | None = None) -> list[tuple[Shape, str, list[dict]]]:
    """Results grouped as :func:`format_table` and :func:`plot` take them, from a CSV this
    command wrote (the last row wins where a (shape, mode, provider) repeats)."""
    import csv

    groups: dict[tuple[Shape, str], dict[str, dict]] = {}
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            if r.get("op") != "attention" or (dtype and r.get("dtype") != dtype):
                continue
            s = Shape(int(r["batch"]), int(r["heads_q"]), int(r["heads_kv"]), int(r["seqlen_q"]),
                      int(r["seqlen_k"]), int(r["head_dim"]), r["causal"] in ("1", "True", "true"))
            row = dict(r, ms=float(r["ms"]), tflops=float(r["tflops"]))
            groups.setdefault((s, r["mode"]), {})[r["provider"]] = row
    return [(s, mode, list(rows.values())) for (s, mode), rows in groups.items()]


def report_csv(args: argparse.Namespace) -> int:
    """``--from-csv``: the table and plot of an earlier run, with no GPU needed."""
    results = load_csv(args.from_csv, args.dtype)
    if not results:
        print(f"--from-csv: no attention rows in {args.from_csv}", file=sys.stderr)
        return 2
    present = {r["provider"] for _, _, rows in results for r in rows}
    providers = [p for p in PROVIDERS + OPTIONAL_PROVIDERS if p in present]
    print(format_table(results, providers))
    if args.plot:
        first = results[0][2][0]
        # A CSV may join runs of several commits (e.g. forward rows of one, backward of another).
        shas = " + ".join(dict.fromkeys(str(r.get("git_sha")) for _, _, rows in results for r in rows))
        why = plot(results, args.plot, f"flashkernels attention, {first.get('dtype')}, {first.get('gpu')}, "
                                       f"torch {first.get('torch')}, triton {first.get('triton')}, code {shas}")
        print(f"plot: {why}" if why else f"plot written to {args.plot}")
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "from_csv", None):
        return report_csv(args)
    if getattr(args, "paired", 0) < 0:
        print(f"flashkernels bench attention: --paired must be 0 or more, got {args.paired}", file=sys.stderr)
        return 2
    why = gpu_missing("flashkernels bench")
    if why:
        print(f"{why}. Use `flashkernels check` on a CPU.", file=sys.stderr)
        return 2
    args.dtype = args.dtype or "bf16"
    providers = [p.strip() for p in (args.providers or ",".join(PROVIDERS)).split(",") if p.strip()]
    bad = [p for p in providers if p not in PROVIDERS + OPTIONAL_PROVIDERS]
    if bad:
        print(f"--providers: unknown {bad}; expected some of {PROVIDERS + OPTIONAL_PROVIDERS}", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("fwd", "bwd") for m in modes):
        print(f"--modes: expected fwd, bwd or fwd,bwd, got {args.modes!r}", file=sys.stderr)
        return 2
    seqlens = _ints(args.seqlens, QUICK_SEQLENS if args.quick else FULL_SEQLENS)
    head_dims = _ints(args.head_dims, QUICK_HEAD_DIMS if args.quick else FULL_HEAD_DIMS)
    causals = {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]
    gqa = not (args.quick or args.no_gqa or args.seqlens or args.head_dims)
    shapes = fa3_shapes(seqlens, head_dims, causals, gqa)
    dtype = DTYPES[args.dtype]

    env = environment()
    print(f"flashkernels bench attention: {env['gpu']}, torch {env['torch']}, triton {env['triton']}, "
          f"code {env['git_sha']}, {args.dtype}, "
          + (f"median of {args.paired} alternating CUDA-graph replays of all providers (GPU time)" if args.paired
             else "do_bench median of CUDA-graph replays (GPU time)" if args.graph
             else f"do_bench median (warmup {args.warmup:g} ms, rep {args.rep:g} ms)"), flush=True)
    print(f"{len(shapes)} shapes x {len(modes)} modes x providers {', '.join(providers)}", flush=True)
    sink = CsvSink(args.csv)
    results = []
    t0 = time.time()
    n = len(shapes) * len(modes)
    i = 0
    try:
        for s in shapes:
            for mode in modes:
                i += 1
                inputs = make_inputs(s, dtype, requires_grad=mode == "bwd")
                if getattr(args, "paired", 0):
                    rows = measure_paired(providers, s, mode, dtype, inputs, args.paired)
                else:  # (each row written as soon as it is measured)
                    rows = (measure(prov, s, mode, dtype, args.warmup, args.rep, inputs, graph=args.graph)
                            for prov in providers)
                kept = []
                for r in rows:
                    r.update(env)
                    kept.append(r)
                    if "error" not in r:
                        sink.write(r)
                rows = kept
                del inputs
                torch.cuda.empty_cache()
                results.append((s, mode, rows))
                print(_progress(i, n, s, mode, rows, time.time() - t0), flush=True)
    except KeyboardInterrupt:
        print("interrupted: reporting what was measured", flush=True)
    finally:
        sink.close()
    print()
    print(format_table(results, providers))
    if args.csv:
        print(f"\nCSV rows appended to {args.csv}")
    if args.plot:
        why = plot(results, args.plot, f"flashkernels attention, {args.dtype}, {env['gpu']}, "
                                       f"torch {env['torch']}, triton {env['triton']}, {env['git_sha']}")
        print(f"plot: {why}" if why else f"plot written to {args.plot}")
    failed_ours = [r for _, _, rows in results for r in rows if r["provider"] == OURS and "error" in r]
    return 1 if failed_ours else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_attention", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))
