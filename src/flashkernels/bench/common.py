"""Shared benchmark plumbing: the timer (eager, and GPU time from CUDA-graph replays), the
environment stamp, the CSV writer.

Timing follows ``triton.testing.do_bench`` with ``return_mode="median"`` (CUDA events around
each repetition, the L2 cache flushed between them), the method the anchors in
``shared/ANCHORS.md`` were measured with, so numbers compare.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import os
import subprocess
from pathlib import Path

import torch

CSV_COLUMNS = (
    "op", "provider", "dtype", "batch", "heads_q", "heads_kv", "seqlen_q", "seqlen_k",
    "head_dim", "causal", "mode", "ms", "tflops", "gbps", "peak_mem_mb",
    "gpu", "torch", "triton", "git_sha",
)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).replace("torch.", ""))


def gpu_missing(who: str):
    """Why ``who`` cannot time compiled kernels here (no CUDA GPU visible, or Triton's
    interpreter switched on), as a message; None when it can."""
    if not torch.cuda.is_available():
        return f"{who}: needs a CUDA GPU; none is visible to torch (torch {torch.__version__})"
    from .._backend import interpreter_enabled

    if interpreter_enabled():
        return f"{who}: TRITON_INTERPRET=1 is set; unset it to time the compiled kernels"
    return None


def do_bench_median(fn, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median milliseconds of ``fn()`` over ``rep_ms`` of repetitions after ``warmup_ms``."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


class _CudaClock:
    """paired_ms's default clock: CUDA events on the current stream, read after one synchronise."""

    def mark(self):
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def sync(self):
        torch.cuda.synchronize()

    def elapsed(self, a, b) -> float:
        return a.elapsed_time(b)


def paired_ms(calls, reps: int = 40, flush=None, clock=None) -> list[list[float]]:
    """Milliseconds of each of ``calls`` (callables without arguments, e.g. CUDA-graph replays),
    measured in alternation: repetition r runs every call once, in the order rotated by r (for two:
    A B, B A, A B, ...), each after ``flush()``. So a drift of the clock over the run (the card's
    power cap, its temperature) lands on every variant alike, and the ratio of two variants can be
    read per repetition (:func:`paired_ratio`) instead of from medians taken minutes apart, where
    the same build read up to 7% apart on an H100 (session 19). Returns one list of ``reps`` times
    per call, in repetition order. ``clock`` (default: CUDA events, the L2 cache flushed as
    ``triton.testing.do_bench`` does unless ``flush`` is given) has mark() -> a time mark, sync(),
    and elapsed(a, b) -> ms between two marks."""
    if not calls:
        raise ValueError("paired_ms: no calls to time")
    if reps < 1:
        raise ValueError(f"paired_ms: reps must be at least 1, got {reps}")
    if clock is None:
        clock = _CudaClock()
        if flush is None:
            cache = torch.empty(int(256e6 // 4), dtype=torch.int, device="cuda")  # (do_bench's L2 flush)
            flush = cache.zero_
    marks = [[] for _ in calls]
    n = len(calls)
    for r in range(reps):
        for j in range(n):
            i = (j + r) % n
            if flush is not None:
                flush()
            a = clock.mark()
            calls[i]()
            marks[i].append((a, clock.mark()))
    clock.sync()
    return [[clock.elapsed(a, b) for a, b in m] for m in marks]


def paired_ratio(base: list[float], other: list[float]) -> tuple[float, float, float]:
    """(median, 10th, 90th percentile) over repetitions of base[r] / other[r]: how many times faster
    ``other`` ran than ``base`` in the same repetition of :func:`paired_ms` (> 1: ``other`` faster)."""
    if len(base) != len(other) or not base:
        raise ValueError("paired_ratio: two equally long, non-empty lists of times")
    ratios = sorted(b / o for b, o in zip(base, other))

    def pct(q):  # (linear interpolation between the closest ranks)
        x = q * (len(ratios) - 1)
        lo = int(x)
        hi = min(lo + 1, len(ratios) - 1)
        return ratios[lo] + (ratios[hi] - ratios[lo]) * (x - lo)

    return pct(0.5), pct(0.1), pct(0.9)


def _grad_outputs(out) -> tuple:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return tuple(o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad)


def capture_graph(fn, stream):
    """``fn``'s kernels captured in a CUDA graph on ``stream`` (``fn`` warmed up there already),
    or None when the call cannot be captured."""
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=stream):
            fn()
    except Exception:  # e.g. a host synchronisation inside the call
        torch.cuda.synchronize()
        return None
    return graph


def capture_calls(fns, stream) -> list:
    """One CUDA graph per callable of ``fns`` (no arguments), each run once on ``stream`` first (the
    compiles stay out of the capture) and captured there; call inside ``torch.cuda.stream(stream)``.
    Raises RuntimeError naming the first call that cannot be captured. The callables, and the
    tensors they close over, must stay alive while the graphs replay: a graph reads its inputs'
    memory, and a later capture's ``torch.cuda.empty_cache()`` can unmap freed blocks (session 19's
    crash, docs/perf-notes.md)."""
    graphs = []
    for i, fn in enumerate(fns):
        fn()
        torch.cuda.synchronize()
        graph = capture_graph(fn, stream)
        if graph is None:
            raise RuntimeError(f"capture_calls: call {i} could not be captured in a CUDA graph")
        graphs.append(graph)
    return graphs


def graph_ms(fn, stream) -> float | None:
    """Median ms of ``fn``'s kernels replayed from a CUDA graph captured on ``stream`` (warmed up
    there already); None when the call cannot be captured."""
    graph = capture_graph(fn, stream)
    if graph is None:
        return None
    ms = do_bench_median(graph.replay)
    del graph
    return ms


def measure_graph(fn, wrt, backward: bool) -> dict:
    """{"fwd", "bwd", "fwd_eager", "bwd_eager": ms or None, "peak_mb": forward peak MB beyond the
    inputs} of ``fn()`` -> tensor(s); "fwd"/"bwd" are CUDA-graph (GPU) times, see bench ops' module
    docstring. Everything runs on a side stream: the backward's kernels go to the stream its
    forward ran on, and a CUDA graph captures only a side stream."""
    res = dict(fwd=None, bwd=None, fwd_eager=None, bwd_eager=None, peak_mb=None)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        # Warm-up: torch.compile / Triton JIT of forward and backward (retain_graph as in the
        # timing: a compiled backward is lowered on its first call) stay out of memory and time.
        for _ in range(2):
            outs = _grad_outputs(fn())
            if backward:
                torch.autograd.grad(outs, wrt, tuple(torch.randn_like(o) for o in outs), retain_graph=True)
            del outs
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        res["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        del out
        res["fwd_eager"] = do_bench_median(fn)
        res["fwd"] = graph_ms(fn, stream)
        if backward:
            outs = _grad_outputs(fn())
            gos = tuple(torch.randn_like(o) for o in outs)

            def bwd():
                return torch.autograd.grad(outs, wrt, gos, retain_graph=True)

            res["bwd_eager"] = do_bench_median(bwd)
            res["bwd"] = graph_ms(bwd, stream)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    return res


def warm_gpu(seconds: float = 0.5) -> None:
    """Busy the GPU with bf16 matmuls for about ``seconds`` before the first timing, so that the
    first case of a fresh process does not time a GPU still ramping its clocks (suspected, not
    yet confirmed, for the decode bench's first row on 2026-11-25: 1.75 TB/s where the same
    kernel read 2.7 on the next layout)."""
    import time

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()


def _repo_root() -> Path:
    # src/flashkernels/bench/common.py -> repository root (three levels above the package).
    return Path(__file__).resolve().parents[3]


@functools.lru_cache(maxsize=None)
def git_sha() -> str:
    """The commit the code came from: ``FLASHKERNELS_GIT_SHA`` if set, else ``git rev-parse``
    (``+dirty`` when src/ has uncommitted changes), else ``src-<hash>`` of the package's .py
    files, so a copy of the tree without .git (the GPU machine gets one) still names its code."""
    env = os.environ.get("FLASHKERNELS_GIT_SHA")
    if env:
        return env
    root = _repo_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        if sha.returncode == 0 and sha.stdout.strip():
            dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=root,
                                   capture_output=True, text=True, timeout=10)
            return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    h = hashlib.sha1()
    pkg = Path(__file__).resolve().parents[1]
    for p in sorted(pkg.rglob("*.py")):
        h.update(str(p.relative_to(pkg)).encode())
        h.update(p.read_bytes())
    return "src-" + h.hexdigest()[:12]


def environment() -> dict:
    """gpu / torch / triton / git_sha stamp written on every CSV row."""
    from .._backend import triton_version

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"gpu": gpu, "torch": torch.__version__, "triton": triton_version() or "none",
            "git_sha": git_sha()}


class CsvSink:
    """Appends rows to a CSV file (header written when the file is new or empty), one flush per
    row so that a run cut short by a timeout keeps every row it measured."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self._fh = None
        self._writer = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._fh = open(self.path, "a", newline="")
            self._writer = csv.DictWriter(self._fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            if new:
                self._writer.writeheader()
                self._fh.flush()

    def write(self, row: dict) -> None:
        if self._writer is None:
            return
        self._writer.writerow({k: _fmt(row.get(k)) for k in CSV_COLUMNS})
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _fmt(x):
    if isinstance(x, float):
        return f"{x:.6g}"
    if isinstance(x, bool):
        return int(x)
    return "" if x is None else x
